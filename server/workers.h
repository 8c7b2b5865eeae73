// Threading model (who owns what):
//
// - The main thread runs the listeners, the handshakes, signals and shutdown,
//   and decides on which worker each connection is served (server/server.cpp).
// - Each worker thread runs one io_context and one io_uring Ring.
// - Each export is owned by one worker (its "home", Export::home), which
//   opened it: the backend, its files (on the home worker's Ring) and the
//   qcow2 engine with its metadata caches and timers are only ever touched on
//   that worker, so the engine needs no locks. Exports are spread
//   round-robin over the workers.
// - Each connection (Session) belongs to one worker: its socket, request
//   parsing, payload buffers (BufferPool) and reply writes run there. The
//   first connection to an export is served on the export's home worker and
//   calls the backend directly (no thread hop). While the home worker already
//   serves a connection to that export, further ones (NBD multi-conn) go to
//   the least-loaded other worker; such a "remote" session runs each backend
//   operation on the home worker (co_spawn onto its executor) and resumes on
//   its own worker with the result. The operation only borrows spans of the
//   session's buffers, which stay alive because the session awaits it.
//   Except for a backend whose fast path touches nothing of its home worker
//   (Capabilities::fast_io_anywhere: a raw file, whose descriptor any thread
//   may use): a remote session starts its fast reads and writes on its own
//   worker's Ring, without the hop.
// - Because every backend operation of every connection runs on the home
//   worker, a FLUSH from any connection covers all writes completed before
//   it, whichever connection sent them (the NBD multi-conn contract). For a
//   raw file written from several rings, the fdatasync of the FLUSH covers
//   every write to the file completed before it, whichever thread did it.
#pragma once

#include "io/uring.h"

#include <boost/asio/io_context.hpp>

#include <memory>
#include <thread>
#include <vector>

namespace qnbd::server {

class Workers {
 public:
  explicit Workers(unsigned count);
  ~Workers();

  unsigned size() const { return static_cast<unsigned>(workers_.size()); }
  boost::asio::io_context& context(unsigned i) { return workers_[i]->ctx; }
  io::Ring& ring(unsigned i) { return *workers_[i]->ring; }
  // The index of the worker running `ctx`; size() if it is none of them.
  unsigned index_of(const boost::asio::io_context& ctx) const;
  // Starts one thread per worker; before this, the caller may run a worker's
  // context on its own thread (to open images at start-up).
  void start();
  // Stops the event loops and joins the threads.
  void stop();

 private:
  struct Worker {
    boost::asio::io_context ctx{1};
    std::unique_ptr<io::Ring> ring;
    std::thread thread;
  };
  std::vector<std::unique_ptr<Worker>> workers_;
};

// One worker per core, at most 8 (`--workers` / `workers:` overrides it).
unsigned default_worker_count();

}  // namespace qnbd::server
