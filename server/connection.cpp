#include "server/connection.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <algorithm>
#include <cstring>

namespace qnbd::server {
namespace {

constexpr std::size_t kReceiveBuffer = 256 << 10;
constexpr auto use_tuple = boost::asio::as_tuple(boost::asio::use_awaitable);

}  // namespace

Connection::Connection(Socket socket, std::string peer)
    : socket_(std::move(socket)), peer_(std::move(peer)), buf_(kReceiveBuffer) {}

boost::asio::awaitable<error_code> Connection::read_exact(std::span<std::byte> out) {
  if (out.empty()) co_return error_code{};
  std::size_t got = std::min(out.size(), end_ - begin_);
  if (got) std::memcpy(out.data(), buf_.data() + begin_, got);
  begin_ += got;
  out = out.subspan(got);
  if (out.empty()) co_return error_code{};
  begin_ = end_ = 0;
  // Large payloads go straight into the caller's buffer; small reads refill
  // our buffer so that the following requests need no syscall.
  if (out.size() >= buf_.size() / 2) {
    auto [ec, n] = co_await boost::asio::async_read(
        socket_, boost::asio::buffer(out.data(), out.size()), use_tuple);
    co_return ec;
  }
  while (!out.empty()) {
    auto [ec, n] = co_await socket_.async_read_some(
        boost::asio::buffer(buf_.data() + end_, buf_.size() - end_), use_tuple);
    if (ec) co_return ec;
    end_ += n;
    std::size_t take = std::min(out.size(), end_ - begin_);
    std::memcpy(out.data(), buf_.data() + begin_, take);
    begin_ += take;
    out = out.subspan(take);
  }
  co_return error_code{};
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
  auto [ec, n] = co_await boost::asio::async_write(socket_, bufs, use_tuple);
  co_return ec;
}

boost::asio::awaitable<error_code> Connection::write_all(std::span<const std::byte> bytes) {
  auto [ec, n] = co_await boost::asio::async_write(
      socket_, boost::asio::buffer(bytes.data(), bytes.size()), use_tuple);
  co_return ec;
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
  return ec;
}

void Connection::close() {
  error_code ignored;
  socket_.shutdown(Socket::shutdown_both, ignored);
  socket_.close(ignored);
}

}  // namespace qnbd::server
