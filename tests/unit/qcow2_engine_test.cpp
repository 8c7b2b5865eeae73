// Engine tests over in-memory files (io::MemoryFile): I/O counts of the
// copy-on-write path, concurrent allocations of one cluster, reuse of freed
// clusters, failure injection, and crash consistency (a simulated power
// loss, then `qemu-img check` on the surviving bytes and a re-open).
#include "engine_fixture.h"
#include "io/uring.h"
#include "io/uring_file.h"
#include "tests/lib/temp_dir.h"

#include <fstream>
#include <random>

using namespace qnbd;
using namespace qnbd::qcow2;
using namespace qnbd::qcow2::format;
using namespace qnbd::qcow2::test;

TEST_CASE("qcow2 engine: allocating write with nothing to copy does no read") {
  Fixture f;
  f.open(make_image(16, 8 << 20));
  f.ok(f.image->write(0, pattern(4096, 1), false));  // warms the refcount block
  f.file->reset_stats();
  f.ok(f.image->write(5 * 65536 + 1000, pattern(3000, 2), false));
  CHECK(f.file->stats().reads == 0);
  CHECK(f.file->stats().writes == 1);  // data + zero fill in one write
  CHECK(f.read(5 * 65536, 65536) == [] {
    auto v = pattern(65536, 0);
    std::fill(v.begin() + 1000, v.begin() + 4000, std::byte{2});
    return v;
  }());
  f.ok(f.image->close());
  CHECK(qemu_check(f.file->contents()) == 0);
}

TEST_CASE("qcow2 engine: copy-on-write from the backing file is one read and one write") {
  auto base = pattern(8 << 20, 0x5a);
  RawResolver backing(base);
  Fixture f;
  f.open(make_image(16, 8 << 20, "base.raw"), &backing);
  f.ok(f.image->write(0, pattern(512, 1), false));  // warm metadata
  f.file->reset_stats();
  backing.file->reset_stats();
  f.ok(f.image->write(3 * 65536 + 4096, pattern(4096, 7), false));
  CHECK(backing.file->stats().reads == 1);
  CHECK(f.file->stats().reads == 0);
  CHECK(f.file->stats().writes == 1);
  auto got = f.read(3 * 65536, 65536);
  auto want = pattern(65536, 0x5a);
  std::fill(want.begin() + 4096, want.begin() + 8192, std::byte{7});
  CHECK(got == want);
}

TEST_CASE("qcow2 engine: concurrent writes to one unallocated cluster allocate it once") {
  Fixture f;
  f.open(make_image(16, 8 << 20));
  std::vector<std::vector<std::byte>> bufs;
  for (int i = 0; i < 16; ++i) bufs.push_back(pattern(4096, i + 1));
  int done = 0;
  for (int i = 0; i < 16; ++i)
    boost::asio::co_spawn(f.ctx, f.image->write(2 * 65536 + i * 4096, bufs[i], false),
                          [&](std::exception_ptr e, result<> r) {
                            CHECK(!e);
                            CHECK(r.has_value());
                            ++done;
                          });
  f.ctx.restart();
  while (done < 16 && f.ctx.run_one()) {
  }
  REQUIRE(done == 16);
  auto got = f.read(2 * 65536, 65536);
  for (int i = 0; i < 16; ++i) CHECK(got[i * 4096] == static_cast<std::byte>(i + 1));
  f.ok(f.image->close());
  // header, reftable, refblock, L1, one L2 table, one data cluster
  CHECK(f.file->contents().size() == 6 * 65536);
  CHECK(qemu_check(f.file->contents()) == 0);
}

