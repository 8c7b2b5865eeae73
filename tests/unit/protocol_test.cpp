#include "server/protocol.h"

#include <doctest/doctest.h>

#include <array>
#include <vector>

using namespace qnbd::nbd;

namespace {

std::vector<std::byte> bytes(std::initializer_list<int> v) {
  std::vector<std::byte> out;
  for (int x : v) out.push_back(std::byte(x));
  return out;
}

void append32(std::vector<std::byte>& b, std::uint32_t v) {
  std::size_t at = b.size();
  b.resize(at + 4);
  put32(b.data() + at, v);
}
void append16(std::vector<std::byte>& b, std::uint16_t v) {
  std::size_t at = b.size();
  b.resize(at + 2);
  put16(b.data() + at, v);
}
void append_str(std::vector<std::byte>& b, std::string_view s) {
  for (char c : s) b.push_back(std::byte(c));
}

Request req(std::uint16_t type, std::uint64_t off, std::uint32_t len, std::uint16_t flags = 0) {
  Request r;
  r.type = type;
  r.offset = off;
  r.length = len;
  r.flags = flags;
  return r;
}

}  // namespace

TEST_CASE("big-endian helpers round-trip") {
  std::array<std::byte, 8> b{};
  put64(b.data(), 0x0102030405060708ULL);
  CHECK(b[0] == std::byte(1));
  CHECK(b[7] == std::byte(8));
  CHECK(get64(b.data()) == 0x0102030405060708ULL);
  put16(b.data(), 0xabcd);
  CHECK(get16(b.data()) == 0xabcd);
  put32(b.data(), 0xdeadbeef);
  CHECK(get32(b.data()) == 0xdeadbeef);
}

TEST_CASE("request encode/decode and bad magic") {
  Request r = req(NBD_CMD_WRITE, 1ULL << 40, 4096, NBD_CMD_FLAG_FUA);
  r.cookie = 0x1122334455667788ULL;
  std::array<std::byte, kRequestSize> raw;
  encode_request(r, raw);
  CHECK(get32(raw.data()) == NBD_REQUEST_MAGIC);
  auto d = decode_request(raw);
  REQUIRE(d);
  CHECK(d->type == NBD_CMD_WRITE);
  CHECK(d->flags == NBD_CMD_FLAG_FUA);
  CHECK(d->cookie == r.cookie);
  CHECK(d->offset == r.offset);
  CHECK(d->length == 4096);
  raw[0] = std::byte(0);
  CHECK_FALSE(decode_request(raw));
}

TEST_CASE("replies have the spec layout") {
  std::array<std::byte, kSimpleReplySize> s;
  encode_simple_reply(s, NBD_EINVAL, 42);
  CHECK(get32(s.data()) == NBD_SIMPLE_REPLY_MAGIC);
  CHECK(get32(s.data() + 4) == 22);
  CHECK(get64(s.data() + 8) == 42);
  std::array<std::byte, kChunkHeaderSize> c;
  encode_chunk_header(c, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, 7, 8 + 512);
  CHECK(get32(c.data()) == NBD_STRUCTURED_REPLY_MAGIC);
  CHECK(get16(c.data() + 4) == NBD_REPLY_FLAG_DONE);
  CHECK(get16(c.data() + 6) == NBD_REPLY_TYPE_OFFSET_DATA);
  CHECK(get64(c.data() + 8) == 7);
  CHECK(get32(c.data() + 16) == 520);
  std::array<std::byte, kOptionReplyHeaderSize> o;
  encode_option_reply_header(o, NBD_OPT_GO, NBD_REP_ERR_UNKNOWN, 5);
  CHECK(get64(o.data()) == NBD_REP_MAGIC);
  CHECK(get32(o.data() + 8) == NBD_OPT_GO);
  CHECK(get32(o.data() + 12) == NBD_REP_ERR_UNKNOWN);
  CHECK(get32(o.data() + 16) == 5);
}

TEST_CASE("option header requires IHAVEOPT") {
  std::array<std::byte, kOptionHeaderSize> h{};
  put64(h.data(), IHAVEOPT);
  put32(h.data() + 8, NBD_OPT_LIST);
  put32(h.data() + 12, 0);
  auto d = decode_option_header(h);
  REQUIRE(d);
  CHECK(d->option == NBD_OPT_LIST);
  put64(h.data(), NBDMAGIC);
  CHECK_FALSE(decode_option_header(h));
}

