// libFuzzer target for the pure NBD wire codec (server/protocol.h).
//
// Input: one selector byte, then the bytes the chosen codec sees:
//   0  28-byte request header (+ ExportLimits bytes): decode_request,
//      encode round trip, validate_request against fuzzed limits
//   1  16-byte option header: decode_option_header and its round trip
//   2  NBD_OPT_INFO/GO payload: parse_info_request and its round trip
//   3  NBD_OPT_{LIST,SET}_META_CONTEXT payload: parse_meta_context_request
//   4  reply encoders and errno mapping with fuzzed values
// Every decoder must either refuse the bytes or return a value that encodes
// back to exactly those bytes and respects the spec's limits; a request
// that validate_request accepts must be safe to execute.
#include "tests/fuzz/fuzz_check.h"
#include "server/protocol.h"

#include "tests/fuzz/data_provider.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

using namespace qnbd::nbd;

std::span<const std::byte> as_bytes(const std::uint8_t* data, std::size_t size) {
  return {reinterpret_cast<const std::byte*>(data), size};
}

bool same(std::span<const std::byte> a, std::span<const std::byte> b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size()) == 0);
}

void append32(std::vector<std::byte>& v, std::uint32_t x) {
  std::byte b[4];
  put32(b, x);
  v.insert(v.end(), b, b + 4);
}
void append16(std::vector<std::byte>& v, std::uint16_t x) {
  std::byte b[2];
  put16(b, x);
  v.insert(v.end(), b, b + 2);
}
void append_str(std::vector<std::byte>& v, const std::string& s) {
  const auto* p = reinterpret_cast<const std::byte*>(s.data());
  v.insert(v.end(), p, p + s.size());
}

bool is_data_command(std::uint16_t type) { return type != NBD_CMD_FLUSH && type != NBD_CMD_DISC; }

std::uint16_t permitted_flags(std::uint16_t type) {
  std::uint16_t f = NBD_CMD_FLAG_FUA;
  if (type == NBD_CMD_READ) f |= NBD_CMD_FLAG_DF;
  if (type == NBD_CMD_WRITE_ZEROES) f |= NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO;
  if (type == NBD_CMD_BLOCK_STATUS) f |= NBD_CMD_FLAG_REQ_ONE;
  return f;
}

ExportLimits fuzzed_limits(FuzzedDataProvider& in) {
  ExportLimits lim;
  // Sizes near 0, near the request's range and near 2^64 all matter.
  switch (in.ConsumeIntegralInRange<int>(0, 2)) {
    case 0:
      lim.size = in.ConsumeIntegralInRange<std::uint64_t>(0, 1u << 20);
      break;
    case 1:
      lim.size = ~0ull - in.ConsumeIntegralInRange<std::uint64_t>(0, 1u << 20);
      break;
    default:
      lim.size = in.ConsumeIntegral<std::uint64_t>();
      break;
  }
  lim.read_only = in.ConsumeBool();
  lim.structured = in.ConsumeBool();
  lim.base_allocation = in.ConsumeBool();
  lim.can_trim = in.ConsumeBool();
  lim.can_zero = in.ConsumeBool();
  lim.can_cache = in.ConsumeBool();
  lim.can_fast_zero = in.ConsumeBool();
  lim.min_block = in.ConsumeBool() ? 1u << in.ConsumeIntegralInRange<unsigned>(0, 16)
                                   : in.ConsumeIntegral<std::uint32_t>();
  return lim;
}

