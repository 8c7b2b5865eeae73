#include "server/handshake.h"

#include "server/authz.h"
#include "server/metrics.h"
#include "server/protocol.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <string_view>

namespace qnbd::server {
namespace {

using boost::asio::awaitable;
using namespace nbd;

// A client may try many options (libnbd's opt mode does), but not forever.
constexpr unsigned kMaxOptions = 256;
constexpr std::uint32_t kMaxPayloadSize = kMaxPayload;

enum class Step { next, done, close };

class Handshake {
 public:
  Handshake(Connection& conn, ExportRegistry& exports, const TlsContext* tls, Admission admit)
      : conn_(conn),
        exports_(exports),
        tls_(tls),
        admit_(std::move(admit)),
        who_(identify(conn.socket())) {}

  awaitable<std::optional<Negotiated>> run();

 private:
  awaitable<Step> option(std::uint32_t opt, std::span<const std::byte> data);
  awaitable<Step> opt_export_name(std::span<const std::byte> data);
  awaitable<Step> opt_list(std::uint32_t opt, std::span<const std::byte> data);
  awaitable<Step> opt_info_go(std::uint32_t opt, std::span<const std::byte> data);
  awaitable<Step> opt_structured_reply(std::uint32_t opt, std::span<const std::byte> data);
  awaitable<Step> opt_meta_context(std::uint32_t opt, std::span<const std::byte> data);
  awaitable<Step> opt_starttls(std::uint32_t opt, std::span<const std::byte> data);
  // TLS required but not in use: only STARTTLS and ABORT go further.
  bool tls_missing(std::uint32_t opt) const;
  awaitable<Step> refuse_plaintext(std::uint32_t opt);
  // The export `name` when it exists and this client may use it; a refusal
  // is logged when `log` is set.
  Export* find_permitted(std::string_view name, bool log = false);

  awaitable<bool> reply(std::uint32_t opt, std::uint32_t type, std::span<const std::byte> body);
  awaitable<bool> error(std::uint32_t opt, std::uint32_t type, std::string_view message);
  awaitable<bool> ack(std::uint32_t opt) { return reply(opt, NBD_REP_ACK, {}); }
  awaitable<bool> meta_context(std::uint32_t opt, std::string_view name, std::uint32_t id);
  awaitable<bool> info(std::uint32_t opt, const Export& e, std::uint16_t type);
  Negotiated finish(Export& e);
  bool admitted(const Export& e);