TEST_CASE("INFO/GO payload parsing") {
  std::vector<std::byte> b;
  append32(b, 3);
  append_str(b, "vm1");
  append16(b, 2);
  append16(b, NBD_INFO_NAME);
  append16(b, NBD_INFO_BLOCK_SIZE);
  auto r = parse_info_request(b);
  REQUIRE(r);
  CHECK(r->name == "vm1");
  CHECK(r->requests == std::vector<std::uint16_t>{NBD_INFO_NAME, NBD_INFO_BLOCK_SIZE});

  SUBCASE("name length past the payload") {
    auto bad = b;
    put32(bad.data(), 1000);
    CHECK_FALSE(parse_info_request(bad));
  }
  SUBCASE("name length 0xffffffff does not wrap") {
    auto bad = b;
    put32(bad.data(), 0xffffffff);
    CHECK_FALSE(parse_info_request(bad));
  }
  SUBCASE("more info requests announced than sent") {
    auto bad = b;
    put16(bad.data() + 7, 3);
    CHECK_FALSE(parse_info_request(bad));
  }
  SUBCASE("trailing garbage") {
    auto bad = b;
    bad.push_back(std::byte(0));
    CHECK_FALSE(parse_info_request(bad));
  }
  SUBCASE("empty payload") { CHECK_FALSE(parse_info_request({})); }
  SUBCASE("names up to 4096 bytes, not beyond") {
    std::vector<std::byte> ok, big;
    append32(ok, 4096);
    append_str(ok, std::string(4096, 'x'));
    append16(ok, 0);
    CHECK(parse_info_request(ok));
    append32(big, 4097);
    append_str(big, std::string(4097, 'x'));
    append16(big, 0);
    CHECK_FALSE(parse_info_request(big));
  }
}

TEST_CASE("meta context payload parsing") {
  std::vector<std::byte> b;
  append32(b, 0);
  append32(b, 2);
  append32(b, 15);
  append_str(b, "base:allocation");
  append32(b, 5);
  append_str(b, "qemu:");
  auto r = parse_meta_context_request(b);
  REQUIRE(r);
  CHECK(r->export_name.empty());
  CHECK(r->queries == std::vector<std::string>{"base:allocation", "qemu:"});

  SUBCASE("absurd query count is refused without allocating") {
    auto bad = b;
    put32(bad.data() + 4, 0xffffffff);
    CHECK_FALSE(parse_meta_context_request(bad));
  }
  SUBCASE("query length past the end") {
    auto bad = b;
    put32(bad.data() + 8, 16);
    CHECK_FALSE(parse_meta_context_request(bad));
  }
  SUBCASE("truncated") {
    CHECK_FALSE(parse_meta_context_request(std::span(b.data(), b.size() - 1)));
    CHECK_FALSE(parse_meta_context_request(bytes({0, 0})));
  }
}

