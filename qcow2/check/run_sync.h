// Runs one awaitable to completion on a private io_context with its own
// io_uring: how the offline tool and the tests drive the awaitable check and
// create code. Never use it inside the server's event loop.
#pragma once

#include "io/uring.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>

#include <exception>
#include <optional>
#include <utility>

namespace qnbd::qcow2 {

class SyncRunner {
 public:
  SyncRunner() : ring_(ctx_) {}
  io::Ring& ring() { return ring_; }
  boost::asio::io_context& context() { return ctx_; }

  // Returns the awaitable's value; rethrows its exception.
  template <class T>
  T run(boost::asio::awaitable<T> aw) {
    std::optional<T> out;
    std::exception_ptr error;
    bool done = false;
    boost::asio::co_spawn(ctx_, std::move(aw), [&](std::exception_ptr e, T v) {
      if (e)
        error = e;
      else
        out.emplace(std::move(v));
      done = true;
      ctx_.stop();  // the ring's eventfd watch would keep run() going forever
    });
    while (!done) {
      ctx_.restart();
      ctx_.run();
    }
    if (error) std::rethrow_exception(error);
    return std::move(*out);
  }

 private:
  boost::asio::io_context ctx_;
  io::Ring ring_;
};

}  // namespace qnbd::qcow2
