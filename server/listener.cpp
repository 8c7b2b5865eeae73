#include "server/listener.h"

#include "server/daemon.h"

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>

#include <fmt/format.h>

#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>

namespace qnbd::server {
namespace {

using boost::asio::generic::stream_protocol;
namespace ip = boost::asio::ip;

void listen_on(Listeners& out, boost::asio::io_context& ctx, const stream_protocol::endpoint& ep,
               const std::string& what) {
  Acceptor a(ctx);
  error_code ec;
  a.open(ep.protocol(), ec);
  if (!ec && ep.protocol().family() != AF_UNIX)
    a.set_option(boost::asio::socket_base::reuse_address(true), ec);
  if (!ec) a.bind(ep, ec);
  if (!ec) a.listen(boost::asio::socket_base::max_listen_connections, ec);
  if (ec) throw std::runtime_error(fmt::format("cannot listen on {}: {}", what, ec.message()));
  out.acceptors.push_back(std::move(a));
  out.descriptions.push_back(what);
}

void listen_tcp(Listeners& out, boost::asio::io_context& ctx, const config::Listen& l) {
  error_code ec;
  auto addr = ip::make_address(l.host, ec);
  if (ec) throw std::runtime_error(fmt::format("invalid bind address '{}'", l.host));
  ip::tcp::endpoint ep(addr, l.port);
  std::string what =
      addr.is_v6() ? fmt::format("[{}]:{}", l.host, l.port) : fmt::format("{}:{}", l.host, l.port);
  listen_on(out, ctx, stream_protocol::endpoint(ep), what);
}

void listen_unix(Listeners& out, boost::asio::io_context& ctx, const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) throw std::runtime_error(path + ": exists and is not a socket");
    ::unlink(path.c_str());  // stale socket of an earlier run
  }
  listen_on(out, ctx,
            stream_protocol::endpoint(boost::asio::local::stream_protocol::endpoint(path)),
            "unix:" + path);
  out.unix_path = path;
}

void adopt(Listeners& out, boost::asio::io_context& ctx, int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) < 0)
    throw std::runtime_error(fmt::format("inherited fd {} is not a socket", fd));
  int proto = ss.ss_family == AF_UNIX ? 0 : IPPROTO_TCP;
  Acceptor a(ctx);
  error_code ec;
  a.assign(stream_protocol(ss.ss_family, proto), fd, ec);
  if (ec) throw std::runtime_error(fmt::format("inherited fd {}: {}", fd, ec.message()));
  out.acceptors.push_back(std::move(a));
  out.descriptions.push_back(fmt::format("inherited fd {}", fd));
}

}  // namespace

Listeners open_listeners(boost::asio::io_context& ctx, const config::Listen& listen) {
  Listeners out;
  if (auto fds = daemon::inherited_listen_fds(); !fds.empty()) {
    for (int fd : fds) adopt(out, ctx, fd);
    return out;
  }
  if (listen.tcp) listen_tcp(out, ctx, listen);
  if (listen.unix_path) listen_unix(out, ctx, *listen.unix_path);
  if (out.acceptors.empty()) throw std::runtime_error("nothing to listen on");
  return out;
}

std::string peer_name(const boost::asio::generic::stream_protocol::socket& s) {
  error_code ec;
  auto ep = s.remote_endpoint(ec);
  if (ec) return "client";
  if (ep.protocol().family() == AF_INET || ep.protocol().family() == AF_INET6) {
    ip::tcp::endpoint tcp;
    std::size_t n = std::min<std::size_t>(ep.size(), sizeof(sockaddr_in6));
    std::memcpy(tcp.data(), ep.data(), n);
    tcp.resize(n);
    return fmt::format("{}:{}", tcp.address().to_string(), tcp.port());
  }
  return "unix-client";
}

}  // namespace qnbd::server
