#include "io/uring.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <boost/asio/post.hpp>

#include <sys/eventfd.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <stdexcept>

namespace qnbd::io {
namespace {

// A QD1 request's file operation: a 4 KiB O_DIRECT read takes 50-250 us on
// this project's test machine, a page-cache one a few.
constexpr std::chrono::nanoseconds kLoneWait = std::chrono::microseconds(200);

}  // namespace

void require_event_loop() {
#if defined(BOOST_ASIO_HAS_IO_URING_AS_DEFAULT)
  io_uring probe;
  const int r = io_uring_queue_init(1, &probe, 0);
  if (r < 0)
    throw std::runtime_error(fmt::format(
        "io_uring is not available here ({}), and this qnbd's event loop runs on it: allow "
        "the io_uring syscalls (container seccomp profile, sysctl kernel.io_uring_disabled) "
        "or build with meson -Dio_uring_loop=false",
        std::strerror(-r)));
  io_uring_queue_exit(&probe);
#endif
}

Ring::Ring(boost::asio::io_context& ctx, unsigned entries) : ctx_(ctx) {
  int r = io_uring_queue_init(entries, &ring_, 0);
  if (r < 0) {
    spdlog::warn("io_uring unavailable ({}); using blocking file I/O", std::strerror(-r));
    return;
  }
  efd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (efd_ < 0 || io_uring_register_eventfd(&ring_, efd_) < 0) {
    spdlog::warn("io_uring eventfd registration failed; using blocking file I/O");
    if (efd_ >= 0) ::close(efd_);
    io_uring_queue_exit(&ring_);
    return;
  }
  watcher_ = std::make_unique<boost::asio::posix::stream_descriptor>(ctx_, efd_);
  ok_ = true;
  arm();
}

Ring::~Ring() {
  if (!ok_) return;
  watcher_.reset();  // closes efd_
  io_uring_queue_exit(&ring_);
}

io_uring_sqe* Ring::get_sqe() {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  if (!sqe) {  // submission queue full: flush what is queued and retry
    io_uring_submit(&ring_);
    sqe = io_uring_get_sqe(&ring_);
  }
  return sqe;
}

void Ring::schedule_submit() {
  if (submit_pending_) return;
  submit_pending_ = true;
  boost::asio::post(ctx_, [this] {
    submit_pending_ = false;
    submit_queued();
  });
}

// A lone operation (the only one of this loop in flight, as at QD1) is
// waited for here, on the loop's thread, in the io_uring_enter that submits
// it, for kLoneWait at most: through the eventfd it would cost an epoll_wait,
// the eventfd read and the re-arm's epoll_ctl besides, three of a QD1
// request's ten syscalls, and a wake-up. The loop has nothing else of ours in
// flight; what the wait delays is a request of another connection arriving
// meanwhile, by kLoneWait at most (a large write or a slow disk then goes
// the eventfd's way, and requests behind it are received while it runs). The
// eventfd is off during the wait, so a completion there does not wake the
// loop again. The bounded wait needs IORING_FEAT_EXT_ARG (Linux 5.11).
void Ring::submit_queued() {
  const bool lone = in_flight_ == 1 && io_uring_sq_ready(&ring_) == 1 &&
                    (ring_.features & IORING_FEAT_EXT_ARG);
  if (!lone || io_uring_cq_eventfd_toggle(&ring_, false) < 0) {
    io_uring_submit(&ring_);
    return;
  }
  __kernel_timespec budget{0, kLoneWait.count()};
  io_uring_cqe* cqe = nullptr;
  io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &budget, nullptr);
  if (io_uring_sq_ready(&ring_)) io_uring_submit(&ring_);  // interrupted before submitting
  io_uring_cq_eventfd_toggle(&ring_, true);
  // What completed while the eventfd was off; later completions signal it.
  reap();
}

void Ring::arm() {
  watcher_->async_wait(boost::asio::posix::stream_descriptor::wait_read,
                       [this](const boost::system::error_code& ec) {
                         if (ec) return;  // ring is being destroyed
                         std::uint64_t n;
                         [[maybe_unused]] auto r = ::read(efd_, &n, sizeof n);
                         reap();
                         arm();
                       });
}

void Ring::reap() {
  io_uring_cqe* cqe = nullptr;
  while (io_uring_peek_cqe(&ring_, &cqe) == 0 && cqe) {
    auto* op = static_cast<Completion*>(io_uring_cqe_get_data(cqe));
    int res = cqe->res;
    io_uring_cqe_seen(&ring_, cqe);
    if (op) {
      --in_flight_;
      op->complete(op, res);
    }
  }
}

}  // namespace qnbd::io
