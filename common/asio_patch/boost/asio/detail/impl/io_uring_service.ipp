// Boost 1.81's Asio io_uring backend (meson option io_uring_loop), with two
// changes. This directory is on the include path ahead of the system's
// (meson.build), so io_uring_service.hpp includes this file, which includes
// the original with two liburing calls replaced.
//
// 1. Every SQE it takes starts with user_data 0. The backend leaves user_data
// unset on the SQEs whose completion it means to ignore (IORING_OP_ASYNC_CANCEL
// when a socket closes with operations pending, IORING_OP_TIMEOUT_REMOVE), so
// their CQEs carried whatever an earlier SQE left in that ring slot and
// completed some other pending operation with the cancel's result: a live
// connection's send failed with ENOENT when another client went away
// (tests/soak/churn_soak.py). Asio ignores CQEs whose user_data is 0.
//
// 2. Rings of at most 1,024 entries instead of 16,384, whose rings added
// 5 MiB to the server's resident size over its three event loops. A loop has
// about two operations per connection in flight, and those leave the SQ when
// submitted; a completion that finds the CQ (2,048 entries) full is kept by
// the kernel (IORING_FEAT_NODROP) until the loop reaps it.
#include <liburing.h>

#include <algorithm>

namespace qnbd_asio_patch {
inline io_uring_sqe* get_sqe_cleared(io_uring* ring) {
  io_uring_sqe* sqe = ::io_uring_get_sqe(ring);
  if (sqe) io_uring_sqe_set_data(sqe, nullptr);
  return sqe;
}

inline int queue_init_smaller(unsigned entries, io_uring* ring, unsigned flags) {
  return ::io_uring_queue_init(std::min(entries, 1024u), ring, flags);
}
}  // namespace qnbd_asio_patch

#define io_uring_get_sqe qnbd_asio_patch::get_sqe_cleared
#define io_uring_queue_init qnbd_asio_patch::queue_init_smaller
#include_next <boost/asio/detail/impl/io_uring_service.ipp>
#undef io_uring_queue_init
#undef io_uring_get_sqe
