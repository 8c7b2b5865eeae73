// A client socket (TCP or Unix, behind one generic type) with a receive
// buffer, so many small requests are taken from one receive. Errors come back
// as values; any error means the connection is finished.
//
// The transport below the buffer is chosen once: the plain socket, or after
// start_tls() a TlsStream (which with kernel TLS is the plain socket again
// for application data; tls()->summary() says which).
#pragma once

#include "common/result.h"
#include "server/tls_stream.h"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/asio/io_context.hpp>

#include <cstddef>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <tuple>
#include <vector>

namespace qnbd::server {

using Socket = boost::asio::generic::stream_protocol::socket;

class Connection {
 public:
  // Reads of up to this many bytes go through the receive buffer (many
  // small requests from one receive); larger ones go straight into the
  // caller's memory once the buffered bytes are taken.
  static constexpr std::size_t kThroughBuffer = 128 << 10;

  Connection(Socket socket, std::string peer);

  // Fills `out` completely, or returns the error (eof included).
  boost::asio::awaitable<error_code> read_exact(std::span<std::byte> out);
  // For a loop that parses the buffer itself: the bytes received and not yet
  // taken, and taking `n` of them.
  std::span<const std::byte> buffered() const { return {buf_.data() + begin_, end_ - begin_}; }
  void consume(std::size_t n) { begin_ += n; }
  // Receives once into the buffer, with room for at least `want` bytes
  // (<= kThroughBuffer) counting the unread ones, and returns the receive
  // itself rather than a coroutine around it (one frame less per receive on
  // the request path): the caller passes the byte count to received().
  boost::asio::awaitable<std::tuple<error_code, std::size_t>> receive(std::size_t want);
  void received(std::size_t n) { end_ += n; }
  // Fills `out` from bytes already received, without suspending, if there
  // are enough; else takes nothing and returns false (then use read_exact).
  bool take_buffered(std::span<std::byte> out) {
    if (out.size() > end_ - begin_) return false;
    std::memcpy(out.data(), buf_.data() + begin_, out.size());
    begin_ += out.size();
    return true;
  }
  // Reads and throws away n bytes (a payload we refuse but must get past).
  boost::asio::awaitable<error_code> skip(std::size_t n);
  boost::asio::awaitable<error_code> write_all(std::span<const boost::asio::const_buffer> bufs);
  boost::asio::awaitable<error_code> write_all(std::span<const std::byte> bytes);
  // Sends what the socket takes at once of `bufs`, without waiting, and
  // returns the number of bytes sent (0 when it would block). Over TLS it
  // sends nothing: records go through write_all.
  result<std::size_t> try_write(std::span<const boost::asio::const_buffer> bufs);

  // NBD_OPT_STARTTLS, after its ACK: drops every byte received so far (sent
  // in the clear after the option, so never to be read as if protected:
  // CVE-2021-3716) and runs the server side of the TLS handshake.
  boost::asio::awaitable<error_code> start_tls(std::shared_ptr<const TlsCredentials> creds);
  const TlsStream* tls() const { return tls_.get(); }

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
  // One receive into `out`; over a plain socket the operation itself.
  boost::asio::awaitable<std::tuple<error_code, std::size_t>> read_some(std::span<std::byte> out);

  std::string peer_;
  std::unique_ptr<TlsStream> tls_;
  std::vector<std::byte> buf_;
  std::size_t begin_ = 0, end_ = 0;
};

}  // namespace qnbd::server
