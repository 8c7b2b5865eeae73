// Owns the listeners and every connection: accepts, bounds the number of
// clients, runs the handshake under a time limit, hands the connection to a
// Session, and on shutdown drains all of them before the exports close.
#pragma once

#include "config/config.h"
#include "server/export_registry.h"
#include "server/listener.h"
#include "server/session.h"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <set>

namespace qnbd::server {

class Server {
 public:
  Server(boost::asio::io_context& ctx, const config::Config& cfg, ExportRegistry& exports,
         Listeners listeners);
  void start();
  // Stops accepting, lets in-flight requests finish, closes every export
  // (writing back its caches). Safe to call once.
  boost::asio::awaitable<void> shutdown();
  const Listeners& listeners() const { return listeners_; }

 private:
  boost::asio::awaitable<void> accept_loop(Acceptor& a);
  boost::asio::awaitable<void> serve(Socket s);

  boost::asio::io_context& ctx_;
  const config::Config& cfg_;
  ExportRegistry& exports_;
  Listeners listeners_;
  unsigned connections_ = 0;
  bool stopping_ = false;
  std::set<Connection*> handshaking_;
  std::set<std::shared_ptr<Session>> sessions_;
  boost::asio::steady_timer idle_;
};

}  // namespace qnbd::server
