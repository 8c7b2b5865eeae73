// The TLS side of a connection after STARTTLS: OpenSSL drives the socket's
// file descriptor itself (a socket BIO), and this class waits for
// readiness through the Asio socket whenever OpenSSL would block.
//
// Why not boost::asio::ssl::stream: it feeds OpenSSL through a memory BIO
// pair, so OpenSSL can never hand the records to kernel TLS, and it binds
// internal timers to the io_context it was made on, while a connection
// moves from the accepting thread to its worker after the handshake. With
// a socket BIO, kernel TLS (SSL_OP_ENABLE_KTLS) takes over where the kernel
// has it, and the socket is again a plain socket for application data.
//
// All calls for one stream come from one thread (the connection's event
// loop); one read and one write may be in progress at a time.
#pragma once

#include "common/result.h"
#include "server/tls_context.h"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/generic/stream_protocol.hpp>

#include <openssl/ssl.h>

#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace qnbd::server {

// What the handshake settled, for authorization and the logs.
struct TlsSummary {
  std::string version, cipher;
  std::string subject;   // verified client certificate subject (RFC 4514), or ""
  std::string psk_user;  // PSK identity, or ""
  bool kernel_send = false, kernel_receive = false;
};

class TlsStream {
 public:
  using Socket = boost::asio::generic::stream_protocol::socket;

  // Sets `s` non-blocking; the stream uses its descriptor from now on.
  static result<std::unique_ptr<TlsStream>> open(std::shared_ptr<const TlsCredentials> creds,
                                                 Socket& s);

  // The server side of the TLS handshake. On failure, failure_detail() says
  // more than the error (certificate verification result).
  boost::asio::awaitable<error_code> accept(Socket& s);
  boost::asio::awaitable<std::pair<error_code, std::size_t>> read_some(Socket& s,
                                                                       std::span<std::byte> out);
  // Writes everything; small buffers are gathered into full records.
  boost::asio::awaitable<error_code> write(Socket& s,
                                           std::span<const boost::asio::const_buffer> bufs);
  // Best effort close_notify, never waits.
  void close_notify();

  const TlsSummary& summary() const { return summary_; }
  std::string failure_detail() const;

 private:
  explicit TlsStream(std::shared_ptr<const TlsCredentials> creds) : creds_(std::move(creds)) {}
  template <class Op>
  boost::asio::awaitable<std::pair<error_code, std::size_t>> drive(Socket& s, Op op);
  boost::asio::awaitable<error_code> write_raw(Socket& s, const std::byte* p, std::size_t n);
  void summarise();

  std::shared_ptr<const TlsCredentials> creds_;
  std::unique_ptr<SSL, decltype(&SSL_free)> ssl_{nullptr, SSL_free};
  std::vector<std::byte> staging_;
  TlsSummary summary_;
};

}  // namespace qnbd::server
