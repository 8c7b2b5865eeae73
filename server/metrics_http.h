// The Prometheus endpoint: GET /metrics over HTTP/1.1 (Boost.Beast), on the
// main thread's io_context. A scrape posts one call to each export's home
// worker for its image statistics (the engine is single-threaded), reads the
// request counters directly (metrics.h: relaxed atomics, no posting), and
// renders them (metrics_render.h). Nothing on the request path waits for it.
#pragma once

#include "config/config.h"
#include "server/export_registry.h"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <string>

namespace qnbd::server {

class MetricsServer {
 public:
  // Binds `at`; throws std::runtime_error with a one-line message (start-up).
  MetricsServer(boost::asio::io_context& ctx, const config::Endpoint& at,
                const ExportRegistry& exports);
  void start();
  // Stops accepting; scrapes in progress finish.
  void stop();
  // "http://ADDR:PORT/metrics", for the log.
  std::string url() const;

 private:
  boost::asio::awaitable<void> accept_loop();
  boost::asio::awaitable<void> serve(boost::asio::ip::tcp::socket s);
  boost::asio::awaitable<std::string> scrape();

  boost::asio::io_context& ctx_;
  const ExportRegistry& exports_;
  boost::asio::ip::tcp::acceptor acceptor_;
  unsigned clients_ = 0;
};

}  // namespace qnbd::server
