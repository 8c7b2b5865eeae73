#include "server/tls_stream.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/write.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <openssl/err.h>
#include <openssl/x509.h>

#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <new>

namespace qnbd::server {
namespace {

using boost::asio::awaitable;
constexpr auto use_tuple = boost::asio::as_tuple(boost::asio::use_awaitable);
// The largest TLS record payload: staging this much makes full records.
constexpr std::size_t kRecord = 16384;
// Records are sent once this much is waiting, so that the client decrypts
// one part of a large reply while the next is encrypted (256 KiB made 1 MiB
// reads slower than 64 KiB).
constexpr std::size_t kFlushAt = 64 << 10;
// A connection keeps an out_ buffer up to this size between replies.
constexpr std::size_t kKeepOut = 1 << 20;

// The BIO OpenSSL writes records into when the kernel cannot take them:
// its data is the stream's out_, never full, so writes never block.
int out_write(BIO* b, const char* data, int len) {
  auto* out = static_cast<std::vector<std::byte>*>(BIO_get_data(b));
  auto* p = reinterpret_cast<const std::byte*>(data);
  try {
    out->insert(out->end(), p, p + len);
  } catch (const std::bad_alloc&) {
    return -1;
  }
  return len;
}

long out_ctrl(BIO* b, int cmd, long, void*) {
  if (cmd == BIO_CTRL_FLUSH) return 1;  // flush() sends, after the SSL call
  if (cmd == BIO_CTRL_WPENDING)
    return static_cast<long>(static_cast<std::vector<std::byte>*>(BIO_get_data(b))->size());
  return 0;
}

int out_create(BIO* b) {
  BIO_set_init(b, 1);
  return 1;
}

const BIO_METHOD* out_method() {
  static BIO_METHOD* const m = [] {
    BIO_METHOD* m =
        BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "qnbd TLS records out");
    if (m) {
      BIO_meth_set_write(m, out_write);
      BIO_meth_set_ctrl(m, out_ctrl);
      BIO_meth_set_create(m, out_create);
    }
    return m;
  }();
  return m;
}

// The error of a failed SSL_* call, taken from OpenSSL's (per-thread) queue,
// which is left empty.
error_code ssl_failure(SSL* ssl, int ret, int saved_errno) {
  const int kind = SSL_get_error(ssl, ret);
  const unsigned long e = ERR_peek_last_error();
  ERR_clear_error();
  if (kind == SSL_ERROR_ZERO_RETURN) return boost::asio::error::eof;
  if (kind == SSL_ERROR_SSL && e && ERR_GET_REASON(e) != SSL_R_UNEXPECTED_EOF_WHILE_READING)
    return error_code(static_cast<int>(e), boost::asio::error::get_ssl_category());
  if (kind == SSL_ERROR_SYSCALL && saved_errno)
    return error_code(saved_errno, boost::system::system_category());
  return boost::asio::error::eof;
}

std::string subject_of(X509* cert) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), BIO_free);
  if (!bio || X509_NAME_print_ex(bio.get(), X509_get_subject_name(cert), 0, XN_FLAG_RFC2253) < 0)
    return {};
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(len));
}

}  // namespace

result<std::unique_ptr<TlsStream>> TlsStream::open(std::shared_ptr<const TlsCredentials> creds,
                                                   Socket& s) {
  error_code ec;
  s.non_blocking(true, ec);
  if (ec) return ec;
  std::unique_ptr<TlsStream> t(new TlsStream(std::move(creds)));
  t->staging_.reserve(kRecord);
  t->ssl_.reset(SSL_new(t->creds_->ctx.get()));
  if (!t->ssl_ || SSL_set_fd(t->ssl_.get(), s.native_handle()) != 1) {
    ERR_clear_error();
    return error_code(ENOMEM, boost::system::system_category());
  }
  if (!t->creds_->kernel_tls) {
    BIO* out = out_method() ? BIO_new(out_method()) : nullptr;
    if (!out) {
      ERR_clear_error();
      return error_code(ENOMEM, boost::system::system_category());
    }
    BIO_set_data(out, &t->out_);
    SSL_set0_wbio(t->ssl_.get(), out);
  }
  SSL_set_app_data(t->ssl_.get(), &t->summary_.psk_user);
  return t;
}

// Repeats `op` (an SSL_* call returning 1 on success and the byte count in
// its argument) until it succeeds or fails, waiting for the socket whenever
// OpenSSL wants to read or write.
template <class Op>
awaitable<std::pair<error_code, std::size_t>> TlsStream::drive(Socket& s, Op op) {
  for (;;) {
    ERR_clear_error();
    std::size_t n = 0;
    errno = 0;
    int ret = op(n);
    if (ret == 1) co_return std::pair{error_code{}, n};
    int saved = errno;
    int kind = SSL_get_error(ssl_.get(), ret);
    if (kind == SSL_ERROR_WANT_READ || kind == SSL_ERROR_WANT_WRITE) {
      ERR_clear_error();
      // The peer may be waiting for what this call wrote (a handshake
      // message) before it sends what OpenSSL wants to read.
      if (auto ec = co_await flush(s)) co_return std::pair{ec, std::size_t{0}};
      auto [ec] = co_await s.async_wait(
          kind == SSL_ERROR_WANT_READ ? Socket::wait_read : Socket::wait_write, use_tuple);
      if (ec) co_return std::pair{ec, std::size_t{0}};
      continue;
    }
    co_return std::pair{ssl_failure(ssl_.get(), ret, saved), std::size_t{0}};
  }
}