// What validate_request promises the session when it returns 0.
void check_accepted(const Request& r, const ExportLimits& lim) {
  switch (r.type) {
    case NBD_CMD_READ:
    case NBD_CMD_WRITE:
    case NBD_CMD_FLUSH:
    case NBD_CMD_DISC:
      break;
    case NBD_CMD_TRIM:
      FUZZ_CHECK(lim.can_trim);
      break;
    case NBD_CMD_WRITE_ZEROES:
      FUZZ_CHECK(lim.can_zero);
      break;
    case NBD_CMD_CACHE:
      FUZZ_CHECK(lim.can_cache);
      break;
    case NBD_CMD_BLOCK_STATUS:
      FUZZ_CHECK(lim.base_allocation);
      FUZZ_CHECK(r.length != 0);
      break;
    default:
      FUZZ_CHECK(!"unknown command accepted");
  }
  FUZZ_CHECK((r.flags & ~permitted_flags(r.type)) == 0);
  if (r.flags & NBD_CMD_FLAG_DF) FUZZ_CHECK(lim.structured);
  if (r.flags & NBD_CMD_FLAG_FAST_ZERO) FUZZ_CHECK(lim.can_fast_zero);
  if (!is_data_command(r.type)) return;
  const bool writes =
      r.type == NBD_CMD_WRITE || r.type == NBD_CMD_WRITE_ZEROES || r.type == NBD_CMD_TRIM;
  if (writes) FUZZ_CHECK(!lim.read_only);
  // The session allocates this many bytes for READ/WRITE payloads.
  if (r.type == NBD_CMD_READ || r.type == NBD_CMD_WRITE) FUZZ_CHECK(r.length <= kMaxPayload);
  // In bounds, computed without wrap-around.
  FUZZ_CHECK(r.offset <= lim.size);
  FUZZ_CHECK(r.length <= lim.size - r.offset);
  FUZZ_CHECK(r.offset + r.length >= r.offset);
  if (lim.min_block > 1) {
    FUZZ_CHECK(r.offset % lim.min_block == 0);
    FUZZ_CHECK(r.length % lim.min_block == 0);
  }
}

void fuzz_request(FuzzedDataProvider& in) {
  std::array<std::byte, kRequestSize> wire{};
  const auto raw = in.ConsumeBytes<std::uint8_t>(kRequestSize);
  std::copy(raw.begin(), raw.end(), reinterpret_cast<std::uint8_t*>(wire.data()));
  const auto req = decode_request(wire);
  FUZZ_CHECK(req.has_value() == (get32(wire.data()) == NBD_REQUEST_MAGIC));
  if (!req) return;
  std::array<std::byte, kRequestSize> again{};
  encode_request(*req, again);
  FUZZ_CHECK(again == wire);

  const ExportLimits lim = fuzzed_limits(in);
  const Verdict verdict = validate_request(*req, lim);
  const std::uint32_t err = verdict.error;
  FUZZ_CHECK(err == 0 || *verdict.reason != '\0');
  FUZZ_CHECK(err == 0 || err == NBD_EINVAL || err == NBD_EPERM || err == NBD_ENOSPC ||
             err == NBD_EOVERFLOW);
  if (err == 0) check_accepted(*req, lim);
  // Past the end is never accepted, whatever else is wrong with the request.
  if (is_data_command(req->type) &&
      (req->offset > lim.size || req->length > lim.size - req->offset))
    FUZZ_CHECK(err != 0);
  (void)command_name(req->type);
}

void fuzz_option_header(std::span<const std::byte> in) {
  std::array<std::byte, kOptionHeaderSize> wire{};
  std::copy_n(in.begin(), std::min(in.size(), wire.size()), wire.begin());
  const auto h = decode_option_header(wire);
  FUZZ_CHECK(h.has_value() == (get64(wire.data()) == IHAVEOPT));
  if (!h) return;
  std::array<std::byte, kOptionHeaderSize> again{};
  put64(again.data(), IHAVEOPT);
  put32(again.data() + 8, h->option);
  put32(again.data() + 12, h->length);
  FUZZ_CHECK(again == wire);
  FUZZ_CHECK(option_name(h->option) != nullptr);
}

