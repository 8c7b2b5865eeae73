// NBD wire format (NetworkBlockDevice/nbd doc/proto.md): constants named as
// the spec names them, and pure encode/decode over byte spans. No I/O here,
// so everything is unit-tested and fuzzable.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace qnbd::nbd {

// Magics
inline constexpr std::uint64_t NBDMAGIC = 0x4e42444d41474943ULL;
inline constexpr std::uint64_t IHAVEOPT = 0x49484156454F5054ULL;
inline constexpr std::uint64_t NBD_REP_MAGIC = 0x3e889045565a9ULL;
inline constexpr std::uint32_t NBD_REQUEST_MAGIC = 0x25609513;
inline constexpr std::uint32_t NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
inline constexpr std::uint32_t NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;

// Handshake flags (server) and client flags
inline constexpr std::uint16_t NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
inline constexpr std::uint16_t NBD_FLAG_NO_ZEROES = 1 << 1;
inline constexpr std::uint32_t NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
inline constexpr std::uint32_t NBD_FLAG_C_NO_ZEROES = 1 << 1;

// Transmission flags
inline constexpr std::uint16_t NBD_FLAG_HAS_FLAGS = 1 << 0;
inline constexpr std::uint16_t NBD_FLAG_READ_ONLY = 1 << 1;
inline constexpr std::uint16_t NBD_FLAG_SEND_FLUSH = 1 << 2;
inline constexpr std::uint16_t NBD_FLAG_SEND_FUA = 1 << 3;
inline constexpr std::uint16_t NBD_FLAG_ROTATIONAL = 1 << 4;
inline constexpr std::uint16_t NBD_FLAG_SEND_TRIM = 1 << 5;
inline constexpr std::uint16_t NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
inline constexpr std::uint16_t NBD_FLAG_SEND_DF = 1 << 7;
inline constexpr std::uint16_t NBD_FLAG_CAN_MULTI_CONN = 1 << 8;
inline constexpr std::uint16_t NBD_FLAG_SEND_CACHE = 1 << 10;
inline constexpr std::uint16_t NBD_FLAG_SEND_FAST_ZERO = 1 << 11;

// Options
inline constexpr std::uint32_t NBD_OPT_EXPORT_NAME = 1;
inline constexpr std::uint32_t NBD_OPT_ABORT = 2;
inline constexpr std::uint32_t NBD_OPT_LIST = 3;
inline constexpr std::uint32_t NBD_OPT_STARTTLS = 5;
inline constexpr std::uint32_t NBD_OPT_INFO = 6;
inline constexpr std::uint32_t NBD_OPT_GO = 7;
inline constexpr std::uint32_t NBD_OPT_STRUCTURED_REPLY = 8;
inline constexpr std::uint32_t NBD_OPT_LIST_META_CONTEXT = 9;
inline constexpr std::uint32_t NBD_OPT_SET_META_CONTEXT = 10;

// Option replies
inline constexpr std::uint32_t NBD_REP_ACK = 1;
inline constexpr std::uint32_t NBD_REP_SERVER = 2;
inline constexpr std::uint32_t NBD_REP_INFO = 3;
inline constexpr std::uint32_t NBD_REP_META_CONTEXT = 4;
inline constexpr std::uint32_t NBD_REP_ERR_UNSUP = 0x80000001;
inline constexpr std::uint32_t NBD_REP_ERR_POLICY = 0x80000002;
inline constexpr std::uint32_t NBD_REP_ERR_INVALID = 0x80000003;
inline constexpr std::uint32_t NBD_REP_ERR_PLATFORM = 0x80000004;
inline constexpr std::uint32_t NBD_REP_ERR_TLS_REQD = 0x80000005;
inline constexpr std::uint32_t NBD_REP_ERR_UNKNOWN = 0x80000006;
inline constexpr std::uint32_t NBD_REP_ERR_SHUTDOWN = 0x80000007;
inline constexpr std::uint32_t NBD_REP_ERR_BLOCK_SIZE_REQD = 0x80000008;
inline constexpr std::uint32_t NBD_REP_ERR_TOO_BIG = 0x80000009;

// Info types
inline constexpr std::uint16_t NBD_INFO_EXPORT = 0;
inline constexpr std::uint16_t NBD_INFO_NAME = 1;
inline constexpr std::uint16_t NBD_INFO_DESCRIPTION = 2;
inline constexpr std::uint16_t NBD_INFO_BLOCK_SIZE = 3;

// Commands and command flags
inline constexpr std::uint16_t NBD_CMD_READ = 0;
inline constexpr std::uint16_t NBD_CMD_WRITE = 1;
inline constexpr std::uint16_t NBD_CMD_DISC = 2;
inline constexpr std::uint16_t NBD_CMD_FLUSH = 3;
inline constexpr std::uint16_t NBD_CMD_TRIM = 4;
inline constexpr std::uint16_t NBD_CMD_CACHE = 5;
inline constexpr std::uint16_t NBD_CMD_WRITE_ZEROES = 6;
inline constexpr std::uint16_t NBD_CMD_BLOCK_STATUS = 7;
inline constexpr std::uint16_t NBD_CMD_FLAG_FUA = 1 << 0;
inline constexpr std::uint16_t NBD_CMD_FLAG_NO_HOLE = 1 << 1;
inline constexpr std::uint16_t NBD_CMD_FLAG_DF = 1 << 2;
inline constexpr std::uint16_t NBD_CMD_FLAG_REQ_ONE = 1 << 3;
inline constexpr std::uint16_t NBD_CMD_FLAG_FAST_ZERO = 1 << 4;