awaitable<error_code> TlsStream::accept(Socket& s) {
  SSL* ssl = ssl_.get();
  auto [ec, n] = co_await drive(s, [ssl](std::size_t&) { return SSL_accept(ssl); });
  if (ec) {
    send_alert();  // tells the client why
    co_return ec;
  }
  ec = co_await flush(s);
  if (!ec) summarise();
  co_return ec;
}

void TlsStream::summarise() {
  SSL* ssl = ssl_.get();
  summary_.version = SSL_get_version(ssl);
  summary_.cipher = SSL_get_cipher_name(ssl);
  if (X509* cert = SSL_get0_peer_certificate(ssl);
      cert && creds_->verify_peer && SSL_get_verify_result(ssl) == X509_V_OK)
    summary_.subject = subject_of(cert);
  summary_.kernel_send = BIO_get_ktls_send(SSL_get_wbio(ssl)) != 0;
  summary_.kernel_receive = BIO_get_ktls_recv(SSL_get_rbio(ssl)) != 0;
}

std::string TlsStream::failure_detail() const {
  long v = SSL_get_verify_result(ssl_.get());
  if (v == X509_V_OK) return {};
  return std::string("client certificate: ") + X509_verify_cert_error_string(v);
}

awaitable<std::tuple<error_code, std::size_t>> TlsStream::read_some(Socket& s,
                                                                    std::span<std::byte> out) {
  SSL* ssl = ssl_.get();
  auto r = co_await drive(
      s, [ssl, out](std::size_t& n) { return SSL_read_ex(ssl, out.data(), out.size(), &n); });
  if (r.first) {
    send_alert();
  } else if (auto ec = co_await flush(s)) {  // a read may answer the peer (a key update)
    r = {ec, 0};
  }
  co_return std::tuple{r.first, r.second};
}

awaitable<error_code> TlsStream::encrypt(Socket& s, const std::byte* p, std::size_t size) {
  SSL* ssl = ssl_.get();
  // Without partial writes, SSL_write_ex takes all of it (retried with the
  // same arguments after a wait, as OpenSSL requires, with kernel TLS).
  auto [ec, n] = co_await drive(
      s, [ssl, p, size](std::size_t& done) { return SSL_write_ex(ssl, p, size, &done); });
  if (!ec && out_.size() >= kFlushAt) ec = co_await flush(s);
  co_return ec;
}

// The reader and the writer both flush (a read may answer the peer), so
// one sends while the other adds: out_ and sending_ swap, and the flush in
// progress also sends what was added meanwhile, in order.
awaitable<error_code> TlsStream::flush(Socket& s) {
  if (flushing_) co_return error_code{};
  flushing_ = true;
  error_code ec;
  while (!ec && !out_.empty()) {
    sending_.swap(out_);
    auto [e, n] = co_await boost::asio::async_write(s, boost::asio::buffer(sending_), use_tuple);
    ec = e;
    sending_.clear();
  }
  flushing_ = false;
  if (sending_.capacity() > kKeepOut) std::vector<std::byte>().swap(sending_);
  co_return ec;
}

awaitable<error_code> TlsStream::write(Socket& s, std::span<const boost::asio::const_buffer> bufs) {
  staging_.clear();
  for (const auto& b : bufs) {
    auto* p = static_cast<const std::byte*>(b.data());
    std::size_t n = b.size();
    while (n) {
      if (staging_.empty() && n >= kRecord) {  // a large payload is encrypted in place
        std::size_t take = std::min(n, kFlushAt);
        if (auto ec = co_await encrypt(s, p, take)) co_return ec;
        p += take;
        n -= take;
        continue;
      }
      std::size_t take = std::min(n, kRecord - staging_.size());
      staging_.insert(staging_.end(), p, p + take);
      p += take;
      n -= take;
      if (staging_.size() == kRecord) {
        if (auto ec = co_await encrypt(s, staging_.data(), staging_.size())) co_return ec;
        staging_.clear();
      }
    }
  }
  if (!staging_.empty())
    if (auto ec = co_await encrypt(s, staging_.data(), staging_.size())) co_return ec;
  co_return co_await flush(s);
}

void TlsStream::send_alert() {
  // One try, never waiting: a connection that failed must not hang on a
  // peer that does not read. While a flush is sending, the alert stays in
  // out_ for it (sending now would cut into its records).
  if (out_.empty() || flushing_) return;
  [[maybe_unused]] auto sent =
      ::send(SSL_get_fd(ssl_.get()), out_.data(), out_.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  out_.clear();
}

void TlsStream::close_notify() {
  ERR_clear_error();
  if (SSL_is_init_finished(ssl_.get())) SSL_shutdown(ssl_.get());
  ERR_clear_error();
  send_alert();
}

}  // namespace qnbd::server
