// One io_uring per event loop, driven by the Asio io_context: operations are
// prepared as they are requested and submitted together (one io_uring_enter
// for many requests): at the end of the Batch or of the delivery of
// completions they were queued in, else once per loop turn (a post);
// completions arrive through an eventfd the io_context watches.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/dispatch.hpp>

#include "common/frame_pool.h"
#include "io/completion.h"

#include <liburing.h>

#include <array>
#include <cerrno>
#include <cstdint>

#include <memory>
#include <utility>
#include <vector>

namespace qnbd::io {

// Throws std::runtime_error naming the remedy when this build's event loop
// cannot run here: built with the io_uring loop (meson option io_uring_loop),
// Asio's io_context needs io_uring and would otherwise fail on first use with
// a bare "io_uring_queue_init: Operation not permitted".
void require_event_loop();

class Ring {
 public:
  explicit Ring(boost::asio::io_context& ctx, unsigned entries = 256);
  ~Ring();
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;

  // False when the kernel refused io_uring; callers then use plain syscalls.
  bool available() const { return ok_; }
  // Operations queued and not yet submitted to the kernel.
  unsigned unsubmitted() const { return ok_ ? io_uring_sq_ready(&ring_) : 0; }

  // An operation in flight, completed with the CQE result.
  using Completion = io::Completion;

  // Queues one operation (submitted at the end of this loop turn); `prep`
  // fills the SQE. `c` must stay alive until it is completed; when the
  // queue is full and cannot be drained, it completes at once with -EAGAIN.
  template <class Prep>
  void submit(Completion* c, Prep&& prep) {
    io_uring_sqe* sqe = get_sqe();
    if (!sqe) {
      c->complete(c, -EAGAIN);
      return;
    }
    prep(sqe);
    io_uring_sqe_set_data(sqe, c);
    schedule_submit();
  }

  // Calls `c` (res 0) once the completions this thread's ring is delivering
  // have all run, so that their effects can be gathered (one send for the
  // replies of all of them). False when no ring is delivering completions on
  // this thread; the caller then finds another way (a post). `c` must stay
  // alive until called.
  static bool after_completions(Completion* c);

  // While a Batch lives on this thread, a ring's submissions wait for its
  // end (one io_uring_enter for, say, every request taken from one receive)
  // instead of a posted submit, which costs a handler and, when the loop is
  // idle, an epoll_wait. Nested batches join the outermost. Never keep one
  // across a suspension: other work of the thread would wait for it.
  class Batch {
   public:
    Batch();
    ~Batch();
    Batch(const Batch&) = delete;
    Batch& operator=(const Batch&) = delete;

   private:
    friend class Ring;
    bool outermost_;
    Ring* ring_ = nullptr;  // the ring whose submission waits (one per thread)
  };

  // Runs one operation; `prep` fills the SQE. Completes with the CQE result
  // (negative errno on failure).
  template <class Prep>
  boost::asio::awaitable<int> run(Prep prep) {
    return boost::asio::async_initiate<const boost::asio::use_awaitable_t<>, void(int)>(
        [this, prep = std::move(prep)](auto handler) mutable {
          using H = decltype(handler);
          submit(new Op<H>(std::move(handler)), prep);
        },
        boost::asio::use_awaitable);
  }

 private:
  template <class H>
  struct Op : Completion {
    explicit Op(H&& h) : handler(std::move(h)) { complete = &Op::done; }
    // From the pool the coroutine frames use: one Op per operation of the
    // general request path, which would otherwise be a malloc each.
    static void* operator new(std::size_t n) { return frame_pool::allocate(n); }
    static void operator delete(void* p, std::size_t n) { frame_pool::release(p, n); }
    H handler;
    static void done(Completion* base, int res) {
      auto* self = static_cast<Op*>(base);
      H h = std::move(self->handler);
      delete self;
      auto ex = boost::asio::get_associated_executor(h);
      boost::asio::dispatch(ex, [h = std::move(h), res]() mutable { std::move(h)(res); });
    }
  };

  // A free SQE, flushing the queue once if it is full; null if still none.
  io_uring_sqe* get_sqe();
  void schedule_submit();
  void submit_now();
  void arm();
  void reap();

  boost::asio::io_context& ctx_;
  io_uring ring_{};
  bool ok_ = false;
  bool submit_pending_ = false;
  int efd_ = -1;
  std::array<std::uint64_t, 2> efd_counter_{};  // read by arm(); twice the counter
  std::unique_ptr<boost::asio::posix::stream_descriptor> watcher_;
  std::vector<Completion*> after_;  // for after_completions, kept for its capacity
  struct SubmitHook : Completion {
    Ring* ring = nullptr;
  } submit_hook_;  // submits at the end of a reap
};

}  // namespace qnbd::io
