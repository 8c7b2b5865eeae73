// Coroutine synchronisation for the engine: the wait queue and mutex of
// common/wait_queue.h, and a join of several tasks run in parallel.
#pragma once

#include "common/frame_pool.h"
#include "common/task.h"
#include "common/wait_queue.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/container/small_vector.hpp>

#include <memory>
#include <vector>

namespace qnbd::qcow2 {

// Tasks to run together; most requests have one (one extent), which then
// needs no allocation.
using Tasks = boost::container::small_vector<task<>, 2>;

// Runs every task concurrently on the current executor and waits for all;
// the first error (if any) is returned after all have finished.
inline task<> run_parallel(Tasks tasks) {
  if (tasks.empty()) co_return result<>{};
  if (tasks.size() == 1) co_return co_await std::move(tasks.front());
  struct State {
    std::size_t left;
    error_code error;
    WaitQueue done;
  };
  // Shared with the tasks' handlers, which may outlive this frame (an event
  // loop destroyed meanwhile); from the frame pool, not malloc.
  auto st = std::allocate_shared<State>(frame_pool::Allocator<State>{});
  st->left = tasks.size();
  auto ex = co_await boost::asio::this_coro::executor;
  for (auto& t : tasks) {
    boost::asio::co_spawn(ex, std::move(t), [st](std::exception_ptr e, result<> r) {
      if (!st->error) {
        if (e)
          st->error = errno_error(EIO);
        else if (!r)
          st->error = r.error();
      }
      if (--st->left == 0) st->done.notify_all();
    });
  }
  while (st->left) co_await st->done.wait();
  if (st->error) co_return st->error;
  co_return result<>{};
}

}  // namespace qnbd::qcow2
