// Coroutine synchronisation for one io_context (single-threaded): a wait
// queue and a mutex built on it. A waiter parks on a steady_timer that never
// expires, and a notify cancels it. The waiter's queue node lives in its own
// coroutine frame and unlinks itself when the frame goes, so a queue never
// points at a waiter that no longer exists.
#pragma once

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/intrusive/list.hpp>

#include <utility>

namespace qnbd {

class WaitQueue {
 public:
  // Suspends until notify_all(), or until notify_one() reaches this waiter:
  // waiters are woken in the order they started waiting.
  boost::asio::awaitable<void> wait() {
    Waiter w(co_await boost::asio::this_coro::executor);
    waiters_.push_back(w);
    co_await w.timer.async_wait(boost::asio::as_tuple(boost::asio::use_awaitable));
  }
  // Wakes the longest waiting coroutine; false if none waits. It resumes
  // later, from the event loop, never inside this call.
  bool notify_one() {
    if (waiters_.empty()) return false;
    Waiter& w = waiters_.front();
    waiters_.pop_front();
    w.timer.cancel();
    return true;
  }
  void notify_all() {
    while (notify_one()) {
    }
  }
  bool empty() const { return waiters_.empty(); }

 private:
  using Hook =
      boost::intrusive::list_base_hook<boost::intrusive::link_mode<boost::intrusive::auto_unlink>>;
  struct Waiter : Hook {
    explicit Waiter(const boost::asio::any_io_executor& ex)
        : timer(ex, boost::asio::steady_timer::time_point::max()) {}
    boost::asio::steady_timer timer;
  };
  boost::intrusive::list<Waiter, boost::intrusive::constant_time_size<false>> waiters_;
};

// unlock() wakes one waiter, the longest waiting. A coroutine that calls
// lock() before that waiter resumes may take the lock first (no hand-off);
// the waiter then queues again, at the back.
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
    q_.notify_one();
  }
  bool locked_ = false;
  WaitQueue q_;
};

}  // namespace qnbd
