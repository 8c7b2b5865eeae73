#include "server/server.h"

#include "config/access.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <spdlog/spdlog.h>

#include <unistd.h>

namespace qnbd::server {

using boost::asio::awaitable;
using boost::asio::use_awaitable;
using namespace boost::asio::experimental::awaitable_operators;

Server::Server(boost::asio::io_context& ctx, const config::Config& cfg, ExportRegistry& exports,
               Workers& workers, Listeners listeners)
    : ctx_(ctx),
      cfg_(cfg),
      exports_(exports),
      workers_(workers),
      listeners_(std::move(listeners)),
      tls_(config::effective_mode(cfg.listen.tls) == config::TlsMode::off
               ? nullptr
               : std::make_unique<TlsContext>(cfg.listen.tls)),
      load_(workers.size(), 0),
      idle_(ctx) {}

void Server::start() {
  for (auto& a : listeners_.acceptors)
    boost::asio::co_spawn(ctx_, accept_loop(a), boost::asio::detached);
}

awaitable<void> Server::accept_loop(Acceptor& a) {
  while (!stopping_) {
    auto [ec, s] = co_await a.async_accept(boost::asio::as_tuple(use_awaitable));
    if (stopping_) break;
    if (ec) {
      // EMFILE and friends: keep serving the clients we have.
      spdlog::warn("accept failed: {}", ec.message());
      boost::asio::steady_timer t(ctx_, std::chrono::milliseconds(100));
      co_await t.async_wait(boost::asio::as_tuple(use_awaitable));
      continue;
    }
    if (connections_ >= cfg_.max_connections) {
      spdlog::warn("refusing connection: {} clients already connected", connections_);
      error_code ignored;
      s.close(ignored);
      continue;
    }
    boost::asio::co_spawn(ctx_, serve(std::move(s)), boost::asio::detached);
  }
}

// The first connection to an export is served on its home worker, which
// calls the backend without a thread hop (QD1 latency). While the home worker
// serves one, the others go to the least-loaded other worker, so that
// several connections to one export (NBD multi-conn) use several cores.
unsigned Server::place(const Export& e, unsigned home) {
  const unsigned n = workers_.size();
  if (n == 1 || home >= n || on_home_[&e] == 0) return home;
  unsigned best = n;
  for (unsigned k = 0; k < n; ++k) {
    unsigned i = (next_ + k) % n;
    if (i != home && (best == n || load_[i] < load_[best])) best = i;
  }
  next_ = (best + 1) % n;
  return best;
}

awaitable<void> Server::serve(Socket s) {
  ++connections_;
  if (s.local_endpoint().protocol().family() != AF_UNIX) {
    error_code ignored;
    s.set_option(boost::asio::ip::tcp::no_delay(true), ignored);
  }
  std::string peer = peer_name(s);
  spdlog::debug("{}: connected", peer);
  Connection conn(std::move(s), peer);
  handshaking_.insert(&conn);
  boost::asio::steady_timer limit(ctx_, std::chrono::seconds(cfg_.handshake_timeout_s));
  auto outcome = co_await (negotiate(conn, exports_, tls_.get()) ||
                           limit.async_wait(boost::asio::as_tuple(use_awaitable)));
  handshaking_.erase(&conn);
  std::optional<Negotiated> neg;
  if (outcome.index() == 0)
    neg = std::get<0>(outcome);
  else
    spdlog::info("{}: handshake not finished within {} s, closing", peer, cfg_.handshake_timeout_s);
  if (neg && !stopping_) {
    spdlog::debug("{}: export '{}' ({}structured replies)", peer, neg->exp->name,
                  neg->structured ? "" : "no ");
    Export& e = *neg->exp;
    const unsigned home = workers_.index_of(*e.home);
    const unsigned w = place(e, home);
    auto& worker = w < workers_.size() ? workers_.context(w) : *e.home;
    if (auto ec = conn.rebind(worker)) {
      spdlog::warn("{}: cannot hand the connection to its worker: {}", peer, ec.message());
    } else {
      SessionPlacement where;
      where.worker = w;
      if (w != home) where.owner = e.home->get_executor();
      auto session = std::make_shared<Session>(std::move(conn), *neg, SessionLimits{}, where);
      sessions_.insert(session);
      ++e.connections;
      if (w < load_.size()) ++load_[w];
      if (w == home) ++on_home_[&e];
      // The session runs on its worker; we resume here afterwards.
      co_await boost::asio::co_spawn(worker.get_executor(), session->run(), use_awaitable);
      if (w == home) --on_home_[&e];
      if (w < load_.size()) --load_[w];
      --e.connections;
      sessions_.erase(session);
    }
  } else {
    conn.close();
  }
  --connections_;
  idle_.cancel();
}

awaitable<void> Server::shutdown() {
  if (stopping_) co_return;
  stopping_ = true;
  spdlog::info("shutting down: draining {} connection(s)", connections_);
  for (auto& a : listeners_.acceptors) {
    error_code ignored;
    a.close(ignored);
  }
  for (auto* c : handshaking_) c->close();
  for (auto& s : sessions_) s->stop();
  while (connections_ > 0) {
    idle_.expires_at(boost::asio::steady_timer::time_point::max());
    co_await idle_.async_wait(boost::asio::as_tuple(use_awaitable));
  }
  for (auto& e : exports_.all()) {
    auto r =
        co_await boost::asio::co_spawn(e->home->get_executor(), e->backend->close(), use_awaitable);
    if (!r) spdlog::error("export '{}': closing failed: {}", e->name, r.error().message());
  }
  if (!listeners_.unix_path.empty()) ::unlink(listeners_.unix_path.c_str());
}

}  // namespace qnbd::server
