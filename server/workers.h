// Threading model: the main thread runs the listeners, handshakes, signals
// and shutdown; each export is owned by one worker thread, which runs its
// io_context and io_uring. Everything an export touches (its backend, its
// metadata cache, the sessions of its clients) lives on that worker, so the
// engine needs no locks. Exports are spread round-robin over the workers.
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

// One worker per core, at most 8.
unsigned default_worker_count();

}  // namespace qnbd::server