// Structured reply flags and chunk types
inline constexpr std::uint16_t NBD_REPLY_FLAG_DONE = 1 << 0;
inline constexpr std::uint16_t NBD_REPLY_TYPE_NONE = 0;
inline constexpr std::uint16_t NBD_REPLY_TYPE_OFFSET_DATA = 1;
inline constexpr std::uint16_t NBD_REPLY_TYPE_OFFSET_HOLE = 2;
inline constexpr std::uint16_t NBD_REPLY_TYPE_BLOCK_STATUS = 5;
inline constexpr std::uint16_t NBD_REPLY_TYPE_ERROR = 0x8001;
inline constexpr std::uint16_t NBD_REPLY_TYPE_ERROR_OFFSET = 0x8002;

// Errors on the wire
inline constexpr std::uint32_t NBD_EPERM = 1;
inline constexpr std::uint32_t NBD_EIO = 5;
inline constexpr std::uint32_t NBD_ENOMEM = 12;
inline constexpr std::uint32_t NBD_EINVAL = 22;
inline constexpr std::uint32_t NBD_ENOSPC = 28;
inline constexpr std::uint32_t NBD_EOVERFLOW = 75;
inline constexpr std::uint32_t NBD_ENOTSUP = 95;
inline constexpr std::uint32_t NBD_ESHUTDOWN = 108;

// base:allocation
inline constexpr std::uint32_t NBD_STATE_HOLE = 1 << 0;
inline constexpr std::uint32_t NBD_STATE_ZERO = 1 << 1;
inline constexpr const char* kBaseAllocation = "base:allocation";
inline constexpr std::uint32_t kBaseAllocationId = 1;

// Limits. Strings MUST be <= 4096 bytes; 32 MiB payloads must be accepted.
inline constexpr std::size_t NBD_MAX_STRING = 4096;
inline constexpr std::uint32_t kMaxPayload = 32u << 20;
inline constexpr std::uint32_t kMaxOptionLength = 64u << 10;

inline constexpr std::size_t kRequestSize = 28;
inline constexpr std::size_t kSimpleReplySize = 16;
inline constexpr std::size_t kChunkHeaderSize = 20;
inline constexpr std::size_t kOptionHeaderSize = 16;
inline constexpr std::size_t kOptionReplyHeaderSize = 20;

// Big-endian helpers over spans (callers guarantee the size).
void put16(std::byte* p, std::uint16_t v);
void put32(std::byte* p, std::uint32_t v);
void put64(std::byte* p, std::uint64_t v);
std::uint16_t get16(const std::byte* p);
std::uint32_t get32(const std::byte* p);
std::uint64_t get64(const std::byte* p);

struct Request {
  std::uint16_t flags = 0;
  std::uint16_t type = 0;
  std::uint64_t cookie = 0;
  std::uint64_t offset = 0;
  std::uint32_t length = 0;
};

// nullopt when the magic is wrong (a protocol violation: close the connection).
std::optional<Request> decode_request(std::span<const std::byte, kRequestSize> in);
void encode_request(const Request& r, std::span<std::byte, kRequestSize> out);

void encode_simple_reply(std::span<std::byte, kSimpleReplySize> out, std::uint32_t error,
                         std::uint64_t cookie);
void encode_chunk_header(std::span<std::byte, kChunkHeaderSize> out, std::uint16_t flags,
                         std::uint16_t type, std::uint64_t cookie, std::uint32_t length);

struct OptionHeader {
  std::uint32_t option = 0;
  std::uint32_t length = 0;
};
// nullopt when the magic is not IHAVEOPT.
std::optional<OptionHeader> decode_option_header(std::span<const std::byte, kOptionHeaderSize> in);
void encode_option_reply_header(std::span<std::byte, kOptionReplyHeaderSize> out,
                                std::uint32_t option, std::uint32_t type, std::uint32_t length);

// NBD_OPT_INFO / NBD_OPT_GO payload.
struct InfoRequest {
  std::string name;
  std::vector<std::uint16_t> requests;
};
std::optional<InfoRequest> parse_info_request(std::span<const std::byte> in);

// NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT payload.
struct MetaContextRequest {
  std::string export_name;
  std::vector<std::string> queries;
};
std::optional<MetaContextRequest> parse_meta_context_request(std::span<const std::byte> in);

// What a request is checked against; filled from the export once after GO.
struct ExportLimits {
  std::uint64_t size = 0;
  bool read_only = false;
  bool structured = false;       // structured replies negotiated
  bool base_allocation = false;  // base:allocation context negotiated
  bool can_trim = true, can_zero = true, can_cache = true, can_fast_zero = true;
  std::uint32_t min_block = 1;
};

// The verdict on a request: error 0 means it may run; otherwise the NBD error
// to reply with and why, for the log.
struct Verdict {
  std::uint32_t error = 0;
  const char* reason = "";
};

// The single place a request is validated (as nbdkit's validate_request). A
// request it accepts meets the BlockBackend contract (backend/block_backend.h).
Verdict validate_request(const Request& r, const ExportLimits& lim);

// Maps a local errno to the NBD wire value (unknown values become EIO,
// except ones the spec asks us to fold, like EDQUOT/EFBIG -> ENOSPC).
std::uint32_t errno_to_nbd(int err);

const char* command_name(std::uint16_t type);
const char* option_name(std::uint32_t option);

}  // namespace qnbd::nbd
