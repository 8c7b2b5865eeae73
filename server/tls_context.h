// The TLS credentials of a listener (OpenSSL 3): server certificate and key,
// the CA that signs client certificates, pre-shared keys. Built at start-up
// (errors throw std::runtime_error with one clear line) and rebuilt by
// reload() when the files change; connections keep the credentials they
// started with.
#pragma once

#include "config/config.h"
#include "server/tls_psk.h"

#include <openssl/ssl.h>

#include <memory>
#include <mutex>

namespace qnbd::server {

struct TlsCredentials {
  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx{nullptr, SSL_CTX_free};
  PskKeys psk;
  bool verify_peer = false;
  // The kernel can take over the record layer (kernel_tls_available() when
  // the credentials were loaded): OpenSSL then writes to the socket itself.
  bool kernel_tls = false;

  // The credentials an SSL object was made from (for the PSK callback). The
  // SSL's app data, when set, is a std::string* that receives the PSK user.
  static const TlsCredentials* of(const SSL* ssl);
};

// Whether this kernel can take over TLS records (the `tls` module); OpenSSL
// then hands the session keys to the socket after the handshake.
bool kernel_tls_available();

class TlsContext {
 public:
  explicit TlsContext(config::Tls cfg);

  config::TlsMode mode() const { return mode_; }
  std::shared_ptr<const TlsCredentials> current() const;
  // Re-reads the certificate, key, CA and PSK files. On any problem logs it
  // and keeps the previous credentials; returns whether the new ones are in
  // use. Thread-safe.
  bool reload();

 private:
  config::Tls cfg_;
  config::TlsMode mode_;
  mutable std::mutex m_;
  std::shared_ptr<const TlsCredentials> creds_;
};

}  // namespace qnbd::server
