#include "server/tls_context.h"

#include "config/access.h"

#include <openssl/err.h>
#include <openssl/x509.h>
#include <spdlog/spdlog.h>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace qnbd::server {
namespace {

int ex_index() {
  static const int index = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

[[noreturn]] void fail(const std::string& what) {
  std::string detail;
  if (unsigned long e = ERR_peek_last_error()) {
    const char* reason = ERR_reason_error_string(e);
    detail = std::string(": ") + (reason ? reason : "OpenSSL error");
  }
  ERR_clear_error();
  throw std::runtime_error(what + detail);
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": " + std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// TLS 1.2 and 1.3 PSK: the key of the identity the client names, or 0 (the
// handshake fails with unknown_psk_identity).
unsigned psk_server_callback(SSL* ssl, const char* identity, unsigned char* psk, unsigned max_len) {
  const TlsCredentials* creds = TlsCredentials::of(ssl);
  if (!creds || !identity) return 0;
  auto it = creds->psk.find(std::string_view(identity));
  if (it == creds->psk.end() || it->second.size() > max_len) return 0;
  std::memcpy(psk, it->second.data(), it->second.size());
  // OpenSSL keeps no identity for TLS 1.3 external PSKs: note it here.
  if (auto* user = static_cast<std::string*>(SSL_get_app_data(ssl))) *user = identity;
  return static_cast<unsigned>(it->second.size());
}

void load_certificates(SSL_CTX* ctx, const config::Tls& cfg) {
  const std::string cert = cfg.certificates + "/server-cert.pem";
  const std::string key = cfg.certificates + "/server-key.pem";
  if (SSL_CTX_use_certificate_chain_file(ctx, cert.c_str()) != 1) fail(cert);
  const auto mismatch = [] {
    return ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH;
  };
  if (SSL_CTX_use_PrivateKey_file(ctx, key.c_str(), SSL_FILETYPE_PEM) != 1 ||
      SSL_CTX_check_private_key(ctx) != 1)
    fail(mismatch() ? key + " does not match " + cert : key);
  if (X509* x = SSL_CTX_get0_certificate(ctx);
      x && X509_cmp_current_time(X509_get0_notAfter(x)) < 0)
    spdlog::warn("TLS: {} has expired; clients will refuse it", cert);
  if (!cfg.verify_peer) return;
  const std::string ca = cfg.certificates + "/ca-cert.pem";
  if (SSL_CTX_load_verify_locations(ctx, ca.c_str(), nullptr) != 1) fail(ca);
  if (STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(ca.c_str()))
    SSL_CTX_set_client_CA_list(ctx, names);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
}

std::shared_ptr<const TlsCredentials> load(const config::Tls& cfg) {
  auto creds = std::make_shared<TlsCredentials>();
  creds->ctx.reset(SSL_CTX_new(TLS_server_method()));
  SSL_CTX* ctx = creds->ctx.get();
  if (!ctx) fail("cannot create a TLS context");
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  // No renegotiation (a client could make us do handshakes forever) and no
  // session tickets (nothing resumes them); ENABLE_KTLS lets OpenSSL hand
  // the record layer to the kernel after the handshake.
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_TICKET | SSL_OP_ENABLE_KTLS |
                               SSL_OP_CIPHER_SERVER_PREFERENCE);
  SSL_CTX_set_num_tickets(ctx, 0);
  // AES-128-GCM first: the fastest with AES-NI, and the SHA-256 suite that
  // TLS 1.3 PSKs (gnutls' default) need.
  SSL_CTX_set_ciphersuites(
      ctx, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256");
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  // Userspace TLS reads many records per system call; OpenSSL 3.0 does not
  // use kernel TLS for receiving while read-ahead is on, so it stays off
  // where the kernel can take over.
  creds->kernel_tls = kernel_tls_available();
  if (!creds->kernel_tls) SSL_CTX_set_read_ahead(ctx, 1);
  SSL_CTX_set_default_read_buffer_len(ctx, 64 << 10);
  if (!cfg.certificates.empty()) load_certificates(ctx, cfg);
  if (!cfg.psk_file.empty()) {
    try {
      creds->psk = parse_psk_file(read_text(cfg.psk_file));
    } catch (const std::runtime_error& e) {
      throw std::runtime_error(cfg.psk_file + ": " + e.what());
    }
    if (creds->psk.empty()) throw std::runtime_error(cfg.psk_file + ": no keys");
    SSL_CTX_set_psk_server_callback(ctx, psk_server_callback);
  }
  creds->verify_peer = cfg.verify_peer;
  SSL_CTX_set_ex_data(ctx, ex_index(), creds.get());
  return creds;
}

}  // namespace

const TlsCredentials* TlsCredentials::of(const SSL* ssl) {
  return static_cast<const TlsCredentials*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ex_index()));
}

bool kernel_tls_available() {
  // An unconnected TCP socket refuses the "tls" upper-layer protocol with
  // ENOTCONN when the kernel knows it, ENOENT when it does not.
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return false;
  int rc = ::setsockopt(fd, SOL_TCP, TCP_ULP, "tls", 3);
  int err = errno;
  ::close(fd);
  return rc == 0 || err != ENOENT;
}

TlsContext::TlsContext(config::Tls cfg)
    : cfg_(std::move(cfg)), mode_(config::effective_mode(cfg_)), creds_(load(cfg_)) {
  spdlog::info("TLS {}: {}{}{}; kernel TLS {}", config::to_string(mode_),
               cfg_.certificates.empty() ? "" : "certificates " + cfg_.certificates,
               cfg_.certificates.empty() || cfg_.psk_file.empty() ? "" : ", ",
               cfg_.psk_file.empty() ? "" : "PSK file " + cfg_.psk_file,
               kernel_tls_available() ? "available" : "not available (no 'tls' module)");
}

std::shared_ptr<const TlsCredentials> TlsContext::current() const {
  std::lock_guard lock(m_);
  return creds_;
}

bool TlsContext::reload() {
  try {
    auto fresh = load(cfg_);
    std::lock_guard lock(m_);
    creds_ = std::move(fresh);
  } catch (const std::exception& e) {
    spdlog::error("TLS reload failed, keeping the previous credentials: {}", e.what());
    return false;
  }
  spdlog::info("TLS credentials reloaded");
  return true;
}

}  // namespace qnbd::server
