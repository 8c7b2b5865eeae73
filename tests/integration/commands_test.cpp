// Every NBD command through libnbd, with and without structured replies, and
// its effect checked in the served file itself.
#include <doctest/doctest.h>

#include <algorithm>
#include <cerrno>

#include <memory>

#include "server_fixture.h"

using namespace qnbd_it;

namespace {

constexpr std::uint64_t kSize = 32 * MiB;
// 1 MiB-aligned data so file-system granularity cannot blur holes.
const std::vector<Range> kData{{0, 1 * MiB}, {4 * MiB, 2 * MiB}, {kSize - 1 * MiB, 1 * MiB}};

struct Env {
  TempDir dir;
  std::string image = make_sparse_image(dir.file("disk.raw"), kSize, kData);
  Server server{dir, ServerOptions::serving(image).named("disk")};

  // A connected handle; structured replies (and base:allocation) on request.
  std::unique_ptr<Handle> connect(bool structured) {
    auto h = std::make_unique<Handle>();
    NBD_OK(nbd_set_request_structured_replies(*h, structured));
    NBD_OK(nbd_add_meta_context(*h, "base:allocation"));
    NBD_OK(nbd_set_export_name(*h, "disk"));
    NBD_OK(nbd_connect_unix(*h, server.socket().c_str()));
    REQUIRE(nbd_get_structured_replies_negotiated(*h) == (structured ? 1 : 0));
    return h;
  }
};

std::vector<std::uint8_t> nbd_read(nbd_handle* h, std::uint64_t off, std::uint64_t len,
                                   std::uint32_t flags = 0) {
  std::vector<std::uint8_t> buf(len, 0xee);
  NBD_OK(nbd_pread(h, buf.data(), len, off, flags));
  return buf;
}

bool all_zero(const std::vector<std::uint8_t>& v) {
  return std::all_of(v.begin(), v.end(), [](std::uint8_t b) { return b == 0; });
}

std::vector<std::uint8_t> concat(std::vector<std::uint8_t> a, const std::vector<std::uint8_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

struct Chunk {
  std::uint64_t offset;
  std::size_t count;
  unsigned status;
};

int record_chunk(void* user, const void*, size_t count, uint64_t offset, unsigned status, int*) {
  static_cast<std::vector<Chunk>*>(user)->push_back({offset, count, status});
  return 0;
}

struct Extent {
  std::uint64_t offset, length;
  std::uint32_t flags;
};

int record_extents(void* user, const char* context, uint64_t offset, uint32_t* entries, size_t n,
                   int*) {
  auto* out = static_cast<std::vector<Extent>*>(user);
  if (std::string(context) != "base:allocation") return 0;
  for (size_t i = 0; i + 1 < n; i += 2) {
    out->push_back({offset, entries[i], entries[i + 1]});
    offset += entries[i];
  }
  return 0;
}

std::vector<Extent> block_status(nbd_handle* h, std::uint64_t off, std::uint64_t len,
                                 std::uint32_t flags) {
  std::vector<Extent> out;
  NBD_OK(nbd_block_status(h, len, off, nbd_extent_callback{record_extents, &out, nullptr}, flags));
  return out;
}

// The whole range, asking again where the server's answer stopped (it may
// describe less than was asked).
std::vector<Extent> map_all(nbd_handle* h, std::uint64_t off, std::uint64_t len) {
  std::vector<Extent> all;
  std::uint64_t pos = off;
  while (pos < off + len) {
    auto part = block_status(h, pos, off + len - pos, 0);
    REQUIRE(!part.empty());
    for (auto& e : part) {
      REQUIRE(e.length > 0);
      REQUIRE(e.offset == pos);
      all.push_back(e);
      pos += e.length;
    }
  }
  return all;
}

// Every extent agrees with the file system wherever the two overlap.
void check_against_file(const std::vector<Extent>& extents,
                        const std::vector<std::pair<Range, bool>>& truth) {
  for (auto& e : extents) {
    CAPTURE(e.offset);
    CAPTURE(e.length);
    for (auto& [r, is_data] : truth) {
      if (e.offset < r.offset + r.length && r.offset < e.offset + e.length) {
        CAPTURE(r.offset);
        CHECK(e.flags == (is_data ? 0u : LIBNBD_STATE_HOLE | LIBNBD_STATE_ZERO));
      }
    }
  }
}

}  // namespace

TEST_CASE("READ: data, holes, and ranges spanning both") {
  Env env;
  for (bool structured : {true, false}) {
    CAPTURE(structured);
    auto h = env.connect(structured);
    CHECK(nbd_read(*h, 4 * MiB + 512, 300 * KiB) == pattern(4 * MiB + 512, 300 * KiB));
    CHECK(all_zero(nbd_read(*h, 2 * MiB, 1 * MiB)));
    // 512 KiB of data then 512 KiB of hole.
    auto span = nbd_read(*h, 6 * MiB - 512 * KiB, 1 * MiB);
    CHECK(span ==
          concat(pattern(6 * MiB - 512 * KiB, 512 * KiB), std::vector<std::uint8_t>(512 * KiB)));
    CHECK(nbd_read(*h, kSize - 4096, 4096) == pattern(kSize - 4096, 4096));
    CHECK(nbd_read(*h, 1, 1) == pattern(1, 1));  // unaligned single byte
    NBD_OK(nbd_shutdown(*h, 0));
  }
}

TEST_CASE("structured READ: chunks cover the range exactly; DF gives one chunk") {
  Env env;
  auto h = env.connect(true);
  const std::uint64_t off = 5 * MiB, len = 2 * MiB;  // 1 MiB data, 1 MiB hole
  std::vector<std::uint8_t> buf(len, 0xee);
  std::vector<Chunk> chunks;
  NBD_OK(nbd_pread_structured(*h, buf.data(), len, off,
                              nbd_chunk_callback{record_chunk, &chunks, nullptr}, 0));
  CHECK(buf == concat(pattern(off, 1 * MiB), std::vector<std::uint8_t>(1 * MiB)));
  std::sort(chunks.begin(), chunks.end(), [](auto& a, auto& b) { return a.offset < b.offset; });
  std::uint64_t next = off;
  for (auto& c : chunks) {
    CHECK(c.offset == next);  // no gap, no overlap
    CHECK((c.status == LIBNBD_READ_DATA || c.status == LIBNBD_READ_HOLE));
    next = c.offset + c.count;
  }
  CHECK(next == off + len);

  if (nbd_can_df(*h) == 1) {
    chunks.clear();
    std::vector<std::uint8_t> small(64 * KiB);
    NBD_OK(nbd_pread_structured(*h, small.data(), small.size(), 6 * MiB - 32 * KiB,
                                nbd_chunk_callback{record_chunk, &chunks, nullptr},
                                LIBNBD_CMD_FLAG_DF));
    CHECK(chunks.size() == 1);
    CHECK(small ==
          concat(pattern(6 * MiB - 32 * KiB, 32 * KiB), std::vector<std::uint8_t>(32 * KiB)));
  }
  NBD_OK(nbd_shutdown(*h, 0));
}

TEST_CASE("WRITE, WRITE+FUA and FLUSH land in the file") {
  Env env;
  for (bool structured : {true, false}) {
    CAPTURE(structured);
    auto h = env.connect(structured);
    const std::uint64_t base = structured ? 8 * MiB : 12 * MiB;
    auto a = pattern(base, 128 * KiB, 11);
    auto b = pattern(base + 1 * MiB + 512, 4097, 12);
    NBD_OK(nbd_pwrite(*h, a.data(), a.size(), base, 0));
    NBD_OK(nbd_pwrite(*h, b.data(), b.size(), base + 1 * MiB + 512, LIBNBD_CMD_FLAG_FUA));
    CHECK(read_file(env.image, base + 1 * MiB + 512, b.size()) == b);
    NBD_OK(nbd_flush(*h, 0));
    CHECK(read_file(env.image, base, a.size()) == a);
    CHECK(nbd_read(*h, base, a.size()) == a);
    // Overwrite inside existing data, unaligned.
    auto c = pattern(4 * MiB + 1000, 3000, 13);
    NBD_OK(nbd_pwrite(*h, c.data(), c.size(), 4 * MiB + 1000, LIBNBD_CMD_FLAG_FUA));
    CHECK(read_file(env.image, 4 * MiB, 1000) == pattern(4 * MiB, 1000));
    CHECK(read_file(env.image, 4 * MiB + 1000, 3000) == c);
    CHECK(read_file(env.image, 4 * MiB + 4000, 1000) == pattern(4 * MiB + 4000, 1000));
    NBD_OK(nbd_shutdown(*h, 0));
  }
}

TEST_CASE("TRIM releases space and leaves neighbours intact") {
  Env env;
  for (bool structured : {true, false}) {
    CAPTURE(structured);
    auto h = env.connect(structured);
    const std::uint64_t off = structured ? 4 * MiB : 5 * MiB;  // 1 MiB inside the data range
    auto before = allocated_bytes(env.image);
    NBD_OK(nbd_trim(*h, 512 * KiB, off + 256 * KiB, 0));
    NBD_OK(nbd_flush(*h, 0));
    CHECK(allocated_bytes(env.image) < before);  // raw backend punches a hole
    CHECK(read_file(env.image, off, 256 * KiB) == pattern(off, 256 * KiB));
    CHECK(read_file(env.image, off + 768 * KiB, 256 * KiB) == pattern(off + 768 * KiB, 256 * KiB));
    NBD_OK(nbd_trim(*h, 4096, 20 * MiB, LIBNBD_CMD_FLAG_FUA));  // trimming a hole is fine too
    NBD_OK(nbd_shutdown(*h, 0));
  }
}

TEST_CASE("WRITE_ZEROES: plain, NO_HOLE and FAST_ZERO") {
  Env env;
  for (bool structured : {true, false}) {
    CAPTURE(structured);
    auto h = env.connect(structured);
    const std::uint64_t base = structured ? 0 : 512 * KiB;  // inside the first data range

    NBD_OK(nbd_zero(*h, 64 * KiB, base, 0));
    CHECK(all_zero(read_file(env.image, base, 64 * KiB)));
    CHECK(all_zero(nbd_read(*h, base, 64 * KiB)));

    auto before = allocated_bytes(env.image);
    NBD_OK(nbd_zero(*h, 64 * KiB, base + 128 * KiB, LIBNBD_CMD_FLAG_NO_HOLE | LIBNBD_CMD_FLAG_FUA));
    CHECK(all_zero(read_file(env.image, base + 128 * KiB, 64 * KiB)));
    CHECK(allocated_bytes(env.image) >= before);  // NO_HOLE: no space given back

    // FAST_ZERO either zeroes, or fails with ENOTSUP leaving the data alone.
    const std::uint64_t fz = base + 256 * KiB;
    int rc = nbd_zero(*h, 64 * KiB, fz, LIBNBD_CMD_FLAG_FAST_ZERO);
    if (rc == 0) {
      CHECK(all_zero(read_file(env.image, fz, 64 * KiB)));
    } else {
      CHECK(nbd_get_errno() == ENOTSUP);
      CHECK(read_file(env.image, fz, 64 * KiB) == pattern(fz, 64 * KiB));
    }
    // Unaligned zero inside data: only those bytes change.
    NBD_OK(nbd_zero(*h, 1000, base + 400 * KiB + 7, 0));
    CHECK(read_file(env.image, base + 400 * KiB, 7) == pattern(base + 400 * KiB, 7));
    CHECK(all_zero(read_file(env.image, base + 400 * KiB + 7, 1000)));
    CHECK(read_file(env.image, base + 400 * KiB + 1007, 100) ==
          pattern(base + 400 * KiB + 1007, 100));
    // Neighbours untouched.
    CHECK(read_file(env.image, base + 64 * KiB, 64 * KiB) == pattern(base + 64 * KiB, 64 * KiB));
    NBD_OK(nbd_shutdown(*h, 0));
  }
}

TEST_CASE("BLOCK_STATUS base:allocation on a sparse file, with and without REQ_ONE") {
  Env env;
  auto h = env.connect(true);
  REQUIRE(nbd_can_meta_context(*h, "base:allocation") == 1);
  auto truth = file_extents(env.image);
  REQUIRE(truth.size() == 5);  // data hole data hole data

  auto extents = map_all(*h, 0, kSize);
  check_against_file(extents, truth);

  for (auto& [r, is_data] : truth) {
    CAPTURE(r.offset);
    auto one = block_status(*h, r.offset, r.length, LIBNBD_CMD_FLAG_REQ_ONE);
    REQUIRE(one.size() == 1);
    CHECK(one[0].offset == r.offset);
    CHECK(one[0].length <= r.length);
    CHECK(one[0].flags == (is_data ? 0u : LIBNBD_STATE_HOLE | LIBNBD_STATE_ZERO));
  }
  // A range starting in a hole and ending in data: REQ_ONE describes only the start.
  auto one = block_status(*h, 3 * MiB, 2 * MiB, LIBNBD_CMD_FLAG_REQ_ONE);
  REQUIRE(one.size() == 1);
  CHECK(one[0].length <= 1 * MiB);
  CHECK(one[0].flags == (LIBNBD_STATE_HOLE | LIBNBD_STATE_ZERO));

  // Data written into a hole shows up as data.
  std::vector<std::uint8_t> buf(1 * MiB, 0x42);
  NBD_OK(nbd_pwrite(*h, buf.data(), buf.size(), 10 * MiB, 0));
  auto w = block_status(*h, 10 * MiB, 1 * MiB, LIBNBD_CMD_FLAG_REQ_ONE);
  REQUIRE(w.size() == 1);
  CHECK(w[0].flags == 0u);
  NBD_OK(nbd_shutdown(*h, 0));
}

TEST_CASE("BLOCK_STATUS is unavailable without structured replies") {
  Env env;
  auto h = env.connect(false);
  CHECK(nbd_can_meta_context(*h, "base:allocation") == 0);
  std::vector<Extent> out;
  CHECK(nbd_block_status(*h, 4096, 0, nbd_extent_callback{record_extents, &out, nullptr}, 0) == -1);
  CHECK(nbd_read(*h, 0, 4096) == pattern(0, 4096));  // still usable
  NBD_OK(nbd_shutdown(*h, 0));
}

TEST_CASE("CACHE succeeds and changes nothing") {
  Env env;
  for (bool structured : {true, false}) {
    CAPTURE(structured);
    auto h = env.connect(structured);
    REQUIRE(nbd_can_cache(*h) == 1);
    NBD_OK(nbd_cache(*h, 2 * MiB, 4 * MiB, 0));
    NBD_OK(nbd_cache(*h, 4096, 0, 0));
    CHECK(nbd_read(*h, 4 * MiB, 64 * KiB) == pattern(4 * MiB, 64 * KiB));
    NBD_OK(nbd_shutdown(*h, 0));
  }
  CHECK(read_file(env.image, 0, 1 * MiB) == pattern(0, 1 * MiB));
}

TEST_CASE("BLOCK_STATUS on a fragmented file: 200 extents, all correct") {
  TempDir dir;
  std::vector<Range> data;
  for (std::uint64_t i = 0; i < 100; ++i) data.push_back({i * 128 * KiB, 64 * KiB});
  auto image = make_sparse_image(dir.file("disk.raw"), kSize, data);
  Server server(dir, ServerOptions::serving(image));
  Handle h;
  NBD_OK(nbd_add_meta_context(h, "base:allocation"));
  NBD_OK(nbd_connect_unix(h, server.socket().c_str()));
  auto truth = file_extents(image);
  REQUIRE(truth.size() == 200);  // 100 data, 100 holes (the last runs to the end)
  auto extents = map_all(h, 0, kSize);
  CHECK(extents.size() >= 200);
  check_against_file(extents, truth);
  // An unaligned window inside the fragments.
  check_against_file(map_all(h, 3 * MiB + 1000, 1 * MiB), truth);
  NBD_OK(nbd_shutdown(h, 0));
}

TEST_CASE("WRITE_ZEROES and TRIM larger than the maximum payload") {
  TempDir dir;
  const std::uint64_t size = 64 * MiB;
  auto image = make_sparse_image(dir.file("disk.raw"), size, {{0, size}});
  Server server(dir, ServerOptions::serving(image));
  for (bool structured : {true, false}) {
    CAPTURE(structured);
    Handle h;
    NBD_OK(nbd_set_request_structured_replies(h, structured));
    NBD_OK(nbd_connect_unix(h, server.socket().c_str()));
    const std::uint64_t off = structured ? 0 : 8 * MiB, len = 48 * MiB;  // > 32 MiB
    // The spec lets a server refuse these (EINVAL/EOVERFLOW) but not disconnect;
    // qemu-img and nbdcopy send them, so qnbd is expected to do them.
    NBD_OK(nbd_zero(h, len, off, 0));
    CHECK(all_zero(read_file(image, off, len)));
    CHECK(read_file(image, off + len, 64 * KiB) == pattern(off + len, 64 * KiB));
    NBD_OK(nbd_trim(h, len, off, 0));
    std::vector<std::uint8_t> buf(4096);
    NBD_OK(nbd_pread(h, buf.data(), buf.size(), size - 4096, 0));
    CHECK(buf == pattern(size - 4096, 4096));
    NBD_OK(nbd_shutdown(h, 0));
  }
}