TEST_CASE("validate_request applies the spec's error rules") {
  ExportLimits lim;
  lim.size = 1 << 20;
  lim.structured = true;
  lim.base_allocation = true;

  CHECK(validate_request(req(NBD_CMD_READ, 0, 4096), lim).error == 0);
  CHECK(validate_request(req(NBD_CMD_READ, (1 << 20) - 512, 512), lim).error == 0);
  CHECK(validate_request(req(NBD_CMD_READ, (1 << 20) - 512, 1024), lim).error == NBD_EINVAL);
  CHECK(validate_request(req(NBD_CMD_WRITE, 1 << 20, 1), lim).error == NBD_ENOSPC);
  CHECK(validate_request(req(NBD_CMD_WRITE_ZEROES, 0, 2 << 20), lim).error == NBD_ENOSPC);
  CHECK(validate_request(req(NBD_CMD_TRIM, 0, 2 << 20), lim).error == NBD_EINVAL);
  CHECK(validate_request(req(NBD_CMD_BLOCK_STATUS, 2 << 20, 1), lim).error == NBD_EINVAL);
  // offset + length wrapping 2^64 is out of range, not a small request
  CHECK(validate_request(req(NBD_CMD_READ, ~0ULL - 10, 4096), lim).error == NBD_EINVAL);
  CHECK(validate_request(req(NBD_CMD_WRITE, ~0ULL - 10, 4096), lim).error == NBD_ENOSPC);

  SUBCASE("unknown commands and flags") {
    CHECK(validate_request(req(42, 0, 0), lim).error == NBD_EINVAL);
    CHECK(std::string(validate_request(req(42, 0, 0), lim).reason) == "unknown command");
    CHECK(validate_request(req(NBD_CMD_READ, 0, 512, 1 << 9), lim).error == NBD_EINVAL);
    CHECK(validate_request(req(NBD_CMD_READ, 0, 512, NBD_CMD_FLAG_REQ_ONE), lim).error ==
          NBD_EINVAL);
    CHECK(validate_request(req(NBD_CMD_WRITE, 0, 512, NBD_CMD_FLAG_NO_HOLE), lim).error ==
          NBD_EINVAL);
    CHECK(validate_request(req(NBD_CMD_WRITE_ZEROES, 0, 512,
                               NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO | NBD_CMD_FLAG_FUA),
                           lim)
              .error == 0);
    CHECK(validate_request(req(NBD_CMD_BLOCK_STATUS, 0, 512, NBD_CMD_FLAG_REQ_ONE), lim).error ==
          0);
    CHECK(validate_request(req(NBD_CMD_BLOCK_STATUS, 0, 0), lim).error == NBD_EINVAL);
    CHECK(validate_request(req(NBD_CMD_READ, 0, 512, NBD_CMD_FLAG_DF), lim).error == 0);
  }
  SUBCASE("DF needs structured replies, BLOCK_STATUS needs a context") {
    lim.structured = false;
    lim.base_allocation = false;
    CHECK(validate_request(req(NBD_CMD_READ, 0, 512, NBD_CMD_FLAG_DF), lim).error == NBD_EINVAL);
    CHECK(validate_request(req(NBD_CMD_BLOCK_STATUS, 0, 512), lim).error == NBD_EINVAL);
  }
  SUBCASE("read-only export refuses every write kind") {
    lim.read_only = true;
    CHECK(validate_request(req(NBD_CMD_WRITE, 0, 512), lim).error == NBD_EPERM);
    CHECK(validate_request(req(NBD_CMD_TRIM, 0, 512), lim).error == NBD_EPERM);
    CHECK(validate_request(req(NBD_CMD_WRITE_ZEROES, 0, 512), lim).error == NBD_EPERM);
    CHECK(validate_request(req(NBD_CMD_READ, 0, 512), lim).error == 0);
    CHECK(validate_request(req(NBD_CMD_FLUSH, 0, 0), lim).error == 0);
  }
  SUBCASE("payload limit") {
    lim.size = 1ULL << 40;
    CHECK(validate_request(req(NBD_CMD_READ, 0, kMaxPayload), lim).error == 0);
    CHECK(validate_request(req(NBD_CMD_READ, 0, kMaxPayload + 1), lim).error == NBD_EINVAL);
    CHECK(validate_request(req(NBD_CMD_TRIM, 0, kMaxPayload + 1), lim).error == 0);
  }
  SUBCASE("alignment when a minimum block size is advertised") {
    lim.min_block = 512;
    CHECK(validate_request(req(NBD_CMD_READ, 512, 1024), lim).error == 0);
    CHECK(validate_request(req(NBD_CMD_READ, 1, 512), lim).error == NBD_EINVAL);
    CHECK(validate_request(req(NBD_CMD_WRITE, 0, 100), lim).error == NBD_EINVAL);
  }
  SUBCASE("unadvertised features") {
    lim.can_trim = false;
    lim.can_fast_zero = false;
    CHECK(validate_request(req(NBD_CMD_TRIM, 0, 512), lim).error == NBD_EINVAL);
    CHECK(validate_request(req(NBD_CMD_WRITE_ZEROES, 0, 512, NBD_CMD_FLAG_FAST_ZERO), lim).error ==
          NBD_EINVAL);
  }
}

TEST_CASE("errno mapping folds to spec values") {
  CHECK(errno_to_nbd(0) == 0);
  CHECK(errno_to_nbd(EDQUOT) == NBD_ENOSPC);
  CHECK(errno_to_nbd(EFBIG) == NBD_ENOSPC);
  CHECK(errno_to_nbd(EROFS) == NBD_EPERM);
  CHECK(errno_to_nbd(ENOTSUP) == NBD_ENOTSUP);
  CHECK(errno_to_nbd(ENOENT) == NBD_EIO);
}
