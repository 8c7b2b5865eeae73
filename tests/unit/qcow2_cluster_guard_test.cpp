// The engine's cluster guard (qcow2/engine/cluster_guard.h): on images whose
// tables contradict their refcounts a write either persists or fails with
// the image marked corrupt; it is never acknowledged and then lost. Covers
// the two fuzz findings (their reproducers are seeds of fuzz_qcow2_open) and
// each contradiction on a small hand-made image.
#include "engine_fixture.h"

#include <cstring>
#include <fstream>
#include <iterator>
#include <optional>

using namespace qnbd;
using namespace qnbd::qcow2;
using namespace qnbd::qcow2::format;
using namespace qnbd::qcow2::test;

namespace {

constexpr unsigned kBits = 9;  // 512-byte clusters: small images
constexpr std::uint64_t kCs = 1u << kBits;

// QNBD_SOURCE_ROOT is set by the meson test; else run from the source root.
std::vector<std::byte> load_seed(const std::string& name) {
  const char* root = std::getenv("QNBD_SOURCE_ROOT");
  const std::string path =
      std::string(root ? root : ".") + "/tests/fuzz/corpus/fuzz_qcow2_open/" + name;
  std::ifstream in(path, std::ios::binary);
  REQUIRE_MESSAGE(in, "cannot read " << path);
  std::vector<char> c((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> b(c.size());
  std::memcpy(b.data(), c.data(), c.size());
  return b;
}

bool marked_corrupt(const std::vector<std::byte>& img) {
  return load_be64(img.data() + HDR_INCOMPATIBLE_FEATURES) & QCOW2_INCOMPAT_CORRUPT;
}

// The fuzz target's write pass (tests/fuzz/fuzz_qcow2_open.cpp): a write at
// 0, one in the middle, write-zeroes and trim, flush, close. A refused
// operation leaves the image marked corrupt; every write that succeeded
// reads back after a reopen.
void writes_persist_or_fail(std::vector<std::byte> bytes) {
  auto base = pattern(1 << 20, 0x40);
  RawResolver backing(base);
  Fixture f;
  f.open(std::move(bytes), &backing);
  const std::uint64_t mid = (f.image->size() / 2) & ~511ull;
  const std::uint64_t z = (f.image->size() / 4 * 3) & ~511ull;
  std::vector<std::pair<std::uint64_t, std::vector<std::byte>>> done;
  bool failed = false;
  for (auto [off, v] : {std::pair{std::uint64_t{0}, 1}, std::pair{mid + 1536, 2}}) {
    auto data = pattern(4096, v);
    if (run(f.ctx, f.image->write(off, data, false)))
      done.emplace_back(off, std::move(data));
    else
      failed = true;
  }
  failed |= !run(f.ctx, f.image->write_zeroes(z, 4096, true, false, false));
  failed |= !run(f.ctx, f.image->trim(z + 4096, 4096, false));
  failed |= !run(f.ctx, f.image->flush());
  f.ok(f.image->close());
  const auto after = f.file->contents();
  CHECK(failed == marked_corrupt(after));
  Fixture again;
  again.open(after, &backing);
  for (auto& [off, data] : done) CHECK(again.read(off, data.size()) == data);
}

// An image with guest clusters 0..n-1 written (pattern 0x10 + i) and
// flushed; `edit` then damages its bytes. Returns the damaged bytes and the
// host offset of each guest cluster.
struct Written {
  std::vector<std::byte> bytes;
  std::vector<std::uint64_t> hosts;
};
Written written_image(unsigned n) {
  Fixture f;
  f.open(make_image(kBits, 64 * kCs));
  for (unsigned i = 0; i < n; ++i) f.ok(f.image->write(i * kCs, pattern(kCs, 0x10 + i), false));
  f.ok(f.image->close());
  Written w{f.file->contents(), {}};
  const std::uint64_t l2 = l1_l2_offset(load_be64(w.bytes.data() + 3 * kCs));
  for (unsigned i = 0; i < n; ++i) w.hosts.push_back(load_be64(w.bytes.data() + l2 + 8 * i));
  for (auto& h : w.hosts) h &= ~QCOW_OFLAG_COPIED;
  return w;
}

void set_refcount_of(std::vector<std::byte>& img, std::uint64_t host, std::uint64_t v) {
  set_refcount(img.data() + 2 * kCs, 4, host >> kBits, v);
}

void clear_copied(std::vector<std::byte>& img, unsigned guest_cluster) {
  const std::uint64_t l2 = l1_l2_offset(load_be64(img.data() + 3 * kCs));
  std::byte* e = img.data() + l2 + 8 * guest_cluster;
  store_be64(e, load_be64(e) & ~QCOW_OFLAG_COPIED);
}

// Writes `data` at `off`: the write must fail with the image marked corrupt
// and every cluster written before still reads as it was.
void refused(std::vector<std::byte> bytes, std::uint64_t off, unsigned clusters_before) {
  Fixture f;
  f.open(std::move(bytes));
  auto r = run(f.ctx, f.image->write(off, pattern(4 * kCs, 0x77), false));
  REQUIRE_FALSE(r);
  CHECK(r.error() == make_error_code(errc::corrupt_image));
  CHECK(to_errno(r.error()) == EIO);
  // From now on the image takes no writes at all.
  CHECK_FALSE(run(f.ctx, f.image->write(40 * kCs, pattern(kCs, 1), false)));
  (void)run(f.ctx, f.image->close());
  CHECK(marked_corrupt(f.file->contents()));
  Fixture again;
  again.open(f.file->contents());
  CHECK(again.image->read_only());
  for (unsigned i = 0; i < clusters_before; ++i)
    CHECK(again.read(i * kCs, kCs) == pattern(kCs, 0x10 + i));
}

}  // namespace

TEST_CASE("cluster guard: fuzz finding, copy-on-write frees a cluster it just gave out") {
  writes_persist_or_fail(load_seed("regress-cow-frees-reused"));
}

TEST_CASE("cluster guard: fuzz finding, an L1 entry points at data clusters") {
  writes_persist_or_fail(load_seed("regress-l1-points-at-data"));
}

TEST_CASE("cluster guard: a shared cluster whose refcount is 0 is not freed") {
  // Guest 0..3 lose OFLAG_COPIED; guest 2's cluster claims refcount 0, so the
  // allocator would give it to guest 0 and the copy-on-write of guest 2
  // would then free it under guest 0's new data.
  auto w = written_image(4);
  for (unsigned i = 0; i < 4; ++i) clear_copied(w.bytes, i);
  set_refcount_of(w.bytes, w.hosts[2], 0);
  refused(w.bytes, 0, 4);
}

TEST_CASE("cluster guard: an OFLAG_COPIED cluster whose refcount is not 1 is not written") {
  for (std::uint64_t rc : {0, 2}) {
    CAPTURE(rc);
    auto w = written_image(4);
    set_refcount_of(w.bytes, w.hosts[1], rc);
    refused(w.bytes, 0, 4);
  }
}

TEST_CASE("cluster guard: discarding a cluster that holds metadata is refused") {
  // Guest 1's L2 entry points at the refcount block: a trim would free it.
  auto w = written_image(4);
  const std::uint64_t l2 = l1_l2_offset(load_be64(w.bytes.data() + 3 * kCs));
  store_be64(w.bytes.data() + l2 + 8, 2 * kCs | QCOW_OFLAG_COPIED);
  Fixture f;
  f.open(w.bytes);
  auto r = run(f.ctx, f.image->trim(0, 4 * kCs, false));
  REQUIRE_FALSE(r);
  CHECK(r.error() == make_error_code(errc::corrupt_image));
  (void)run(f.ctx, f.image->close());
  CHECK(marked_corrupt(f.file->contents()));
  // The refcount block survived (guest 0 was discarded before the refusal):
  // guest 2 and 3 still read their data.
  Fixture again;
  again.open(f.file->contents());
  for (unsigned i : {2u, 3u}) CHECK(again.read(i * kCs, kCs) == pattern(kCs, 0x10 + i));
}

TEST_CASE("cluster guard: requests meeting a table's first check under way get its verdict") {
  // The first use of a table on a writable image walks all its entries; the
  // requests that arrive meanwhile wait for that walk instead of repeating
  // it, and must not take a failed walk for a pass.
  for (const bool damaged : {false, true}) {
    CAPTURE(damaged);
    auto w = written_image(4);
    if (damaged) set_refcount_of(w.bytes, w.hosts[2], 0);
    Fixture f;
    f.open(w.bytes);
    std::vector<std::vector<std::byte>> bufs(4, std::vector<std::byte>(kCs));
    std::vector<std::optional<result<>>> got(4);
    for (unsigned i = 0; i < 4; ++i)
      boost::asio::co_spawn(f.ctx, f.image->read(i * kCs, bufs[i]),
                            [&got, i](std::exception_ptr, result<> r) { got[i] = r; });
    f.ctx.restart();
    f.ctx.run();
    for (unsigned i = 0; i < 4; ++i) {
      CAPTURE(i);
      REQUIRE(got[i]);
      if (damaged) {
        REQUIRE_FALSE(*got[i]);
        CHECK(got[i]->error() == make_error_code(errc::corrupt_image));
      } else {
        REQUIRE(*got[i]);
        CHECK(bufs[i] == pattern(kCs, 0x10 + i));
      }
    }
  }
}

TEST_CASE("cluster guard: a consistent image with a shared cluster writes normally") {
  // Refcount 2 without OFLAG_COPIED is what a snapshot leaves: copy-on-write.
  auto w = written_image(4);
  clear_copied(w.bytes, 1);
  set_refcount_of(w.bytes, w.hosts[1], 2);
  Fixture f;
  f.open(w.bytes);
  f.ok(f.image->write(kCs, pattern(kCs, 0x99), false));
  f.ok(f.image->close());
  CHECK_FALSE(marked_corrupt(f.file->contents()));
  Fixture again;
  again.open(f.file->contents());
  CHECK(again.read(kCs, kCs) == pattern(kCs, 0x99));
}

TEST_CASE("cluster guard: fuzz finding, an L2 table at the old end of file maps past it") {
  writes_persist_or_fail(load_seed("regress-table-maps-past-eof"));
}

TEST_CASE("cluster guard: a table read late may not map the clusters given out fresh") {
  // Two L2 tables (guest clusters 0-63 and 64-127); the second maps guest 65
  // at the first cluster past the end of the file. A write to guest 1 is
  // given that cluster (refcount 0 -> 1); the first use of the second table
  // must then refuse its entry, else guest 65's write lands in place on
  // guest 1's acknowledged data.
  Fixture made;
  made.open(make_image(kBits, 128 * kCs));
  made.ok(made.image->write(0, pattern(kCs, 0x10), false));
  made.ok(made.image->write(64 * kCs, pattern(kCs, 0x50), false));
  made.ok(made.image->close());
  auto bytes = made.file->contents();
  const std::uint64_t eof = (bytes.size() + kCs - 1) / kCs * kCs;
  const std::uint64_t t2 = l1_l2_offset(load_be64(bytes.data() + 3 * kCs + 8));
  REQUIRE(t2 != 0);
  store_be64(bytes.data() + t2 + 8, eof | QCOW_OFLAG_COPIED);

  Fixture f;
  f.open(std::move(bytes));
  f.ok(f.image->write(kCs, pattern(kCs, 0x11), false));
  auto r = run(f.ctx, f.image->write(65 * kCs, pattern(kCs, 0x77), false));
  REQUIRE_FALSE(r);
  CHECK(r.error() == make_error_code(errc::corrupt_image));
  (void)run(f.ctx, f.image->close());
  const auto after = f.file->contents();
  CHECK(marked_corrupt(after));
  const std::uint64_t l2 = l1_l2_offset(load_be64(after.data() + 3 * kCs));
  CHECK((load_be64(after.data() + l2 + 8) & ~QCOW_OFLAG_COPIED) == eof);  // the premise
  Fixture again;
  again.open(after);
  CHECK(again.read(0, kCs) == pattern(kCs, 0x10));
  CHECK(again.read(kCs, kCs) == pattern(kCs, 0x11));
  CHECK(again.read(64 * kCs, kCs) == pattern(kCs, 0x50));
}

TEST_CASE("cluster guard: fuzz finding, data written in place past the end of the file survives") {
  // 512-byte clusters, a 5,703-byte file, guest 0-4095 mapped at host 2560
  // with refcount 1 (1-bit refcounts): the last cluster lies past the end of
  // the file. Closing trimmed the file back to the end of the clusters the
  // refcounts had counted at open, cutting off the write's last 512 bytes.
  writes_persist_or_fail(load_seed("regress-inplace-write-past-eof"));
}
