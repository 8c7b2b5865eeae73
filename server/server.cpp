#include "server/server.h"

#include "config/access.h"
#include "server/metrics.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <spdlog/spdlog.h>

#include <unistd.h>

#include <algorithm>
#include <cstring>

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
      load_(workers.size(), 0) {}

namespace {

// The client's IP address; "" for a Unix socket.
std::string client_address(const Socket& s) {
  error_code ec;
  auto ep = s.remote_endpoint(ec);
  if (ec) return {};
  const int family = ep.protocol().family();
  if (family != AF_INET && family != AF_INET6) return {};
  boost::asio::ip::tcp::endpoint tcp;
  std::size_t n = std::min<std::size_t>(ep.size(), sizeof(sockaddr_in6));
  std::memcpy(tcp.data(), ep.data(), n);
  tcp.resize(n);
  return tcp.address().to_string();
}

}  // namespace

void Server::update_limits(const config::Config& cfg) {
  cfg_.max_connections = cfg.max_connections;
  cfg_.max_handshakes = cfg.max_handshakes;
  cfg_.max_handshakes_per_address = cfg.max_handshakes_per_address;
  cfg_.handshake_timeout_s = cfg.handshake_timeout_s;
}

void Server::evict(Handshaking& h) {
  h.evicted = true;
  --open_handshakes_;
  if (!h.address.empty() && --per_address_[h.address] == 0) per_address_.erase(h.address);
  h.conn->close();  // its negotiate() returns and serve() cleans up
  metrics::refusals().add(metrics::Refusal::handshake_limit);
}

void Server::bound_handshakes(const std::string& address) {
  auto oldest = [&](auto pred) {
    for (auto& h : handshaking_)
      if (!h.evicted && pred(h)) return &h;
    return static_cast<Handshaking*>(nullptr);
  };
  if (!address.empty() && per_address_[address] >= cfg_.max_handshakes_per_address) {
    if (auto* h = oldest([&](const Handshaking& x) { return x.address == address; })) {
      spdlog::info("{}: closing its oldest handshake ({} in progress from this address)",
                   h->conn->peer(), cfg_.max_handshakes_per_address);
      evict(*h);
    }
  }
  if (open_handshakes_ >= cfg_.max_handshakes) {
    if (auto* h = oldest([](const Handshaking&) { return true; })) {
      spdlog::info("{}: closing the oldest handshake ({} in progress)", h->conn->peer(),
                   cfg_.max_handshakes);
      evict(*h);
    }
  }
}

void Server::handshake_done(HandshakeList::iterator it) {
  if (!it->evicted) {
    --open_handshakes_;
    if (!it->address.empty() && --per_address_[it->address] == 0) per_address_.erase(it->address);
  }
  handshaking_.erase(it);
  // An unlisted export can be freed once no handshake older than its closing
  // can still hold a pointer to it.
  exports_.collect(handshaking_.empty() ? ExportRegistry::Clock::now()
                                        : handshaking_.front().start);
}

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
    // Only negotiated clients count against max_connections; handshakes
    // have their own bounds.
    if (sessions_.size() + admitted_ >= cfg_.max_connections) {
      metrics::refusals().add(metrics::Refusal::max_connections);
      spdlog::warn("refusing connection: {} clients already connected",
                   sessions_.size() + admitted_);
      error_code ignored;
      s.close(ignored);
      continue;
    }
    std::string address = client_address(s);
    bound_handshakes(address);
    boost::asio::co_spawn(ctx_, serve(std::move(s), std::move(address)), boost::asio::detached);
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

awaitable<void> Server::serve(Socket s, std::string address) {
  ++connections_;
  if (s.local_endpoint().protocol().family() != AF_UNIX) {
    error_code ignored;
    s.set_option(boost::asio::ip::tcp::no_delay(true), ignored);
  }
  std::string peer = peer_name(s);
  spdlog::debug("{}: connected", peer);
  Connection conn(std::move(s), peer);
  ++open_handshakes_;
  if (!address.empty()) ++per_address_[address];
  auto me = handshaking_.insert(handshaking_.end(), {&conn, address, ExportRegistry::Clock::now()});
  boost::asio::steady_timer limit(ctx_, std::chrono::seconds(cfg_.handshake_timeout_s));
  bool holds_slot = false;
  auto admit = [&] {
    if (sessions_.size() + admitted_ >= cfg_.max_connections) return false;
    ++admitted_;
    return holds_slot = true;
  };
  auto outcome = co_await (negotiate(conn, exports_, tls_.get(), admit) ||
                           limit.async_wait(boost::asio::as_tuple(use_awaitable)));
  std::optional<Negotiated> neg;
  if (outcome.index() == 0)
    neg = std::get<0>(outcome);
  else {
    metrics::refusals().add(metrics::Refusal::handshake_timeout);
    spdlog::info("{}: handshake not finished within {} s, closing", peer, cfg_.handshake_timeout_s);
  }
  // The export may have been removed (and closed) by a reload meanwhile.
  if (neg && (!exports_.listed(neg->exp) || neg->exp->closing)) {
    spdlog::info("{}: export '{}' was removed during the handshake, closing", peer, neg->exp->name);
    neg.reset();
  }
  handshake_done(me);  // after the last look at an unlisted export
  // From here on the slot is the session's (no suspension until it is inserted).
  if (holds_slot) --admitted_;
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
      if (w < workers_.size()) where.ring = &workers_.ring(w);
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
      if (e.connections == 0 && export_idle_) export_idle_(e);
    }
  } else {
    conn.close();
  }
  --connections_;
  idle_.notify_all();
}

awaitable<void> Server::shutdown() {
  if (stopping_) co_return;
  stopping_ = true;
  spdlog::info("shutting down: draining {} connection(s)", connections_);
  for (auto& a : listeners_.acceptors) {
    error_code ignored;
    a.close(ignored);
  }
  for (auto& h : handshaking_) h.conn->close();
  for (auto& s : sessions_) s->stop();
  while (connections_ > 0) co_await idle_.wait();
  if (!listeners_.unix_path.empty()) ::unlink(listeners_.unix_path.c_str());
}

}  // namespace qnbd::server
