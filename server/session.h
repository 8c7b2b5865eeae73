// Transmission phase of one connection: a receive loop that validates each
// request once and spawns one coroutine per request (bounded in count and
// bytes in flight), and a single reply writer that gathers finished replies
// into few sends and never interleaves one mid-payload.
//
// Error tiers (as in qemu's nbd/server.c): a failure of the connection (bad
// magic, truncated payload, oversized write, send error) closes this
// connection only; a failure of an operation becomes an NBD error reply.
#pragma once

#include "server/buffer_pool.h"
#include "server/connection.h"
#include "server/handshake.h"
#include "server/metrics.h"
#include "server/protocol.h"
#include "server/read_plan.h"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <array>
#include <cstddef>
#include <memory>
#include <optional>
#include <type_traits>
#include <vector>

namespace qnbd::server {

// Structured reads this large are worth asking the backend where the zeros
// are first (a sparse reply); smaller ones are one data chunk.
inline constexpr std::uint32_t kSparseReadMin = 64 << 10;

struct SessionLimits {
  std::size_t max_requests = 128;     // in flight per connection
  std::size_t max_bytes = 64u << 20;  // payload bytes in flight per connection
};

// Where a session runs relative to its export (threading model: workers.h).
struct SessionPlacement {
  unsigned worker = 0;  // the worker serving the connection (for the logs)
  // The executor of the export's home worker when the session runs on another
  // worker; empty when it runs on the home worker and calls the backend
  // directly.
  std::optional<boost::asio::any_io_executor> owner;
  // The serving worker's ring, for the fast path of a backend that allows it
  // on any worker (Capabilities::fast_io_anywhere) when `owner` is set.
  io::Ring* ring = nullptr;
};

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(Connection conn, Negotiated neg, SessionLimits limits, SessionPlacement where = {});

  // Serves until the client disconnects or stop() is called, then waits for
  // every request in flight to be answered.
  boost::asio::awaitable<void> run();
  // Stop taking requests; those in flight still get their replies.
  // Thread-safe: runs on the session's own event loop.
  void stop();
  const std::string& peer() const { return conn_.peer(); }

 private:
  struct Reply {
    std::array<std::byte, nbd::kChunkHeaderSize + 12> head{};
    std::size_t head_len = 0;
    Buffer body;
    std::size_t budget = 0;
    std::uint32_t error = 0;  // NBD error code, for the metrics
  };

  // What the receive loop waits for once take_requests() has started every
  // request the buffer holds.
  struct Next {
    enum Kind { receive, admission, rest_of_payload, stop } kind = receive;
    nbd::Request req{};      // rest_of_payload: the admitted WRITE whose payload is read next
    Buffer payload{};        // rest_of_payload: where it goes
    std::size_t budget = 0;  // admission, rest_of_payload
  };
  // Starts the requests that are whole in the receive buffer and says what
  // to wait for; `want` becomes the bytes the next request needs buffered.
  // A plain function, so that the file I/O of all it starts is submitted
  // together (io::Ring::Batch).
  Next take_requests(std::size_t& want);
  bool admits(std::size_t budget) const {
    return inflight_ < limits_.max_requests &&
           (inflight_bytes_ == 0 || inflight_bytes_ + budget <= limits_.max_bytes);
  }
  // Starts an admitted request (counted in flight).
  void start(const nbd::Request& req, Buffer payload, std::size_t budget);

  // A READ or WRITE on the fast path (BlockBackend::start_read/start_write):
  // no coroutine, its state in a slot the session reuses.
  struct FastOp : io::Completion {
    Session* session = nullptr;
    nbd::Request req;
    Buffer buf;  // READ: the reply body; WRITE: the payload
    std::size_t budget = 0;
    metrics::ThreadCounters::Clock::time_point started;  // for the metrics
  };
  bool try_fast(const nbd::Request& req, Buffer& payload, std::size_t budget,
                metrics::ThreadCounters::Clock::time_point started);
  static void fast_complete(io::Completion* c, int res);
  void fast_done(FastOp& op, int res);

  // `started`: from stats_->start() when the request was read.
  boost::asio::awaitable<void> handle(std::shared_ptr<Session> self, nbd::Request req,
                                      Buffer payload, std::size_t budget,
                                      metrics::ThreadCounters::Clock::time_point started);
  boost::asio::awaitable<Reply> execute(const nbd::Request& req, Buffer& payload);
  boost::asio::awaitable<Reply> cmd_read(const nbd::Request& req);
  boost::asio::awaitable<Reply> cmd_sparse_read(const nbd::Request& req,
                                                const std::vector<ReadChunk>& chunks);
  boost::asio::awaitable<Reply> cmd_block_status(const nbd::Request& req);
  boost::asio::awaitable<result<>> cmd_write_zeroes(const nbd::Request& req);
  // --detect-zeroes on or unmap, and `data` is all zeros.
  bool zero_write(std::span<const std::byte> data) const;

  // Runs a backend operation on the export's home worker: directly when this
  // session is there (no hop), else co_spawned onto the home executor, and
  // this coroutine resumes on its own worker with the result. `op` is a plain
  // callable (not a coroutine) returning the backend's awaitable, invoked on
  // the home worker; it captures values and spans of buffers the session
  // keeps alive until the operation completes.
  template <class Op>
  std::invoke_result_t<Op&> on_home(Op op) {
    if (!where_.owner) return op();
    return boost::asio::co_spawn(*where_.owner, std::move(op), boost::asio::use_awaitable);
  }

  Reply simple(const nbd::Request& req, std::uint32_t error) const;
  // The header of a successful READ reply whose data is the body.
  void read_reply_head(Reply& out, const nbd::Request& req) const;
  Reply error_reply(const nbd::Request& req, std::uint32_t error) const;

  // Queues a reply; the replies queued in one loop turn go out together.
  void send(Reply r);
  void flush_replies();
  boost::asio::awaitable<void> write_replies(std::shared_ptr<Session> self);
  // Moves queue_ to sending_ and its bytes to bufs_.
  void gather_replies();
  // sending_ is sent (or never will be): its requests leave the counts.
  void replies_sent();
  void send_failed(const error_code& ec);
  void writer_done();
  boost::asio::awaitable<void> wait_until(auto pred);
  void release(std::size_t budget);

  Connection conn_;
  Negotiated neg_;
  SessionPlacement where_;
  nbd::ExportLimits lim_;
  SessionLimits limits_;
  std::size_t inflight_ = 0;
  std::size_t inflight_bytes_ = 0;
  boost::asio::steady_timer wake_;
  BufferPool pool_;
  std::vector<Reply> queue_;
  // The batch being sent and its buffers (kept for their capacity).
  std::vector<Reply> sending_;
  std::vector<boost::asio::const_buffer> bufs_;
  std::vector<std::unique_ptr<FastOp>> fast_free_;
  // Calls flush_replies() once the ring's completions at hand have all run.
  struct FlushHook : io::Completion {
    Session* session = nullptr;
  } flush_hook_;
  bool writing_ = false;
  bool broken_ = false;
  metrics::ThreadCounters* stats_ = nullptr;  // this thread's, set by run()
};

}  // namespace qnbd::server
