// Owns the listeners and every connection: accepts, bounds the number of
// clients, runs the handshake under a time limit, picks the worker that
// serves the connection (see workers.h), hands it to a Session there, and on
// shutdown drains all of them before the exports close. Runs on the main
// thread; so do all of its counters.
#pragma once

#include "config/config.h"
#include "server/export_registry.h"
#include "server/listener.h"
#include "server/session.h"
#include "server/tls_context.h"
#include "server/workers.h"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <map>
#include <set>
#include <vector>

namespace qnbd::server {

class Server {
 public:
  Server(boost::asio::io_context& ctx, const config::Config& cfg, ExportRegistry& exports,
         Workers& workers, Listeners listeners);
  void start();
  // Stops accepting, lets in-flight requests finish, closes every export
  // (writing back its caches). Safe to call once.
  boost::asio::awaitable<void> shutdown();
  const Listeners& listeners() const { return listeners_; }
  // SIGHUP: re-reads the TLS certificates and keys (no-op without TLS).
  void reload_tls() {
    if (tls_) tls_->reload();
  }

 private:
  boost::asio::awaitable<void> accept_loop(Acceptor& a);
  boost::asio::awaitable<void> serve(Socket s);
  // The worker for a new session of `e`, whose backend lives on worker `home`.
  unsigned place(const Export& e, unsigned home);

  boost::asio::io_context& ctx_;
  const config::Config& cfg_;
  ExportRegistry& exports_;
  Workers& workers_;
  Listeners listeners_;
  std::unique_ptr<TlsContext> tls_;  // null when TLS is off
  unsigned connections_ = 0;
  bool stopping_ = false;
  std::set<Connection*> handshaking_;
  std::set<std::shared_ptr<Session>> sessions_;
  std::vector<unsigned> load_;                 // sessions per worker
  std::map<const Export*, unsigned> on_home_;  // sessions on the export's home worker
  unsigned next_ = 0;                          // round-robin among equally loaded
  boost::asio::steady_timer idle_;
};

}  // namespace qnbd::server
