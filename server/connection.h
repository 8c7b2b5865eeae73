// A client socket (TCP or Unix, behind one generic type) with a receive
// buffer, so many small requests are taken from one receive. Errors come back
// as values; any error means the connection is finished.
#pragma once

#include "common/result.h"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/asio/io_context.hpp>

#include <cstddef>
#include <span>
#include <string>
#include <vector>

namespace qnbd::server {

using Socket = boost::asio::generic::stream_protocol::socket;

class Connection {
 public:
  Connection(Socket socket, std::string peer);

  // Fills `out` completely, or returns the error (eof included).
  boost::asio::awaitable<error_code> read_exact(std::span<std::byte> out);
  // Reads and throws away n bytes (a payload we refuse but must get past).
  boost::asio::awaitable<error_code> skip(std::size_t n);
  boost::asio::awaitable<error_code> write_all(std::span<const boost::asio::const_buffer> bufs);
  boost::asio::awaitable<error_code> write_all(std::span<const std::byte> bytes);

  // Makes a pending read return end-of-file so the receive loop winds down
  // while replies can still be sent.
  void shutdown_receive();
  void close();
  // Moves the socket to another event loop (the export's worker), keeping
  // any bytes already received.
  error_code rebind(boost::asio::io_context& ctx);
  bool is_open() const { return socket_.is_open(); }
  const std::string& peer() const { return peer_; }
  Socket& socket() { return socket_; }

 private:
  Socket socket_;
  std::string peer_;
  std::vector<std::byte> buf_;
  std::size_t begin_ = 0, end_ = 0;
};

}  // namespace qnbd::server
