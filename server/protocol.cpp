#include "server/protocol.h"

#include "backend/block_backend.h"

#include <bit>
#include <cerrno>
#include <cstring>

namespace qnbd::nbd {

// Network byte order through one load or store each (GCC does not merge the
// byte-wise form everywhere; these run for every request and reply).
namespace {
template <class T>
T to_big(T v) {
  if constexpr (std::endian::native == std::endian::little) {
    if constexpr (sizeof(T) == 2) return T(__builtin_bswap16(v));
    if constexpr (sizeof(T) == 4) return T(__builtin_bswap32(v));
    if constexpr (sizeof(T) == 8) return T(__builtin_bswap64(v));
  }
  return v;
}
template <class T>
void put_big(std::byte* p, T v) {
  v = to_big(v);
  std::memcpy(p, &v, sizeof v);
}
template <class T>
T get_big(const std::byte* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return to_big(v);
}
}  // namespace

void put16(std::byte* p, std::uint16_t v) { put_big(p, v); }
void put32(std::byte* p, std::uint32_t v) { put_big(p, v); }
void put64(std::byte* p, std::uint64_t v) { put_big(p, v); }
std::uint16_t get16(const std::byte* p) { return get_big<std::uint16_t>(p); }
std::uint32_t get32(const std::byte* p) { return get_big<std::uint32_t>(p); }
std::uint64_t get64(const std::byte* p) { return get_big<std::uint64_t>(p); }

std::optional<Request> decode_request(std::span<const std::byte, kRequestSize> in) {
  if (get32(in.data()) != NBD_REQUEST_MAGIC) return std::nullopt;
  Request r;
  r.flags = get16(in.data() + 4);
  r.type = get16(in.data() + 6);
  r.cookie = get64(in.data() + 8);
  r.offset = get64(in.data() + 16);
  r.length = get32(in.data() + 24);
  return r;
}

void encode_request(const Request& r, std::span<std::byte, kRequestSize> out) {
  put32(out.data(), NBD_REQUEST_MAGIC);
  put16(out.data() + 4, r.flags);
  put16(out.data() + 6, r.type);
  put64(out.data() + 8, r.cookie);
  put64(out.data() + 16, r.offset);
  put32(out.data() + 24, r.length);
}

void encode_simple_reply(std::span<std::byte, kSimpleReplySize> out, std::uint32_t error,
                         std::uint64_t cookie) {
  put32(out.data(), NBD_SIMPLE_REPLY_MAGIC);
  put32(out.data() + 4, error);
  put64(out.data() + 8, cookie);
}

void encode_chunk_header(std::span<std::byte, kChunkHeaderSize> out, std::uint16_t flags,
                         std::uint16_t type, std::uint64_t cookie, std::uint32_t length) {
  put32(out.data(), NBD_STRUCTURED_REPLY_MAGIC);
  put16(out.data() + 4, flags);
  put16(out.data() + 6, type);
  put64(out.data() + 8, cookie);
  put32(out.data() + 16, length);
}

std::optional<OptionHeader> decode_option_header(std::span<const std::byte, kOptionHeaderSize> in) {
  if (get64(in.data()) != IHAVEOPT) return std::nullopt;
  return OptionHeader{get32(in.data() + 8), get32(in.data() + 12)};
}

void encode_option_reply_header(std::span<std::byte, kOptionReplyHeaderSize> out,
                                std::uint32_t option, std::uint32_t type, std::uint32_t length) {
  put64(out.data(), NBD_REP_MAGIC);
  put32(out.data() + 8, option);
  put32(out.data() + 12, type);
  put32(out.data() + 16, length);
}

namespace {

// A bounds-checked cursor: every read fails cleanly past the end.
class Cursor {
 public:
  explicit Cursor(std::span<const std::byte> in) : in_(in) {}
  bool u16(std::uint16_t& v) {
    return take(2, [&](auto p) { v = get16(p); });
  }
  bool u32(std::uint32_t& v) {
    return take(4, [&](auto p) { v = get32(p); });
  }
  bool str(std::size_t n, std::string& s) {
    if (n > NBD_MAX_STRING) return false;
    return take(n, [&](auto p) { s.assign(reinterpret_cast<const char*>(p), n); });
  }
  bool at_end() const { return pos_ == in_.size(); }

