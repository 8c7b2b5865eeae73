// Owns the listeners and every connection: accepts, bounds the number of
// clients, runs the handshake under a time limit and its own bounds (the
// handshakes in progress, and those per client address, never take the slots
// of negotiated clients; when full the oldest handshake is closed), picks the worker that
// serves the connection (see workers.h), hands it to a Session there, and on
// shutdown drains all of them before the exports close. Runs on the main
// thread; so do all of its counters.
#pragma once

#include "common/wait_queue.h"
#include "config/config.h"
#include "server/export_registry.h"
#include "server/listener.h"
#include "server/session.h"
#include "server/tls_context.h"
#include "server/workers.h"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>

#include <functional>
#include <list>
#include <map>
#include <set>
#include <vector>

namespace qnbd::server {

class Server {
 public:
  Server(boost::asio::io_context& ctx, const config::Config& cfg, ExportRegistry& exports,
         Workers& workers, Listeners listeners);
  void start();
  // Takes the connection bounds and handshake timeout of a reloaded config;
  // they apply to new connections.
  void update_limits(const config::Config& cfg);
  // Called on the main thread when an export's last session has ended.
  void on_export_idle(std::function<void(Export&)> f) { export_idle_ = std::move(f); }
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
  struct Handshaking {
    Connection* conn = nullptr;
    std::string address;  // client IP; "" for Unix sockets (not bounded per address)
    ExportRegistry::Clock::time_point start;
    bool evicted = false;
  };
  using HandshakeList = std::list<Handshaking>;

  boost::asio::awaitable<void> serve(Socket s, std::string address);
  // Makes room for a new handshake from `address` by closing the oldest ones.
  void bound_handshakes(const std::string& address);
  void evict(Handshaking& h);
  void handshake_done(HandshakeList::iterator it);
  // The worker for a new session of `e`, whose backend lives on worker `home`.
  unsigned place(const Export& e, unsigned home);

  boost::asio::io_context& ctx_;
  config::Config cfg_;
  ExportRegistry& exports_;
  Workers& workers_;
  Listeners listeners_;
  std::unique_ptr<TlsContext> tls_;  // null when TLS is off
  unsigned connections_ = 0;
  bool stopping_ = false;
  HandshakeList handshaking_;     // oldest first
  unsigned open_handshakes_ = 0;  // not evicted
  std::map<std::string, unsigned> per_address_;
  std::function<void(Export&)> export_idle_;
  std::set<std::shared_ptr<Session>> sessions_;
  unsigned admitted_ = 0;       // clients told their export is theirs, not yet in sessions_
  std::vector<unsigned> load_;  // sessions per worker
  std::map<const Export*, unsigned> on_home_;  // sessions on the export's home worker
  unsigned next_ = 0;                          // round-robin among equally loaded
  WaitQueue idle_;
};

}  // namespace qnbd::server
