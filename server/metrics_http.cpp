#include "server/metrics_http.h"

#include "server/metrics.h"
#include "server/metrics_render.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <stdexcept>

namespace qnbd::server {

namespace http = boost::beast::http;
using boost::asio::awaitable;
using boost::asio::ip::tcp;
constexpr auto use_tuple = boost::asio::as_tuple(boost::asio::use_awaitable);

namespace {

// Scrapers are few; this bounds what a stray client can hold.
constexpr unsigned kMaxClients = 16;
constexpr std::chrono::seconds kIdleTimeout{30};

tcp::endpoint resolve(boost::asio::io_context& ctx, const config::Endpoint& at) {
  tcp::resolver resolver(ctx);
  boost::system::error_code ec;
  auto found = resolver.resolve(at.host, std::to_string(at.port), tcp::resolver::passive, ec);
  if (ec || found.empty())
    throw std::runtime_error(
        fmt::format("metrics: cannot resolve '{}': {}", at.host, ec ? ec.message() : "no address"));
  return found.begin()->endpoint();
}

tcp::acceptor bind(boost::asio::io_context& ctx, const config::Endpoint& at) {
  const tcp::endpoint ep = resolve(ctx, at);
  tcp::acceptor a(ctx);
  boost::system::error_code ec;
  a.open(ep.protocol(), ec);
  if (!ec) a.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) a.bind(ep, ec);
  if (!ec) a.listen(boost::asio::socket_base::max_listen_connections, ec);
  if (ec)
    throw std::runtime_error(
        fmt::format("metrics: cannot listen on {}:{}: {}", at.host, at.port, ec.message()));
  return a;
}

awaitable<BackendStats> stats_of(const BlockBackend* be) { co_return be->stats(); }

bool wants_metrics(const http::request<http::empty_body>& req) {
  const std::string_view target(req.target().data(), req.target().size());
  return req.method() == http::verb::get &&
         (target == "/metrics" || target.starts_with("/metrics?"));
}

// `metrics` is the scrape when wants_metrics(req).
http::response<http::string_body> answer(const http::request<http::empty_body>& req,
                                         std::string metrics) {
  http::response<http::string_body> res;
  res.version(req.version());
  res.keep_alive(req.keep_alive());
  res.set(http::field::server, "qnbd");
  if (wants_metrics(req)) {
    res.result(http::status::ok);
    res.set(http::field::content_type, metrics::kContentType);
    res.body() = std::move(metrics);
  } else if (req.method() != http::verb::get) {
    res.result(http::status::method_not_allowed);
    res.set(http::field::allow, "GET");
  } else {
    res.result(http::status::not_found);
    res.set(http::field::content_type, "text/plain");
    res.body() = "qnbd serves only /metrics\n";
  }
  res.prepare_payload();
  return res;
}

}  // namespace

MetricsServer::MetricsServer(boost::asio::io_context& ctx, const config::Endpoint& at,
                             const ExportRegistry& exports)
    : ctx_(ctx), exports_(exports), acceptor_(bind(ctx, at)) {}

std::string MetricsServer::url() const {
  const auto ep = acceptor_.local_endpoint();
  const auto addr = ep.address();
  const std::string host = addr.is_v6() ? "[" + addr.to_string() + "]" : addr.to_string();
  return fmt::format("http://{}:{}/metrics", host, ep.port());
}

void MetricsServer::start() { boost::asio::co_spawn(ctx_, accept_loop(), boost::asio::detached); }

void MetricsServer::stop() {
  boost::system::error_code ignored;
  acceptor_.close(ignored);
}

awaitable<void> MetricsServer::accept_loop() {
  while (acceptor_.is_open()) {
    auto [ec, s] = co_await acceptor_.async_accept(use_tuple);
    if (ec == boost::asio::error::operation_aborted) break;
    if (ec) {
      spdlog::warn("metrics: accept failed: {}", ec.message());
      continue;
    }
    if (clients_ >= kMaxClients) {
      spdlog::warn("metrics: refusing a client: {} already connected", clients_);
      continue;  // `s` closes here
    }
    boost::asio::co_spawn(ctx_, serve(std::move(s)), boost::asio::detached);
  }
}

awaitable<void> MetricsServer::serve(tcp::socket s) {
  ++clients_;
  boost::beast::tcp_stream stream(std::move(s));
  boost::beast::flat_buffer buf;
  for (;;) {
    stream.expires_after(kIdleTimeout);
    http::request_parser<http::empty_body> parser;
    parser.header_limit(8192);
    auto [ec, n] = co_await http::async_read(stream, buf, parser, use_tuple);
    if (ec) break;
    const auto& req = parser.get();
    std::string body;
    if (wants_metrics(req)) body = co_await scrape();
    auto res = answer(req, std::move(body));
    auto [wec, wn] = co_await http::async_write(stream, res, use_tuple);
    if (wec || !res.keep_alive()) break;
  }
  boost::system::error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
  --clients_;
}

awaitable<std::string> MetricsServer::scrape() {
  // Names first: a reload may change the registry while we wait for a worker.
  std::vector<std::string> names;
  for (const auto& e : exports_.all()) names.push_back(e->name);
  std::map<std::string, BackendStats> images;
  for (const auto& name : names) {
    // Looked up again after each wait. An export not closing here cannot have
    // its backend freed before our call runs: a close is posted to the same
    // worker after it, and a worker runs its posts in order.
    const Export* e = exports_.find(name);
    if (!e || e->closing || !e->backend) continue;
    images[name] = co_await boost::asio::co_spawn(
        e->home->get_executor(), stats_of(e->backend.get()), boost::asio::use_awaitable);
  }
  co_return metrics::render(metrics::process().totals(), images, metrics::refusals().totals());
}

}  // namespace qnbd::server
