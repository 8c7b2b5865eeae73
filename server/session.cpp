#include "server/session.h"

#include "io/uring.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <spdlog/spdlog.h>

#include <unistd.h>

namespace qnbd::server {

using boost::asio::awaitable;
using namespace nbd;

Session::Session(Connection conn, Negotiated neg, SessionLimits limits, SessionPlacement where)
    : conn_(std::move(conn)),
      neg_(neg),
      where_(std::move(where)),
      limits_(limits),
      wake_(conn_.socket().get_executor()) {
  const Export& e = *neg_.exp;
  lim_.size = e.size;
  lim_.read_only = e.caps.read_only;
  lim_.structured = neg_.structured;
  // Any metadata context makes BLOCK_STATUS valid.
  lim_.base_allocation = neg_.base_allocation || !neg_.contexts.empty();
  lim_.can_trim = e.caps.trim;
  lim_.can_zero = e.caps.write_zeroes;
  lim_.can_cache = e.caps.cache;
  lim_.can_fast_zero = e.caps.fast_zero;
  lim_.min_block = e.caps.min_block;
  flush_hook_.session = this;
  flush_hook_.complete = [](io::Completion* c, int) {
    static_cast<FlushHook*>(c)->session->flush_replies();
  };
}

awaitable<void> Session::wait_until(auto pred) {
  while (!pred()) {
    wake_.expires_at(boost::asio::steady_timer::time_point::max());
    co_await wake_.async_wait(boost::asio::as_tuple(boost::asio::use_awaitable));
  }
}

void Session::stop() {
  boost::asio::post(conn_.socket().get_executor(),
                    [self = shared_from_this()] { self->conn_.shutdown_receive(); });
}

void Session::release(std::size_t budget) {
  --inflight_;
  inflight_bytes_ -= budget;
  wake_.cancel();
}

awaitable<void> Session::run() {
  auto self = shared_from_this();
  stats_ = &metrics::process().local(neg_.exp->name);
  stats_->connections_opened.add();
  // Logged from the session's own thread; tests check the spread.
  spdlog::debug("{}: serving export '{}' on worker {} (thread {}, {})", peer(), neg_.exp->name,
                where_.worker, ::gettid(),
                !where_.owner                          ? "the export's home worker"
                : neg_.exp->caps.fast_io_anywhere && where_.ring
                    ? "reads and writes on this worker, other calls on the export's home worker"
                    : "backend calls run on the export's home worker");
  std::size_t want = kRequestSize;
  for (;;) {
    Next next;
    {
      io::Ring::Batch batch;
      next = take_requests(want);
    }
    if (next.kind == Next::stop) break;
    if (next.kind == Next::receive) {
      auto [ec, n] = co_await conn_.receive(want);
      if (ec) break;  // gone or stop()
      conn_.received(n);
    } else if (next.kind == Next::admission) {
      co_await wait_until([&] { return broken_ || admits(next.budget); });
    } else {
      if (co_await conn_.read_exact(next.payload.span())) {
        spdlog::info("{}: truncated write payload, closing", peer());
        release(next.budget);
        break;
      }
      io::Ring::Batch batch;
      start(next.req, std::move(next.payload), next.budget);
    }
  }
  co_await wait_until([&] { return inflight_ == 0; });
  conn_.close();
  stats_->connections_closed.add();
  spdlog::debug("{}: connection closed", peer());
}

// One receive point for the header and for a payload that goes through the
// receive buffer: a request is taken once all of it is there.
Session::Next Session::take_requests(std::size_t& want) {
  for (;;) {
    if (broken_) return {Next::stop};
    if (conn_.buffered().size() < want) return {Next::receive};
    auto req = decode_request(conn_.buffered().first<kRequestSize>());
    if (!req) {
      spdlog::warn("{}: bad request magic, closing connection", peer());
      return {Next::stop};
    }
    if (req->type == NBD_CMD_WRITE && req->length > kMaxPayload) {
      spdlog::warn("{}: write of {} bytes exceeds the maximum payload, closing", peer(),
                   req->length);
      return {Next::stop};
    }
    if (req->type == NBD_CMD_DISC) return {Next::stop};
    const bool write = req->type == NBD_CMD_WRITE;
    if (write && kRequestSize + req->length <= Connection::kThroughBuffer) {
      want = kRequestSize + req->length;
      if (conn_.buffered().size() < want) return {Next::receive};
    }
    want = kRequestSize;
    const std::size_t budget =
        (write || req->type == NBD_CMD_READ) ? std::min<std::size_t>(req->length, kMaxPayload) : 0;
    if (!admits(budget)) return {Next::admission, *req, {}, budget};
    ++inflight_;
    inflight_bytes_ += budget;
    conn_.consume(kRequestSize);
    Buffer payload;
    if (write) {
      payload = pool_.acquire(req->length);
      if (!conn_.take_buffered(payload.span()))
        return {Next::rest_of_payload, *req, std::move(payload), budget};
    }
    start(*req, std::move(payload), budget);
  }
}

void Session::start(const Request& req, Buffer payload, std::size_t budget) {
  const auto started = stats_->start();
  if (try_fast(req, payload, budget, started)) return;
  boost::asio::co_spawn(conn_.socket().get_executor(),
                        handle(shared_from_this(), req, std::move(payload), budget, started),
                        boost::asio::detached);
}

awaitable<void> Session::handle(std::shared_ptr<Session>, Request req, Buffer payload,
                                std::size_t budget,
                                metrics::ThreadCounters::Clock::time_point started) {
  Reply r;
  if (const Verdict v = validate_request(req, lim_); v.error) {
    spdlog::debug("{}: {} at {} (+{}) rejected: {}", peer(), command_name(req.type), req.offset,
                  req.length, v.reason);
    r = error_reply(req, v.error);
  } else {
    r = co_await execute(req, payload);
  }
  pool_.release(std::move(payload));
  r.budget = budget;
  stats_->finish(req.type, req.length, r.error, started);
  send(std::move(r));
}

Session::Reply Session::simple(const Request& req, std::uint32_t error) const {
  Reply r;
  encode_simple_reply(std::span<std::byte, kSimpleReplySize>(r.head.data(), kSimpleReplySize),
                      error, req.cookie);
  r.head_len = kSimpleReplySize;
  r.error = error;
  return r;
}

// READ with structured replies must fail with an error chunk; every other
// reply may be simple.
Session::Reply Session::error_reply(const Request& req, std::uint32_t error) const {
  if (!(lim_.structured && req.type == NBD_CMD_READ)) return simple(req, error);
  Reply r;
  encode_chunk_header(std::span<std::byte, kChunkHeaderSize>(r.head.data(), kChunkHeaderSize),
                      NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, req.cookie, 6);
  put32(r.head.data() + kChunkHeaderSize, error);
  put16(r.head.data() + kChunkHeaderSize + 4, 0);
  r.head_len = kChunkHeaderSize + 6;
  r.error = error;
  return r;
}

void Session::send(Reply r) {
  if (broken_) {
    release(r.budget);
    return;
  }
  queue_.push_back(std::move(r));
  if (!writing_) {
    writing_ = true;
    // Once the replies of the completions at hand (or of this loop turn)
    // are queued. The session outlives the hook: queued replies hold
    // inflight_ above 0, which keeps run() from ending.
    if (!io::Ring::after_completions(&flush_hook_))
      boost::asio::post(conn_.socket().get_executor(),
                        [self = shared_from_this()] { self->flush_replies(); });
  }
}

void Session::gather_replies() {
  std::swap(sending_, queue_);
  bufs_.clear();
  for (const auto& r : sending_) {
    bufs_.push_back(boost::asio::buffer(r.head.data(), r.head_len));
    if (!r.body.empty()) bufs_.push_back(boost::asio::buffer(r.body.data(), r.body.size()));
  }
}

void Session::replies_sent() {
  for (auto& r : sending_) {
    release(r.budget);
    pool_.release(std::move(r.body));
  }
  sending_.clear();
}

void Session::send_failed(const error_code& ec) {
  spdlog::info("{}: send failed ({}), closing", peer(), ec.message());
  broken_ = true;
  conn_.close();
}

void Session::writer_done() {
  for (auto& r : queue_) release(r.budget);
  queue_.clear();
  writing_ = false;
}

// Drops the first `n` bytes of `bufs`; true when nothing is left.
static bool drop_sent(std::vector<boost::asio::const_buffer>& bufs, std::size_t n) {
  auto it = bufs.begin();
  for (; it != bufs.end() && n >= it->size(); ++it) n -= it->size();
  bufs.erase(bufs.begin(), it);
  if (!bufs.empty()) bufs.front() += n;
  return bufs.empty();
}

// Usually the socket takes the whole batch at once and no coroutine runs;
// what it does not take, and everything over TLS, write_replies sends.
void Session::flush_replies() {
  if (queue_.empty() || broken_) return writer_done();
  gather_replies();
  auto sent = conn_.try_write(bufs_);
  if (!sent) {
    send_failed(sent.error());
  } else if (!drop_sent(bufs_, *sent)) {
    boost::asio::co_spawn(conn_.socket().get_executor(), write_replies(shared_from_this()),
                          boost::asio::detached);
    return;
  }
  replies_sent();
  writer_done();
}

// Sends bufs_ (what is left of sending_), then the batches queued meanwhile.
awaitable<void> Session::write_replies(std::shared_ptr<Session>) {
  for (;;) {
    if (auto ec = co_await conn_.write_all(bufs_)) send_failed(ec);
    replies_sent();
    if (queue_.empty() || broken_) break;
    gather_replies();
  }
  writer_done();
}

}  // namespace qnbd::server