  Connection& conn_;
  ExportRegistry& exports_;
  const TlsContext* tls_;
  Admission admit_;
  PeerIdentity who_;
  bool no_zeroes_ = false;
  bool structured_ = false;
  // base:allocation selected by SET_META_CONTEXT, valid only for this export
  std::optional<std::string> meta_export_;
  bool meta_base_ = false;               // base:allocation among them
  std::vector<std::uint32_t> meta_ids_;  // other contexts selected with it
  std::optional<Negotiated> result_;
};

awaitable<bool> Handshake::reply(std::uint32_t opt, std::uint32_t type,
                                 std::span<const std::byte> body) {
  std::array<std::byte, kOptionReplyHeaderSize> head;
  encode_option_reply_header(head, opt, type, static_cast<std::uint32_t>(body.size()));
  std::array<boost::asio::const_buffer, 2> bufs{boost::asio::buffer(head),
                                                boost::asio::buffer(body.data(), body.size())};
  co_return !(co_await conn_.write_all(bufs));
}

awaitable<bool> Handshake::error(std::uint32_t opt, std::uint32_t type, std::string_view message) {
  // Error strings echo client input (export names): bound them well below
  // the 4096-byte limit (CVE-2020-10761).
  message = message.substr(0, 256);
  spdlog::debug("{}: option {} refused: {}", conn_.peer(), option_name(opt), message);
  co_return co_await reply(opt, type, std::as_bytes(std::span(message.data(), message.size())));
}

}  // namespace

std::uint16_t transmission_flags(const Export& e) {
  using namespace nbd;
  std::uint16_t f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_DF;
  const auto& c = e.caps;
  if (c.read_only) f |= NBD_FLAG_READ_ONLY;
  if (c.flush) f |= NBD_FLAG_SEND_FLUSH;
  if (c.fua) f |= NBD_FLAG_SEND_FUA;
  if (c.cache) f |= NBD_FLAG_SEND_CACHE;
  if (c.multi_conn) f |= NBD_FLAG_CAN_MULTI_CONN;
  if (!c.read_only) {
    if (c.trim) f |= NBD_FLAG_SEND_TRIM;
    if (c.write_zeroes) f |= NBD_FLAG_SEND_WRITE_ZEROES;
    if (c.write_zeroes && c.fast_zero) f |= NBD_FLAG_SEND_FAST_ZERO;
  }
  return f;
}

namespace {

awaitable<bool> Handshake::info(std::uint32_t opt, const Export& e, std::uint16_t type) {
  std::vector<std::byte> b(2);
  put16(b.data(), type);
  auto append = [&b](std::string_view s) {
    auto p = std::as_bytes(std::span(s.data(), s.size()));
    b.insert(b.end(), p.begin(), p.end());
  };
  switch (type) {
    case NBD_INFO_EXPORT:
      b.resize(12);
      put64(b.data() + 2, e.size);
      put16(b.data() + 10, transmission_flags(e));
      break;
    case NBD_INFO_NAME:
      append(e.name);
      break;
    case NBD_INFO_DESCRIPTION:
      append(e.description);
      break;
    case NBD_INFO_BLOCK_SIZE:
      b.resize(14);
      put32(b.data() + 2, e.caps.min_block);
      put32(b.data() + 6, std::max(e.caps.preferred_block, e.caps.min_block));
      put32(b.data() + 10, kMaxPayloadSize);
      break;
  }
  co_return co_await reply(opt, NBD_REP_INFO, b);
}

Negotiated Handshake::finish(Export& e) {
  Negotiated n;
  n.exp = &e;
  n.structured = structured_;
  const bool selected = structured_ && meta_export_ && *meta_export_ == e.name;
  n.base_allocation = selected && meta_base_;
  if (selected) n.contexts = meta_ids_;
  return n;
}

bool Handshake::admitted(const Export& e) {
  if (!admit_ || admit_()) return true;
  metrics::refusals().add(metrics::Refusal::max_connections);
  spdlog::warn("{}: refusing connection to export '{}': the server is full (max_connections)",
               conn_.peer(), e.name);
  return false;
}

awaitable<Step> Handshake::opt_export_name(std::span<const std::byte> data) {
  std::string_view name(reinterpret_cast<const char*>(data.data()), data.size());
  Export* e = exports_.find(name);
  if (e && !find_permitted(name, true)) co_return Step::close;
  if (!e) {  // EXPORT_NAME cannot fail gracefully: the spec says disconnect
    spdlog::info("{}: unknown export '{}' requested", conn_.peer(), name.substr(0, 256));
    co_return Step::close;
  }
  if (!admitted(*e)) co_return Step::close;
  std::array<std::byte, 10 + 124> out{};
  put64(out.data(), e->size);
  put16(out.data() + 8, transmission_flags(*e));
  std::size_t len = no_zeroes_ ? 10 : out.size();
  if (co_await conn_.write_all(std::span<const std::byte>(out.data(), len))) co_return Step::close;
  result_ = finish(*e);
  co_return Step::done;
}

awaitable<Step> Handshake::opt_list(std::uint32_t opt, std::span<const std::byte> data) {
  if (!data.empty())
    co_return co_await error(opt, NBD_REP_ERR_INVALID, "LIST takes no data") ? Step::next
                                                                             : Step::close;
  for (const auto& e : exports_.all()) {
    if (!find_permitted(e->name)) continue;  // not even its name is shown
    std::vector<std::byte> b(4);
    put32(b.data(), static_cast<std::uint32_t>(e->name.size()));
    auto n = std::as_bytes(std::span(e->name.data(), e->name.size()));
    auto d = std::as_bytes(std::span(e->description.data(), e->description.size()));
    b.insert(b.end(), n.begin(), n.end());
    b.insert(b.end(), d.begin(), d.end());
    if (!co_await reply(opt, NBD_REP_SERVER, b)) co_return Step::close;
  }
  co_return co_await ack(opt) ? Step::next : Step::close;
}

awaitable<Step> Handshake::opt_info_go(std::uint32_t opt, std::span<const std::byte> data) {
  auto req = parse_info_request(data);
  if (!req)
    co_return co_await error(opt, NBD_REP_ERR_INVALID, "malformed INFO/GO request") ? Step::next
                                                                                    : Step::close;
  Export* e = exports_.find(req->name);
  if (!e)
    co_return co_await error(opt, NBD_REP_ERR_UNKNOWN, "export '" + req->name + "' not found")
        ? Step::next
        : Step::close;
  if (!find_permitted(req->name, true))
    co_return co_await error(opt, NBD_REP_ERR_POLICY, "not allowed to use this export")
        ? Step::next
        : Step::close;
  auto wants = [&](std::uint16_t t) {
    return std::find(req->requests.begin(), req->requests.end(), t) != req->requests.end();
  };
  if (opt == NBD_OPT_GO && !admitted(*e)) co_return Step::close;
  // Block sizes are always sent (as qemu-nbd does) so clients learn the
  // 32 MiB maximum payload.
  if (!co_await info(opt, *e, NBD_INFO_EXPORT) || !co_await info(opt, *e, NBD_INFO_BLOCK_SIZE))
    co_return Step::close;
  if (wants(NBD_INFO_NAME) && !co_await info(opt, *e, NBD_INFO_NAME)) co_return Step::close;
  if (wants(NBD_INFO_DESCRIPTION) && !e->description.empty() &&
      !co_await info(opt, *e, NBD_INFO_DESCRIPTION))
    co_return Step::close;
  if (!co_await ack(opt)) co_return Step::close;
  if (opt == NBD_OPT_INFO) co_return Step::next;
  result_ = finish(*e);
  co_return Step::done;
}

awaitable<Step> Handshake::opt_structured_reply(std::uint32_t opt,
                                                std::span<const std::byte> data) {
  if (!data.empty())
    co_return co_await error(opt, NBD_REP_ERR_INVALID, "STRUCTURED_REPLY takes no data")
        ? Step::next
        : Step::close;
  if (structured_)
    co_return co_await error(opt, NBD_REP_ERR_INVALID, "structured replies already negotiated")
        ? Step::next
        : Step::close;
  structured_ = true;
  co_return co_await ack(opt) ? Step::next : Step::close;
}

awaitable<bool> Handshake::meta_context(std::uint32_t opt, std::string_view name,
                                        std::uint32_t id) {
  std::vector<std::byte> b(4);
  put32(b.data(), id);
  auto n = std::as_bytes(std::span(name.data(), name.size()));
  b.insert(b.end(), n.begin(), n.end());
  co_return co_await reply(opt, NBD_REP_META_CONTEXT, b);
}

awaitable<Step> Handshake::opt_meta_context(std::uint32_t opt, std::span<const std::byte> data) {
  const bool set = opt == NBD_OPT_SET_META_CONTEXT;
  auto req = parse_meta_context_request(data);
  if (!req)
    co_return co_await error(opt, NBD_REP_ERR_INVALID, "malformed meta context request")
        ? Step::next
        : Step::close;
  if (set) meta_export_.reset();  // SET replaces the previous selection, even on failure
  if (!structured_)
    co_return co_await error(opt, NBD_REP_ERR_INVALID, "structured replies not negotiated")
        ? Step::next
        : Step::close;
  if (!find_permitted(req->export_name))
    co_return co_await error(opt, NBD_REP_ERR_UNKNOWN,
                             "export '" + req->export_name + "' not found")
        ? Step::next
        : Step::close;
  // As qemu-nbd: LIST with no query, "base:" or "qemu:" (and
  // "qemu:dirty-bitmap:") lists every context of that namespace; SET takes
  // exact names only.
  const Export& exp = *exports_.find(req->export_name);
  auto wanted = [&](std::string_view name) {
    if (!set && req->queries.empty()) return true;
    for (const auto& q : req->queries) {
      if (q == name) return true;
      if (!set && (q == "base:" || q == "qemu:" || q == "qemu:dirty-bitmap:") &&
          name.starts_with(q))
        return true;
    }
    return false;
  };
  bool base = false;
  std::vector<std::uint32_t> ids;
  if (wanted(kBaseAllocation)) {
    if (!co_await meta_context(opt, kBaseAllocation, kBaseAllocationId)) co_return Step::close;
    base = true;
  }
  for (std::uint32_t i = 0; i < exp.contexts.size(); ++i) {
    if (!wanted(exp.contexts[i])) continue;
    if (!co_await meta_context(opt, exp.contexts[i], kBaseAllocationId + 1 + i))
      co_return Step::close;
    ids.push_back(i);
  }
  if (set && (base || !ids.empty())) {
    meta_export_ = req->export_name;
    meta_base_ = base;
    meta_ids_ = std::move(ids);
  }
  co_return co_await ack(opt) ? Step::next : Step::close;
}

Export* Handshake::find_permitted(std::string_view name, bool log) {
  Export* e = exports_.find(name);
  if (!e) return nullptr;
  std::string why = refusal(e->allow, who_);
  if (why.empty()) return e;
  if (log) {
    metrics::refusals().add(metrics::Refusal::policy);
    spdlog::info("{}: export '{}' refused: {}", conn_.peer(), e->name.substr(0, 256), why);
  }
  return nullptr;
}

bool Handshake::tls_missing(std::uint32_t opt) const {
  return tls_ && tls_->mode() == config::TlsMode::require && !conn_.tls() &&
         opt != NBD_OPT_STARTTLS && opt != NBD_OPT_ABORT;
}

awaitable<Step> Handshake::refuse_plaintext(std::uint32_t opt) {
  metrics::refusals().add(metrics::Refusal::tls_required);
  if (opt == NBD_OPT_EXPORT_NAME) {  // cannot carry an error: disconnect
    spdlog::info("{}: EXPORT_NAME without TLS, which this server requires; closing", conn_.peer());
    co_return Step::close;
  }
  co_return co_await error(opt, NBD_REP_ERR_TLS_REQD, "TLS is required (use STARTTLS)")
      ? Step::next
      : Step::close;
}

awaitable<Step> Handshake::opt_starttls(std::uint32_t opt, std::span<const std::byte> data) {
  const char* problem = !tls_           ? "TLS is not enabled on this server"
                        : conn_.tls()   ? "TLS is already in use"
                        : !data.empty() ? "STARTTLS takes no data"
                                        : nullptr;
  if (problem)
    co_return co_await error(opt, tls_ ? NBD_REP_ERR_INVALID : NBD_REP_ERR_UNSUP, problem)
        ? Step::next
        : Step::close;
  if (!co_await ack(opt)) co_return Step::close;
  if (auto ec = co_await conn_.start_tls(tls_->current())) {
    std::string detail = conn_.tls() ? conn_.tls()->failure_detail() : std::string();
    metrics::refusals().add(metrics::Refusal::tls_failed);
    spdlog::info("{}: TLS handshake failed: {}{}{}", conn_.peer(), ec.message(),
                 detail.empty() ? "" : "; ", detail);
    co_return Step::close;
  }
  const TlsSummary& t = conn_.tls()->summary();
  who_.dn = t.subject;
  who_.psk_user = t.psk_user;
  // Nothing negotiated in the clear carries over into the protected session.
  structured_ = false;
  meta_export_.reset();
  spdlog::debug("{}: {} {}{}{}; kernel TLS send {}, receive {}", conn_.peer(), t.version, t.cipher,
                t.subject.empty() ? "" : ", subject " + t.subject,
                t.psk_user.empty() ? "" : ", PSK user " + t.psk_user, t.kernel_send ? "on" : "off",
                t.kernel_receive ? "on" : "off");
  co_return Step::next;
}

awaitable<Step> Handshake::option(std::uint32_t opt, std::span<const std::byte> data) {
  switch (opt) {
    case NBD_OPT_EXPORT_NAME:
      return opt_export_name(data);
    case NBD_OPT_LIST:
      return opt_list(opt, data);
    case NBD_OPT_INFO:
    case NBD_OPT_GO:
      return opt_info_go(opt, data);
    case NBD_OPT_STRUCTURED_REPLY:
      return opt_structured_reply(opt, data);
    case NBD_OPT_LIST_META_CONTEXT:
    case NBD_OPT_SET_META_CONTEXT:
      return opt_meta_context(opt, data);
    case NBD_OPT_STARTTLS:
      return opt_starttls(opt, data);
    default:
      break;
  }
  return [](Handshake* self, std::uint32_t o) -> awaitable<Step> {
    if (o == NBD_OPT_ABORT) {
      co_await self->ack(o);  // the client may already be gone; nothing to do then
      co_return Step::close;
    }
    co_return co_await self->error(o, NBD_REP_ERR_UNSUP, "option not supported") ? Step::next
                                                                                 : Step::close;
  }(this, opt);
}

awaitable<std::optional<Negotiated>> Handshake::run() {
  std::array<std::byte, 18> hello;
  put64(hello.data(), NBDMAGIC);
  put64(hello.data() + 8, IHAVEOPT);
  put16(hello.data() + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
  if (co_await conn_.write_all(std::span<const std::byte>(hello))) co_return std::nullopt;

  std::array<std::byte, 4> cflags_raw;
  if (co_await conn_.read_exact(cflags_raw)) co_return std::nullopt;
  const std::uint32_t cflags = get32(cflags_raw.data());
  if (cflags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) {
    spdlog::info("{}: unknown client flags {:#x}", conn_.peer(), cflags);
    co_return std::nullopt;
  }
  no_zeroes_ = cflags & NBD_FLAG_C_NO_ZEROES;

  std::vector<std::byte> data;
  for (unsigned n = 0; n < kMaxOptions; ++n) {
    std::array<std::byte, kOptionHeaderSize> raw;
    if (co_await conn_.read_exact(raw)) co_return std::nullopt;
    auto head = decode_option_header(raw);
    if (!head) {
      spdlog::info("{}: bad option magic, closing", conn_.peer());
      co_return std::nullopt;
    }
    if (head->length > kMaxOptionLength) {  // do not read gigabytes (CVE-2017-15119)
      spdlog::info("{}: option length {} too large, closing", conn_.peer(), head->length);
      co_return std::nullopt;
    }
    data.resize(head->length);
    if (co_await conn_.read_exact(data)) co_return std::nullopt;
    // Two statements: GCC 12 miscompiles co_await on a conditional expression.
    Step s = Step::close;
    if (tls_missing(head->option))
      s = co_await refuse_plaintext(head->option);
    else
      s = co_await option(head->option, data);
    if (s == Step::close) co_return std::nullopt;
    if (s == Step::done) co_return result_;
  }
  spdlog::info("{}: too many options, closing", conn_.peer());
  co_return std::nullopt;
}

}  // namespace

awaitable<std::optional<Negotiated>> negotiate(Connection& conn, ExportRegistry& exports,
                                               const TlsContext* tls, Admission admit) {
  Handshake h(conn, exports, tls, std::move(admit));
  co_return co_await h.run();
}

}  // namespace qnbd::server
