// The defragmenter over an in-memory image: a complete pass leaves data
// host-contiguous, the file compacted and the image clean; a power loss at
// any sync of a pass (the sync fails, then every write not made durable may
// or may not have landed) leaves an image that reads exactly as before and
// has no corruption (leaked clusters allowed; in dirty-bit mode after the
// repair on open).
#include "engine_fixture.h"
#include "qcow2/check/check.h"
#include "qcow2/engine/defrag.h"

#include <spdlog/spdlog.h>

#include <random>

using namespace qnbd;
using namespace qnbd::qcow2;
using namespace qnbd::qcow2::test;

namespace {

constexpr unsigned kBits = 12;  // 4 KiB clusters: many moves in little memory
constexpr std::uint64_t kCluster = 1u << kBits;
constexpr std::uint64_t kSize = 1 << 20;

std::unique_ptr<Image> open_image(boost::asio::io_context& ctx, std::vector<std::byte> bytes,
                                  bool lazy, io::MemoryFile** raw = nullptr) {
  auto f = std::make_unique<io::MemoryFile>(std::move(bytes));
  if (raw) *raw = f.get();
  LoadOptions o;
  o.name = "defrag";
  o.lazy_refcounts = lazy;
  o.writeback_interval = 0;
  return run(ctx, load_image(std::move(f), o, nullptr));
}

void ok(boost::asio::io_context& ctx, task<> t) {
  auto r = run(ctx, std::move(t));
  REQUIRE_MESSAGE(r.has_value(), r.error().message());
}

// Clusters written in random order (each its own byte), some discarded.
std::vector<std::byte> fragment(boost::asio::io_context& ctx, Image& img, std::mt19937& rng) {
  std::vector<std::byte> model(kSize);
  std::vector<std::uint64_t> order(kSize / kCluster);
  for (std::uint64_t i = 0; i < order.size(); ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), rng);
  for (std::uint64_t c : order) {
    const auto v = pattern(kCluster, static_cast<int>(1 + c % 250));
    ok(ctx, img.write(c * kCluster, v, false));
    std::copy(v.begin(), v.end(), model.begin() + static_cast<std::ptrdiff_t>(c * kCluster));
  }
  for (int i = 0; i < 40; ++i) {
    const std::uint64_t c = rng() % order.size();
    ok(ctx, img.trim(c * kCluster, kCluster, false));
    std::fill_n(model.begin() + static_cast<std::ptrdiff_t>(c * kCluster), kCluster, std::byte{0});
  }
  ok(ctx, img.flush());
  return model;
}

std::vector<std::byte> read_all(boost::asio::io_context& ctx, Image& img) {
  std::vector<std::byte> got(kSize);
  ok(ctx, img.read(0, got));
  return got;
}

// The figures only (a result<Plan> through the test's run() trips GCC's
// maybe-uninitialized warning).
defrag::Stats stats_of(boost::asio::io_context& ctx, Defragmenter& d) {
  auto s = run(ctx, [](Defragmenter& d) -> task<defrag::Stats> {
    auto p = co_await d.plan();
    if (!p) co_return p.error();
    co_return p->stats;
  }(d));
  REQUIRE(s.has_value());
  return *s;
}

}  // namespace

TEST_CASE("defrag: a complete pass makes data contiguous, compacts, and checks clean") {
  for (bool lazy : {false, true}) {
    CAPTURE(lazy);
    boost::asio::io_context ctx;
    std::mt19937 rng(lazy ? 2 : 1);
    io::MemoryFile* raw = nullptr;
    auto img = open_image(ctx, make_image(kBits, kSize), lazy, &raw);
    const auto model = fragment(ctx, *img, rng);
    Defragmenter d(*img);
    CHECK(stats_of(ctx, d).breaks > 50);
    const std::uint64_t size_before = raw->contents().size();
    for (int cycles = 0;; ++cycles) {
      REQUIRE(cycles < 1000);
      auto c = run(ctx, d.cycle(16));
      REQUIRE_MESSAGE(c.has_value(), c.error().message());
      if (c->remaining == 0) break;
    }
    auto end = run(ctx, d.compact());
    REQUIRE(end.has_value());
    CHECK(*end <= size_before - 30 * kCluster);
    CHECK(read_all(ctx, *img) == model);
    const auto after = stats_of(ctx, d);
    CHECK(after.breaks == 0);
    CHECK(after.free_clusters == 0);
    ok(ctx, img->close());
    CHECK(qemu_check(raw->contents()) == 0);
  }
}

TEST_CASE("defrag: a power loss at any sync of a pass loses nothing and corrupts nothing") {
  // The dirty-bit repair logs every stale refcount it fixes.
  const auto level = spdlog::get_level();
  spdlog::set_level(spdlog::level::err);
  for (std::uint32_t seed = 1; seed <= 24; ++seed) {
    CAPTURE(seed);
    const bool lazy = seed % 3 == 0;
    boost::asio::io_context ctx;
    std::mt19937 rng(seed);
    io::MemoryFile* raw = nullptr;
    auto img = open_image(ctx, make_image(kBits, kSize), lazy, &raw);
    const auto model = fragment(ctx, *img, rng);
    // The power fails at some sync of the pass: that sync and every later
    // operation fail, then the unsynced writes land or not at random.
    raw->inject({io::MemoryFile::Op::Sync, EIO, rng() % 60, 1u << 30, false});
    Defragmenter d(*img);
    for (int cycles = 0; cycles < 1000; ++cycles) {
      auto c = run(ctx, d.cycle(1 + rng() % 24));
      if (!c || c->remaining == 0) break;
    }
    raw->crash(0.5, seed);
    auto survived = std::make_unique<io::MemoryFile>(raw->contents());
    if (lazy) REQUIRE(run(ctx, check::repair_dirty_image(*survived)).has_value());
    const int rc = qemu_check(survived->contents());
    CHECK((rc == 0 || rc == 3));
    auto again = open_image(ctx, survived->contents(), lazy);
    CHECK(read_all(ctx, *again) == model);
  }
  spdlog::set_level(level);
}
