#include "server/connection.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <spdlog/spdlog.h>

#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>

namespace qnbd::server {
namespace {

constexpr std::size_t kReceiveBuffer = 2 * Connection::kThroughBuffer;
// Less room than this behind the unread bytes, and they move to the front
// before the next receive (rarely: the unread part is at most one request).
constexpr std::size_t kMinReceive = 16 << 10;
constexpr auto use_tuple = boost::asio::as_tuple(boost::asio::use_awaitable);

}  // namespace

Connection::Connection(Socket socket, std::string peer)
    : socket_(std::move(socket)), peer_(std::move(peer)), buf_(kReceiveBuffer) {}

boost::asio::awaitable<std::tuple<error_code, std::size_t>> Connection::read_some(
    std::span<std::byte> out) {
  if (tls_) return tls_->read_some(socket_, out);
  return socket_.async_read_some(boost::asio::buffer(out.data(), out.size()), use_tuple);
}

boost::asio::awaitable<std::tuple<error_code, std::size_t>> Connection::receive(
    std::size_t want) {
  const std::size_t unread = end_ - begin_;
  if (unread == 0 || buf_.size() - begin_ < want || buf_.size() - end_ < kMinReceive) {
    std::memmove(buf_.data(), buf_.data() + begin_, unread);
    begin_ = 0;
    end_ = unread;
  }
  return read_some(std::span(buf_.data() + end_, buf_.size() - end_));
}

boost::asio::awaitable<error_code> Connection::start_tls(
    std::shared_ptr<const TlsCredentials> creds) {
  if (end_ > begin_)
    spdlog::info("{}: discarding {} bytes sent in the clear after STARTTLS", peer_, end_ - begin_);
  begin_ = end_ = 0;
  auto stream = TlsStream::open(std::move(creds), socket_);
  if (!stream) co_return stream.error();
  tls_ = std::move(*stream);
  co_return co_await tls_->accept(socket_);
}

boost::asio::awaitable<error_code> Connection::read_exact(std::span<std::byte> out) {
  for (;;) {
    const std::size_t take = std::min(out.size(), end_ - begin_);
    if (take) std::memcpy(out.data(), buf_.data() + begin_, take);
    begin_ += take;
    out = out.subspan(take);
    if (out.empty()) co_return error_code{};
    // The buffer is empty now. Large payloads go straight into the caller's
    // memory; small reads refill the buffer so that what follows them needs
    // no syscall.
    if (out.size() > kThroughBuffer) {
      auto [ec, n] = co_await read_some(out);
      if (ec) co_return ec;
      out = out.subspan(n);
    } else {
      auto [ec, n] = co_await receive(out.size());
      if (ec) co_return ec;
      received(n);
    }
  }
}

boost::asio::awaitable<error_code> Connection::skip(std::size_t n) {
  std::vector<std::byte> scratch(std::min<std::size_t>(n, 64 << 10));
  while (n) {
    std::size_t step = std::min(n, scratch.size());
    if (auto ec = co_await read_exact(std::span(scratch.data(), step))) co_return ec;
    n -= step;
  }
  co_return error_code{};
}

boost::asio::awaitable<error_code> Connection::write_all(
    std::span<const boost::asio::const_buffer> bufs) {
  if (tls_) co_return co_await tls_->write(socket_, bufs);
  auto [ec, n] = co_await boost::asio::async_write(socket_, bufs, use_tuple);
  co_return ec;
}

boost::asio::awaitable<error_code> Connection::write_all(std::span<const std::byte> bytes) {
  const boost::asio::const_buffer one(bytes.data(), bytes.size());
  co_return co_await write_all(std::span(&one, 1));
}

result<std::size_t> Connection::try_write(std::span<const boost::asio::const_buffer> bufs) {
  if (tls_) return std::size_t{0};
  // The first IOV_MAX buffers at most; the caller sends the rest later.
  std::array<iovec, IOV_MAX> iov;
  const std::size_t n = std::min(bufs.size(), iov.size());
  for (std::size_t i = 0; i < n; ++i)
    iov[i] = {const_cast<void*>(bufs[i].data()), bufs[i].size()};
  msghdr msg{};
  msg.msg_iov = iov.data();
  msg.msg_iovlen = n;
  for (;;) {
    const ssize_t sent = ::sendmsg(socket_.native_handle(), &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (sent >= 0) return static_cast<std::size_t>(sent);
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return std::size_t{0};
    return last_errno();
  }
}

void Connection::shutdown_receive() {
  error_code ignored;
  socket_.shutdown(Socket::shutdown_receive, ignored);
}

error_code Connection::rebind(boost::asio::io_context& ctx) {
  error_code ec;
  auto protocol = socket_.local_endpoint(ec).protocol();
  if (ec) return ec;
  int fd = socket_.release(ec);
  if (ec) return ec;
  socket_ = Socket(ctx);
  socket_.assign(protocol, fd, ec);
  if (!ec && tls_) socket_.non_blocking(true, ec);  // OpenSSL reads the descriptor itself
  return ec;
}

void Connection::close() {
  if (tls_) tls_->close_notify();
  error_code ignored;
  socket_.shutdown(Socket::shutdown_both, ignored);
  socket_.close(ignored);
}

}  // namespace qnbd::server
