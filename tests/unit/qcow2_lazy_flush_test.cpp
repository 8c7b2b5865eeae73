// Dirty-bit mode FLUSH: one sync when every new cluster is blank (a fresh
// hole whose old contents were zeros), two when data must precede its L2
// entry; zeros written ahead for flush-heavy clients; and after a simulated power loss at any
// point, a repaired image holds, per byte, the flushed contents or a value written since.
#include "engine_fixture.h"
#include "qcow2/check/check.h"

#include <random>

using namespace qnbd;
using namespace qnbd::qcow2;
using namespace qnbd::qcow2::test;

namespace {

std::unique_ptr<Image> open_lazy(boost::asio::io_context& ctx, std::unique_ptr<io::File> f,
                                 BackingResolver* backing = nullptr,
                                 std::uint64_t refcount_cache_size = 0) {
  LoadOptions o;
  o.name = "lazy";
  o.lazy_refcounts = true;
  o.writeback_interval = 0;
  o.refcount_cache_size = refcount_cache_size;
  return run(ctx, load_image(std::move(f), o, backing));
}

void ok(boost::asio::io_context& ctx, task<> t) {
  auto r = run(ctx, std::move(t));
  REQUIRE_MESSAGE(r.has_value(), r.error().message());
}

// The backing file as a real file, so that `qemu-img check` can open it.
struct BackingFile {
  std::string path;
  explicit BackingFile(const std::vector<std::byte>& bytes) {
    char tmpl[] = "/tmp/qnbd-unit-base.XXXXXX";
    const int fd = mkstemp(tmpl);
    REQUIRE(fd >= 0);
    REQUIRE(::write(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()));
    ::close(fd);
    path = tmpl;
  }
  ~BackingFile() { ::unlink(path.c_str()); }
};

}  // namespace

TEST_CASE("dirty-bit flush: blank clusters cost one sync, copy-on-write clusters two") {
  boost::asio::io_context ctx;
  const auto base = pattern(8 << 20, 7);
  RawResolver backing(base);
  BackingFile base_file(base);
  auto file = std::make_unique<io::MemoryFile>(make_image(16, 8 << 20, base_file.path));
  io::MemoryFile* raw = file.get();
  auto image = open_lazy(ctx, std::move(file), &backing);
  ok(ctx, image->write_zeroes(1 << 20, 4 << 20, false, false, false));  // zero flags
  ok(ctx, image->flush());
  // Many blank writes per FLUSH: data only, no zero fill; the first new
  // clusters lie beyond the durable size, so the data sync stays.
  raw->reset_stats();
  for (std::uint64_t i = 0; i < 32; ++i)
    ok(ctx, image->write((1 << 20) + i * 65536 + 4096, pattern(4096, 2), false));
  ok(ctx, image->flush());
  CHECK(raw->stats().syncs == 2);
  CHECK(raw->stats().bytes_written == 32 * 4096 + 4096);  // data, one L2 block
  // A flush-heavy client: one blank write per FLUSH costs one sync, and the
  // clusters it lands in were filled with zeros ahead of it.
  ok(ctx, image->write(0, pattern(4096, 1), false));
  ok(ctx, image->flush());
  raw->reset_stats();
  for (std::uint64_t i = 0; i < 16; ++i) {
    ok(ctx, image->write((3 << 20) + i * 65536, pattern(4096, 3), false));
    ok(ctx, image->flush());
  }
  CHECK(raw->stats().syncs == 16);
  CHECK(raw->stats().bytes_written >= 16 * 65536);
  raw->reset_stats();
  ok(ctx, image->write(5 << 20, pattern(4096, 4), false));  // copies backing data
  ok(ctx, image->flush());
  CHECK(raw->stats().syncs == 2);
  ok(ctx, image->close());
  CHECK(qemu_check(raw->contents()) == 0);
  CHECK(*raw->size() < (4u << 20));  // the space grown ahead is given back
}