TEST_CASE("qcow2 engine: freed clusters are reused whatever the request size") {
  Fixture before;
  before.open(make_image(12, 4 << 20));
  before.ok(before.image->write(0, pattern(64 * 4096, 3), false));
  before.ok(before.image->close());
  const auto grown = before.file->contents().size();
  Fixture f;
  f.open(make_image(12, 4 << 20));
  f.ok(f.image->write(0, pattern(64 * 4096, 3), false));
  f.ok(f.image->flush());
  // Free every other cluster, then allocate in bigger requests than any hole.
  for (int c = 0; c < 64; c += 2) f.ok(f.image->trim(c * 4096, 4096, false));
  f.ok(f.image->flush());
  f.ok(f.image->write(1 << 20, pattern(32 * 4096, 4), false));
  f.ok(f.image->close());
  CHECK(f.file->contents().size() == grown);
  CHECK(qemu_check(f.file->contents()) == 0);
  auto got = f.read(0, 2 * 4096);
  CHECK(got[0] == std::byte{0});
  CHECK(got[4096] == std::byte{3});
}

TEST_CASE("qcow2 engine: refcount table grows for small clusters with wide refcounts") {
  Fixture f;
  // 512-byte clusters, 64-bit refcounts: one block covers 64 clusters and
  // the one-cluster table 64 blocks (2 MiB of file); filling 2 MiB of guest
  // data plus metadata must grow it.
  f.open(make_image(9, 2 << 20, "", false, 6));
  for (int i = 0; i < 32; ++i) f.ok(f.image->write(i * 65536, pattern(65536, i + 1), false));
  f.ok(f.image->close());
  CHECK(f.file->contents().size() > (2u << 20));
  CHECK(qemu_check(f.file->contents()) == 0);
  for (int i = 0; i < 32; i += 5) CHECK(f.read(i * 65536 + 100, 1)[0] == std::byte(i + 1));
}

TEST_CASE("qcow2 engine: extended L2 subclusters: writes touch only their subclusters") {
  auto base = pattern(8 << 20, 0x11);
  RawResolver backing(base);
  Fixture f;
  f.open(make_image(16, 8 << 20, "base.raw", true), &backing);
  f.ok(f.image->write(0, pattern(512, 1), false));
  backing.file->reset_stats();
  f.ok(f.image->write(65536 + 2048 + 100, pattern(100, 9), false));  // inside subcluster 1
  CHECK(backing.file->stats().bytes_read <= 2048);
  f.ok(f.image->write_zeroes(65536 + 4096, 2048, false, true, false));  // subcluster 2
  auto got = f.read(65536, 8192);
  CHECK(got[0] == std::byte{0x11});
  CHECK(got[2048 + 100] == std::byte{9});
  CHECK(got[2048 + 99] == std::byte{0x11});
  CHECK(got[4096] == std::byte{0});
  CHECK(got[6144] == std::byte{0x11});
  f.ok(f.image->close());
}

TEST_CASE("qcow2 engine: a failed data write leaves the image consistent") {
  Fixture f;
  f.open(make_image(16, 8 << 20));
  f.ok(f.image->write(0, pattern(4096, 1), false));
  f.file->inject({io::MemoryFile::Op::Write, EIO, 0, 1, true});
  auto r = run(f.ctx, f.image->write(4 * 65536, pattern(4096, 2), false));
  CHECK(!r.has_value());
  // Full: more than the space reserved ahead of the clusters in use.
  f.file->set_size_limit(f.file->contents().size());
  auto r2 = run(f.ctx, f.image->write(5 << 20, pattern(2 << 20, 2), false));
  CHECK(!r2.has_value());
  f.file->set_size_limit(std::nullopt);
  f.ok(f.image->write(65536, pattern(4096, 3), false));
  f.ok(f.image->close());
  CHECK(qemu_check(f.file->contents()) == 0);
  CHECK(f.read(4 * 65536, 1)[0] == std::byte{0});
  CHECK(f.read(65536, 1)[0] == std::byte{3});
}

