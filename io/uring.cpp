#include "io/uring.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <boost/asio/detail/descriptor_read_op.hpp>
#include <boost/asio/post.hpp>

#include <sys/eventfd.h>
#include <unistd.h>

#include <cstring>
#include <stdexcept>

// Asio 1.81 counts a descriptor as drained (and waits for the next edge of
// its edge-triggered registration before reading again) only after a read of
// 0 bytes; until then each new read first tries one that fails with EAGAIN.
// For an eventfd a short read does drain it: a read takes the whole counter
// and every later signal raises a new EPOLLIN (no end of file can wait
// behind the data, as on a socket or pipe). Specialized for the counter read
// of Ring::arm alone, through a buffer sequence type of its own.
namespace qnbd::io {
struct CounterRead {
  std::array<boost::asio::mutable_buffer, 1> bufs;
  const boost::asio::mutable_buffer* begin() const { return bufs.data(); }
  const boost::asio::mutable_buffer* end() const { return bufs.data() + 1; }
};
}  // namespace qnbd::io

#if !defined(BOOST_ASIO_HAS_IO_URING_AS_DEFAULT)
namespace boost::asio::detail {
template <>
reactor_op::status descriptor_read_op_base<qnbd::io::CounterRead>::do_perform(reactor_op* base) {
  auto* o = static_cast<descriptor_read_op_base*>(base);
  const mutable_buffer& b = o->buffers_.bufs[0];
  if (!descriptor_ops::non_blocking_read1(o->descriptor_, b.data(), b.size(), o->ec_,
                                          o->bytes_transferred_))
    return not_done;
  return !o->ec_ && o->bytes_transferred_ < b.size() ? done_and_exhausted : done;
}
}  // namespace boost::asio::detail
#endif

namespace qnbd::io {

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
  submit_hook_.ring = this;
  submit_hook_.complete = [](Completion* c, int) {
    static_cast<SubmitHook*>(c)->ring->submit_now();
  };
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

// Waits for completions by reading the eventfd's counter into twice its
// size: the read is always short, which the specialization above counts as
// draining the eventfd, so the next wait costs no syscall until the next
// EPOLLIN (async_wait re-armed with an epoll_ctl each time, and the counter
// still had to be read).
void Ring::arm() {
  watcher_->async_read_some(CounterRead{{boost::asio::buffer(efd_counter_)}},
                            [this](const boost::system::error_code& ec, std::size_t) {
                              if (ec) return;  // ring is being destroyed
                              reap();
                              arm();
                            });
}

namespace {
// The ring whose reap() runs on this thread, if any.
thread_local Ring* reaping = nullptr;
// The outermost Batch alive on this thread, if any.
thread_local Ring::Batch* batching = nullptr;
}  // namespace

Ring::Batch::Batch() : outermost_(batching == nullptr) {
  if (outermost_) batching = this;
}

Ring::Batch::~Batch() {
  if (!outermost_) return;
  batching = nullptr;
  if (ring_) ring_->submit_now();
}

void Ring::schedule_submit() {
  if (submit_pending_) return;
  submit_pending_ = true;
  if (reaping == this) {
    after_.push_back(&submit_hook_);
  } else if (batching && !batching->ring_) {
    batching->ring_ = this;
  } else {
    boost::asio::post(ctx_, [this] { submit_now(); });
  }
}

void Ring::submit_now() {
  submit_pending_ = false;
  io_uring_submit(&ring_);
}

bool Ring::after_completions(Completion* c) {
  if (!reaping) return false;
  reaping->after_.push_back(c);
  return true;
}

void Ring::reap() {
  Ring* outer = std::exchange(reaping, this);
  io_uring_cqe* cqe = nullptr;
  while (io_uring_peek_cqe(&ring_, &cqe) == 0 && cqe) {
    auto* op = static_cast<Completion*>(io_uring_cqe_get_data(cqe));
    int res = cqe->res;
    io_uring_cqe_seen(&ring_, cqe);
    if (op) op->complete(op, res);
  }
  // By index: a callback may add another.
  for (std::size_t i = 0; i < after_.size(); ++i) after_[i]->complete(after_[i], 0);
  after_.clear();
  reaping = outer;
}

}  // namespace qnbd::io
