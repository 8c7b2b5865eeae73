// The TLS side of a connection after STARTTLS: OpenSSL reads the socket's
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
// Where the kernel has no TLS, OpenSSL writes its records into out_ (a BIO
// of ours) instead, and a batch of replies leaves in sends of up to
// kFlushAt bytes rather than one write() per 16 KiB record: 4 KiB random
// reads at QD32 went from about 57,000 to 92,000 per second (bench/README).
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
#include <tuple>
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
  boost::asio::awaitable<std::tuple<error_code, std::size_t>> read_some(Socket& s,
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
  // Encrypts p[0, n) into records (sent by flush(), or by OpenSSL itself
  // with kernel TLS).
  boost::asio::awaitable<error_code> encrypt(Socket& s, const std::byte* p, std::size_t n);
  // Sends the records in out_ (returns at once if another flush is sending).
  boost::asio::awaitable<error_code> flush(Socket& s);
  // Sends an alert in out_ if the socket takes it at once (failure paths).
  void send_alert();
  void summarise();

  std::shared_ptr<const TlsCredentials> creds_;
  std::unique_ptr<SSL, decltype(&SSL_free)> ssl_{nullptr, SSL_free};
  std::vector<std::byte> staging_;  // small buffers gathered into one record
  std::vector<std::byte> out_;      // records to send (without kernel TLS)
  std::vector<std::byte> sending_;  // records being sent
  bool flushing_ = false;
  TlsSummary summary_;
};

}  // namespace qnbd::server