TEST_CASE("qcow2 engine: after a crash, flushed data survives and the image has no corruption") {
  for (std::uint32_t seed = 1; seed <= 12; ++seed) {
    CAPTURE(seed);
    Fixture f;
    f.open(make_image(seed % 2 ? 12 : 16, 4 << 20));
    std::mt19937 rng(seed);
    std::vector<std::byte> flushed(4 << 20), model(4 << 20);
    std::vector<bool> touched(4 << 20);  // written since the last flush
    const unsigned cs = seed % 2 ? 4096 : 65536;
    const int ops = 20 + static_cast<int>(rng() % 40);
    for (int i = 0; i < ops; ++i) {
      const std::uint64_t off = rng() % ((4 << 20) - 3 * cs);
      const std::size_t n = 1 + rng() % (2 * cs);
      const int what = static_cast<int>(rng() % 10);
      if (what < 6) {
        auto b = pattern(n, static_cast<int>(1 + rng() % 250));
        f.ok(f.image->write(off, b, false));
        std::copy(b.begin(), b.end(), model.begin() + static_cast<std::ptrdiff_t>(off));
        std::fill_n(touched.begin() + static_cast<std::ptrdiff_t>(off), n, true);
      } else if (what < 8) {
        f.ok(f.image->write_zeroes(off, n, what == 7, false, false));
        std::fill_n(model.begin() + static_cast<std::ptrdiff_t>(off), n, std::byte{0});
        std::fill_n(touched.begin() + static_cast<std::ptrdiff_t>(off), n, true);
      } else {
        f.ok(f.image->flush());
        flushed = model;
        touched.assign(touched.size(), false);
      }
    }
    f.file->crash(0.5, seed);  // unsynced writes: some land, some are lost
    const auto survived = f.file->contents();
    const int rc = qemu_check(survived);
    CHECK_MESSAGE((rc == 0 || rc == 3), "qemu-img check found corruption, rc=" << rc);
    Fixture g;
    g.open(survived);
    const auto got = g.read(0, 4 << 20);
    // Everything flushed reads back unless a later write (lost or not) touched it.
    std::size_t bad = 0;
    for (std::size_t i = 0; i < got.size(); ++i)
      if (!touched[i] && got[i] != flushed[i]) ++bad;
    CHECK(bad == 0);
  }
}

TEST_CASE("qcow2 engine: concurrent flushes share one flush sequence") {
  Fixture f;
  f.open(make_image(16, 8 << 20));
  f.ok(f.image->write(0, pattern(4096, 1), false));
  f.ok(f.image->flush());
  f.ok(f.image->write(9 * 65536, pattern(4096, 2), false));  // allocates: 3 syncs to flush
  f.file->reset_stats();
  int done = 0;
  for (int i = 0; i < 8; ++i)
    boost::asio::co_spawn(f.ctx, f.image->flush(), [&](std::exception_ptr, result<> r) {
      CHECK(r.has_value());
      ++done;
    });
  f.ctx.restart();
  while (done < 8 && f.ctx.run_one()) {
  }
  REQUIRE(done == 8);
  // First sequence (refcounts, L2, L1: 3 syncs) + at most one more for the
  // flushes that queued behind it (nothing dirty: 1 sync).
  CHECK(f.file->stats().syncs <= 4);
}

TEST_CASE("qcow2 engine: idle dirty metadata is written back without a FLUSH") {
  boost::asio::io_context ctx;
  auto file = std::make_unique<io::MemoryFile>(make_image(16, 8 << 20));
  io::MemoryFile* raw = file.get();
  LoadOptions o;
  o.name = "idle";
  o.writeback_interval = 0.01;
  auto image = run(ctx, load_image(std::move(file), o, nullptr));
  REQUIRE(run(ctx, image->write(0, pattern(4096, 1), false)).has_value());
  CHECK(raw->stats().syncs <= 1);
  // Run the loop until the write-back happened (bounded by the timer).
  while (raw->stats().syncs < 3 && ctx.run_one()) {
  }
  raw->crash();
  CHECK(qemu_check(raw->contents()) == 0);
  auto again = run(ctx, load_image(std::make_unique<io::MemoryFile>(raw->contents()), o, nullptr));
  std::vector<std::byte> got(4096);
  REQUIRE(run(ctx, again->read(0, got)).has_value());
  CHECK(got[0] == std::byte{1});
  REQUIRE(run(ctx, again->close()).has_value());
  REQUIRE(run(ctx, image->close()).has_value());
}