TEST_CASE("dirty-bit flush: after a power loss every byte is flushed or newer") {
  for (std::uint32_t seed = 1; seed <= 24; ++seed) {
    CAPTURE(seed);
    boost::asio::io_context ctx;
    constexpr std::size_t kSize = 2 << 20;
    const unsigned bits = seed % 2 ? 12 : 16;
    const bool with_backing = seed % 4 >= 2;
    const auto base = pattern(kSize, 0xbb);
    RawResolver backing(base);
    BackingFile base_file(base);
    auto file = std::make_unique<io::MemoryFile>(
        make_image(bits, kSize, with_backing ? base_file.path : ""));
    io::MemoryFile* raw = file.get();
    auto image = open_lazy(ctx, std::move(file), with_backing ? &backing : nullptr);
    std::mt19937 rng(seed);
    std::vector<std::byte> flushed(kSize,
                                   std::byte{with_backing ? std::uint8_t{0xbb} : std::uint8_t{0}});
    std::vector<std::byte> model = flushed;
    std::vector<std::uint64_t> since(kSize);  // bit k: write k since the last flush covers it
    std::vector<std::byte> values;            // value of write k
    const int ops = 30 + static_cast<int>(rng() % 60);
    for (int i = 0; i < ops; ++i) {
      const std::size_t n = 1 + rng() % (3u << bits);
      const std::uint64_t off = rng() % (kSize - n);
      const int what = static_cast<int>(rng() % 10);
      if (what < 7 && values.size() < 64) {
        const auto v = static_cast<std::byte>(1 + rng() % 250);
        auto b = std::vector<std::byte>(n, v);
        ok(ctx, image->write(off, b, what == 0));
        if (what == 0) {  // FUA: durable now, as if flushed for these bytes
          std::fill_n(flushed.begin() + static_cast<std::ptrdiff_t>(off), n, v);
          std::fill_n(since.begin() + static_cast<std::ptrdiff_t>(off), n, 0);
        } else {
          for (std::size_t j = off; j < off + n; ++j) since[j] |= 1ull << values.size();
          values.push_back(v);
        }
        std::fill_n(model.begin() + static_cast<std::ptrdiff_t>(off), n, v);
      } else {
        ok(ctx, image->flush());
        flushed = model;
        since.assign(kSize, 0);
        values.clear();
      }
    }
    // Power fails during a last flush, at its first, second or third sync:
    // whatever that flush wrote before may or may not have landed.
    raw->inject({io::MemoryFile::Op::Sync, EIO, rng() % 3, 1000, false});
    (void)run(ctx, image->flush());
    raw->crash(0.5, seed);
    auto survived = std::make_unique<io::MemoryFile>(raw->contents());
    auto repaired = run(ctx, check::repair_dirty_image(*survived));
    REQUIRE(repaired.has_value());
    CHECK(qemu_check(survived->contents()) == 0);
    auto again = open_lazy(ctx, std::make_unique<io::MemoryFile>(survived->contents()),
                           with_backing ? &backing : nullptr);
    std::vector<std::byte> got(kSize);
    ok(ctx, again->read(0, got));
    std::size_t bad = 0;
    for (std::size_t j = 0; j < kSize; ++j) {
      if (got[j] == flushed[j]) continue;
      bool newer = false;
      for (std::uint64_t m = since[j]; m && !newer; m &= m - 1)
        newer = values[static_cast<std::size_t>(__builtin_ctzll(m))] == got[j];
      if (!newer) ++bad;
    }
    CHECK(bad == 0);
  }
}

TEST_CASE("dirty-bit mode: refcount blocks are written back when their cache is full") {
  boost::asio::io_context ctx;
  // 4 KiB clusters: one refcount block counts 8 MiB of the file.
  auto file = std::make_unique<io::MemoryFile>(make_image(12, 64 << 20));
  io::MemoryFile* raw = file.get();
  auto image = open_lazy(ctx, std::move(file), nullptr, 2 * 4096);
  const auto data = pattern(4096, 9);
  std::size_t most = 0;
  for (std::uint64_t off = 0; off < (40u << 20); off += 4096) {
    ok(ctx, image->write(off, data, false));
    most = std::max(most, image->cache_use().refcount_tables);
  }
  CHECK(most <= 3);  // capacity 2, plus one in use while it is replaced
  ok(ctx, image->close());
  CHECK(qemu_check(raw->contents()) == 0);
}
