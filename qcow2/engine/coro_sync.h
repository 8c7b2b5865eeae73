// Coroutine synchronisation for one io_context (single-threaded): a wait
// queue, a mutex built on it, and a join of several tasks run in parallel.
// Waiters park on a steady_timer that never expires; notify cancels it.
#pragma once

#include "common/task.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <memory>
#include <vector>

namespace qnbd::qcow2 {

class WaitQueue {
 public:
  // Suspends until the next notify_all().
  boost::asio::awaitable<void> wait() {
    boost::asio::steady_timer t(co_await boost::asio::this_coro::executor,
                                boost::asio::steady_timer::time_point::max());
    waiters_.push_back(&t);
    co_await t.async_wait(boost::asio::as_tuple(boost::asio::use_awaitable));
    std::erase(waiters_, &t);  // still listed only if woken by something else
  }
  void notify_all() {
    auto w = std::move(waiters_);
    waiters_.clear();
    for (auto* t : w) t->cancel();
  }
  bool empty() const { return waiters_.empty(); }

 private:
  std::vector<boost::asio::steady_timer*> waiters_;
};

class AsyncMutex {
 public:
  class Guard {
   public:
    explicit Guard(AsyncMutex* m) : m_(m) {}
    Guard(Guard&& o) noexcept : m_(std::exchange(o.m_, nullptr)) {}
    Guard& operator=(Guard&&) = delete;
    ~Guard() { unlock(); }
    void unlock() {
      if (m_) std::exchange(m_, nullptr)->unlock();
    }

   private:
    AsyncMutex* m_;
  };

  boost::asio::awaitable<Guard> lock() {
    while (locked_) co_await q_.wait();
    locked_ = true;
    co_return Guard(this);
  }
  bool locked() const { return locked_; }

 private:
  void unlock() {
    locked_ = false;
    q_.notify_all();
  }
  bool locked_ = false;
  WaitQueue q_;
};

// Runs every task concurrently on the current executor and waits for all;
// the first error (if any) is returned after all have finished.
inline task<> run_parallel(std::vector<task<>> tasks) {
  if (tasks.empty()) co_return result<>{};
  if (tasks.size() == 1) co_return co_await std::move(tasks.front());
  struct State {
    std::size_t left;
    error_code error;
    WaitQueue done;
  };
  auto st = std::make_shared<State>();
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
