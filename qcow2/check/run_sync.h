// Runs one awaitable to completion on a private io_context with its own
// io_uring: how the offline tool and the tests drive the awaitable check and
// create code. Never use it inside the server's event loop.
#pragma once

#include "common/run_sync.h"
#include "io/uring.h"

#include <boost/asio/io_context.hpp>

#include <stdexcept>

namespace qnbd::qcow2 {

class SyncRunner {
 public:
  SyncRunner() : ring_(ctx_) {}
  io::Ring& ring() { return ring_; }
  boost::asio::io_context& context() { return ctx_; }

  // Returns the awaitable's value; rethrows its exception.
  template <class T>
  T run(boost::asio::awaitable<T> aw) {
    auto out = run_until_done(ctx_, std::move(aw));
    if (!out) throw std::logic_error("an operation never finished (the event loop ran dry)");
    return std::move(*out);
  }

 private:
  boost::asio::io_context ctx_;
  io::Ring ring_;
};

}  // namespace qnbd::qcow2