TEST_CASE("qcow2 engine: dirty-bit mode defers refcounts until close") {
  boost::asio::io_context ctx;
  auto file = std::make_unique<io::MemoryFile>(make_image(16, 8 << 20));
  io::MemoryFile* raw = file.get();
  LoadOptions o;
  o.name = "lazy";
  o.lazy_refcounts = true;
  o.writeback_interval = 0;
  auto image = run(ctx, load_image(std::move(file), o, nullptr));
  REQUIRE(run(ctx, image->write(0, pattern(65536, 1), false)).has_value());
  REQUIRE(run(ctx, image->flush()).has_value());
  // Flushed: the data is mapped, the dirty bit is set, refcounts are stale.
  auto flushed = raw->contents();
  CHECK((load_be64(flushed.data() + HDR_INCOMPATIBLE_FEATURES) & QCOW2_INCOMPAT_DIRTY) != 0);
  CHECK(get_refcount(flushed.data() + 2 * 65536, 4, 5) == 0);  // the data cluster
  raw->crash();
  CHECK(qemu_check(raw->contents()) == 2);  // refcounts stale: repair needed
  REQUIRE(run(ctx, image->write(65536, pattern(4096, 2), false)).has_value());
  REQUIRE(run(ctx, image->close()).has_value());
  const auto& closed = raw->contents();
  CHECK((load_be64(closed.data() + HDR_INCOMPATIBLE_FEATURES) & QCOW2_INCOMPAT_DIRTY) == 0);
  CHECK(qemu_check(closed) == 0);
}

TEST_CASE_TEMPLATE("qcow2 engine: write, flush, reopen round trip", FileKind, io::MemoryFile,
                   io::UringFile) {
  boost::asio::io_context ctx;
  io::Ring ring(ctx);
  const auto bytes = make_image(16, 8 << 20);
  qnbd::test::TempDir dir("qnbd-unit-qcow2");
  std::unique_ptr<io::File> file;
  if constexpr (std::is_same_v<FileKind, io::UringFile>) {
    const std::string path = dir.write(
        "image.qcow2", std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
    auto f = io::UringFile::open(ring, path, {});
    REQUIRE(f.has_value());
    file = std::move(*f);
  } else {
    file = std::make_unique<io::MemoryFile>(bytes);
  }
  io::File* raw = file.get();
  LoadOptions o;
  o.name = "roundtrip";
  auto image = run(ctx, load_image(std::move(file), o, nullptr));
  auto data = pattern(200000, 0x42);
  REQUIRE(run(ctx, image->write(12345, data, true)).has_value());
  REQUIRE(run(ctx, image->write_zeroes(65536, 65536, true, false, false)).has_value());
  REQUIRE(run(ctx, image->close()).has_value());
  std::vector<std::byte> now(*raw->size());
  REQUIRE(run(ctx, raw->read_at(0, now)).has_value());
  CHECK(qemu_check(now) == 0);
  auto again = run(ctx, load_image(std::make_unique<io::MemoryFile>(now), o, nullptr));
  std::vector<std::byte> got(300000);
  REQUIRE(run(ctx, again->read(0, got)).has_value());
  CHECK(got[12344] == std::byte{0});
  CHECK(got[12345] == std::byte{0x42});
  CHECK(got[65536] == std::byte{0});
  CHECK(got[131072] == std::byte{0x42});
  CHECK(got[212345] == std::byte{0});
}
