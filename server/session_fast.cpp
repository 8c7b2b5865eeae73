// The request fast path: a READ or WRITE that the backend can serve as one
// file I/O without suspending (BlockBackend::start_read/start_write) goes
// from the parsed request to that I/O and back to the reply with no
// coroutine, no co_spawn and no allocation: its state lives in a slot the
// session reuses. Everything else, and any fast I/O that does not transfer
// every byte (an error, end of file), takes the general path (handle()),
// which then gives the same bytes, errors and logs as if the fast path had
// not been tried. On another worker than the export's home one only for a
// backend that allows it (a raw file: the I/O then runs on this worker's
// ring); otherwise the backend is reached through on_home().
#include "server/session.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>

namespace qnbd::server {

using namespace nbd;

bool Session::try_fast(const Request& req, Buffer& payload, std::size_t budget,
                       metrics::ThreadCounters::Clock::time_point started) {
  if (req.length == 0) return false;
  io::Ring* away = nullptr;  // on the home worker: the backend's own ring
  if (where_.owner) {
    if (!where_.ring || !neg_.exp->caps.fast_io_anywhere) return false;
    away = where_.ring;
  }
  const bool read = req.type == NBD_CMD_READ;
  if (read) {
    if (lim_.structured && !(req.flags & NBD_CMD_FLAG_DF) && req.length >= kSparseReadMin)
      return false;
  } else if (req.type != NBD_CMD_WRITE || (req.flags & NBD_CMD_FLAG_FUA) ||
             zero_write(payload.span())) {
    return false;  // a zero write under --detect-zeroes becomes WRITE_ZEROES there
  }
  if (validate_request(req, lim_).error) return false;
  std::unique_ptr<FastOp> slot;
  if (fast_free_.empty()) {
    slot = std::make_unique<FastOp>();
    slot->session = this;
    slot->complete = &Session::fast_complete;
  } else {
    slot = std::move(fast_free_.back());
    fast_free_.pop_back();
  }
  FastOp* op = slot.release();  // owned by the I/O until fast_complete
  op->req = req;
  op->budget = budget;
  op->started = started;
  BlockBackend& be = *neg_.exp->backend;
  bool begun;
  if (read) {
    op->buf = pool_.acquire(req.length);
    begun = be.start_read(req.offset, op->buf.span(), op, away);
  } else {
    op->buf = std::move(payload);
    begun = be.start_write(req.offset, op->buf.span(), op, away);
  }
  if (begun) return true;  // op may already be back in fast_free_
  if (read)
    pool_.release(std::move(op->buf));
  else
    payload = std::move(op->buf);
  fast_free_.emplace_back(op);
  return false;
}

void Session::fast_complete(io::Completion* c, int res) {
  auto* op = static_cast<FastOp*>(c);
  op->session->fast_done(*op, res);
}

void Session::fast_done(FastOp& op, int res) {
  const Request req = op.req;
  const std::size_t budget = op.budget;
  const auto started = op.started;
  Buffer buf = std::move(op.buf);
  fast_free_.emplace_back(&op);
  const bool read = req.type == NBD_CMD_READ;
  if (res < 0 || static_cast<std::uint32_t>(res) != req.length) {
    if (read) pool_.release(std::move(buf));
    boost::asio::co_spawn(
        conn_.socket().get_executor(),
        handle(shared_from_this(), req, read ? Buffer{} : std::move(buf), budget, started),
        boost::asio::detached);
    return;
  }
  Reply r;
  if (read) {
    r.body = std::move(buf);
    read_reply_head(r, req);
  } else {
    pool_.release(std::move(buf));
    r = simple(req, 0);
  }
  r.budget = budget;
  stats_->finish(req.type, req.length, 0, started);
  send(std::move(r));
}

}  // namespace qnbd::server