 private:
  template <class F>
  bool take(std::size_t n, F f) {
    if (in_.size() - pos_ < n) return false;
    f(in_.data() + pos_);
    pos_ += n;
    return true;
  }
  std::span<const std::byte> in_;
  std::size_t pos_ = 0;
};

}  // namespace

std::optional<InfoRequest> parse_info_request(std::span<const std::byte> in) {
  Cursor c(in);
  InfoRequest r;
  std::uint32_t namelen;
  std::uint16_t n;
  if (!c.u32(namelen) || !c.str(namelen, r.name) || !c.u16(n)) return std::nullopt;
  r.requests.resize(n);
  for (auto& q : r.requests)
    if (!c.u16(q)) return std::nullopt;
  if (!c.at_end()) return std::nullopt;
  return r;
}

std::optional<MetaContextRequest> parse_meta_context_request(std::span<const std::byte> in) {
  Cursor c(in);
  MetaContextRequest r;
  std::uint32_t namelen, n;
  if (!c.u32(namelen) || !c.str(namelen, r.export_name) || !c.u32(n)) return std::nullopt;
  // Each query needs at least its 4-byte length: reject counts the payload cannot hold
  // before reserving anything.
  if (n > in.size() / 4) return std::nullopt;
  r.queries.resize(n);
  for (auto& q : r.queries) {
    std::uint32_t len;
    if (!c.u32(len) || !c.str(len, q)) return std::nullopt;
  }
  if (!c.at_end()) return std::nullopt;
  return r;
}

namespace {

constexpr std::uint16_t allowed_flags(std::uint16_t type) {
  switch (type) {
    case NBD_CMD_READ:
      return NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_DF;
    case NBD_CMD_WRITE:
      return NBD_CMD_FLAG_FUA;
    case NBD_CMD_WRITE_ZEROES:
      return NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO;
    case NBD_CMD_BLOCK_STATUS:
      return NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_REQ_ONE;
    default:
      return NBD_CMD_FLAG_FUA;
  }
}

bool is_write(std::uint16_t type) {
  return type == NBD_CMD_WRITE || type == NBD_CMD_WRITE_ZEROES || type == NBD_CMD_TRIM;
}

}  // namespace

Verdict validate_request(const Request& r, const ExportLimits& lim) {
  switch (r.type) {
    case NBD_CMD_READ:
    case NBD_CMD_WRITE:
    case NBD_CMD_FLUSH:
    case NBD_CMD_DISC:
      break;
    case NBD_CMD_TRIM:
      if (!lim.can_trim) return {NBD_EINVAL, "TRIM was not advertised"};
      break;
    case NBD_CMD_WRITE_ZEROES:
      if (!lim.can_zero) return {NBD_EINVAL, "WRITE_ZEROES was not advertised"};
      break;
    case NBD_CMD_CACHE:
      if (!lim.can_cache) return {NBD_EINVAL, "CACHE was not advertised"};
      break;
    case NBD_CMD_BLOCK_STATUS:
      if (!lim.base_allocation) return {NBD_EINVAL, "no metadata context was negotiated"};
      if (r.length == 0) return {NBD_EINVAL, "zero-length BLOCK_STATUS"};
      break;
    default:
      return {NBD_EINVAL, "unknown command"};
  }
  if (r.flags & ~allowed_flags(r.type)) return {NBD_EINVAL, "flag not valid for this command"};
  if ((r.flags & NBD_CMD_FLAG_DF) && !lim.structured)
    return {NBD_EINVAL, "DF without structured replies"};
  if ((r.flags & NBD_CMD_FLAG_FAST_ZERO) && !lim.can_fast_zero)
    return {NBD_EINVAL, "FAST_ZERO was not advertised"};
  if (r.type == NBD_CMD_FLUSH || r.type == NBD_CMD_DISC) return {};
  if (is_write(r.type) && lim.read_only) return {NBD_EPERM, "the export is read-only"};
  if ((r.type == NBD_CMD_READ || r.type == NBD_CMD_WRITE) && r.length > kMaxPayload)
    return {NBD_EINVAL, "length exceeds the maximum payload"};
  if (!range_fits(r.offset, r.length, lim.size))
    return {(r.type == NBD_CMD_WRITE || r.type == NBD_CMD_WRITE_ZEROES) ? NBD_ENOSPC : NBD_EINVAL,
            "offset and length are past the end of the export"};
  if (lim.min_block > 1 && (r.offset % lim.min_block || r.length % lim.min_block))
    return {NBD_EINVAL, "offset or length not a multiple of the minimum block size"};
  return {};
}

std::uint32_t errno_to_nbd(int err) {
  switch (err) {
    case 0:
      return 0;
    case EPERM:
    case EROFS:
      return NBD_EPERM;
    case EIO:
      return NBD_EIO;
    case ENOMEM:
      return NBD_ENOMEM;
    case EINVAL:
      return NBD_EINVAL;
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
      return NBD_ENOSPC;
    case EOVERFLOW:
      return NBD_EOVERFLOW;
    case ENOTSUP:
      return NBD_ENOTSUP;
    case ESHUTDOWN:
      return NBD_ESHUTDOWN;
    default:
      return NBD_EIO;
  }
}

const char* command_name(std::uint16_t type) {
  switch (type) {
    case NBD_CMD_READ:
      return "READ";
    case NBD_CMD_WRITE:
      return "WRITE";
    case NBD_CMD_DISC:
      return "DISC";
    case NBD_CMD_FLUSH:
      return "FLUSH";
    case NBD_CMD_TRIM:
      return "TRIM";
    case NBD_CMD_CACHE:
      return "CACHE";
    case NBD_CMD_WRITE_ZEROES:
      return "WRITE_ZEROES";
    case NBD_CMD_BLOCK_STATUS:
      return "BLOCK_STATUS";
    default:
      return "UNKNOWN";
  }
}

const char* option_name(std::uint32_t option) {
  switch (option) {
    case NBD_OPT_EXPORT_NAME:
      return "EXPORT_NAME";
    case NBD_OPT_ABORT:
      return "ABORT";
    case NBD_OPT_LIST:
      return "LIST";
    case NBD_OPT_STARTTLS:
      return "STARTTLS";
    case NBD_OPT_INFO:
      return "INFO";
    case NBD_OPT_GO:
      return "GO";
    case NBD_OPT_STRUCTURED_REPLY:
      return "STRUCTURED_REPLY";
    case NBD_OPT_LIST_META_CONTEXT:
      return "LIST_META_CONTEXT";
    case NBD_OPT_SET_META_CONTEXT:
      return "SET_META_CONTEXT";
    default:
      return "UNKNOWN";
  }
}

}  // namespace qnbd::nbd