void fuzz_info_request(std::span<const std::byte> in) {
  const auto r = parse_info_request(in);
  if (!r) return;
  FUZZ_CHECK(r->name.size() <= NBD_MAX_STRING);
  FUZZ_CHECK(r->requests.size() <= 0xffff);
  std::vector<std::byte> again;
  append32(again, static_cast<std::uint32_t>(r->name.size()));
  append_str(again, r->name);
  append16(again, static_cast<std::uint16_t>(r->requests.size()));
  for (auto q : r->requests) append16(again, q);
  FUZZ_CHECK(same(again, in));
}

void fuzz_meta_context_request(std::span<const std::byte> in) {
  const auto r = parse_meta_context_request(in);
  if (!r) return;
  FUZZ_CHECK(r->export_name.size() <= NBD_MAX_STRING);
  std::vector<std::byte> again;
  append32(again, static_cast<std::uint32_t>(r->export_name.size()));
  append_str(again, r->export_name);
  append32(again, static_cast<std::uint32_t>(r->queries.size()));
  for (const auto& q : r->queries) {
    FUZZ_CHECK(q.size() <= NBD_MAX_STRING);
    append32(again, static_cast<std::uint32_t>(q.size()));
    append_str(again, q);
  }
  FUZZ_CHECK(same(again, in));
}

void fuzz_encoders(FuzzedDataProvider& in) {
  const auto error = in.ConsumeIntegral<std::uint32_t>();
  const auto cookie = in.ConsumeIntegral<std::uint64_t>();
  const auto flags = in.ConsumeIntegral<std::uint16_t>();
  const auto type = in.ConsumeIntegral<std::uint16_t>();
  const auto length = in.ConsumeIntegral<std::uint32_t>();
  const auto option = in.ConsumeIntegral<std::uint32_t>();

  std::array<std::byte, kSimpleReplySize> simple{};
  encode_simple_reply(simple, error, cookie);
  FUZZ_CHECK(get32(simple.data()) == NBD_SIMPLE_REPLY_MAGIC);
  FUZZ_CHECK(get32(simple.data() + 4) == error);
  FUZZ_CHECK(get64(simple.data() + 8) == cookie);

  std::array<std::byte, kChunkHeaderSize> chunk{};
  encode_chunk_header(chunk, flags, type, cookie, length);
  FUZZ_CHECK(get32(chunk.data()) == NBD_STRUCTURED_REPLY_MAGIC);
  FUZZ_CHECK(get16(chunk.data() + 4) == flags && get16(chunk.data() + 6) == type);
  FUZZ_CHECK(get64(chunk.data() + 8) == cookie && get32(chunk.data() + 16) == length);

  std::array<std::byte, kOptionReplyHeaderSize> rep{};
  encode_option_reply_header(rep, option, error, length);
  FUZZ_CHECK(get64(rep.data()) == NBD_REP_MAGIC);
  FUZZ_CHECK(get32(rep.data() + 8) == option && get32(rep.data() + 12) == error);
  FUZZ_CHECK(get32(rep.data() + 16) == length);

  // Every errno maps to a value the spec defines (unknown ones to EIO).
  const std::uint32_t nbd = errno_to_nbd(static_cast<int>(error));
  FUZZ_CHECK(nbd == 0 || nbd == NBD_EPERM || nbd == NBD_EIO || nbd == NBD_ENOMEM ||
             nbd == NBD_EINVAL || nbd == NBD_ENOSPC || nbd == NBD_EOVERFLOW || nbd == NBD_ENOTSUP ||
             nbd == NBD_ESHUTDOWN);
  FUZZ_CHECK((nbd == 0) == (error == 0));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::uint8_t mode = data[0];
  const auto body = as_bytes(data + 1, size - 1);
  FuzzedDataProvider in(data + 1, size - 1);
  switch (mode % 5) {
    case 0:
      fuzz_request(in);
      break;
    case 1:
      fuzz_option_header(body);
      break;
    case 2:
      fuzz_info_request(body);
      break;
    case 3:
      fuzz_meta_context_request(body);
      break;
    default:
      fuzz_encoders(in);
      break;
  }
  return 0;
}
