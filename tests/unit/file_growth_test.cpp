// io::FileGrowth over a MemoryFile: growth ahead of allocation in chunks,
// what a sync makes durable, zeros ahead only for flush-heavy clients, the
// trim at close (never below the size at open or the clusters in use), the
// cut at compaction, and failures that cost only speed.
#include "common/run_sync.h"
#include "io/file_growth.h"
#include "io/memory_file.h"

#include <doctest/doctest.h>

using namespace qnbd;
using io::FileGrowth;
using io::MemoryFile;

namespace {

constexpr std::uint64_t kCluster = 64 << 10;
constexpr std::uint64_t kMiB = 1 << 20;

void ok(boost::asio::io_context& ctx, task<> t) {
  auto r = run_until_done(ctx, std::move(t));
  REQUIRE(r.has_value());
  REQUIRE_MESSAGE(r->has_value(), r->error().message());
}

std::uint64_t size_of(const MemoryFile& f) { return f.contents().size(); }

}  // namespace

TEST_CASE("FileGrowth grows ahead in chunks and a sync makes the size durable") {
  boost::asio::io_context ctx;
  MemoryFile f{std::vector<std::byte>(2 * kCluster)};
  f.set_yield(false);
  // 64 MiB virtual size: chunks of 8 MiB (1/8 of it).
  FileGrowth g(f, "t", 64 * kMiB, kCluster);
  CHECK_FALSE(g.durable(kCluster));  // nothing synced yet
  ok(ctx, g.prepare_ahead(3 * kCluster, 1));
  CHECK(size_of(f) == 3 * kCluster + 8 * kMiB);
  CHECK_FALSE(g.durable(size_of(f)));
  ok(ctx, g.sync(false));
  CHECK(g.durable(size_of(f)));
  CHECK_FALSE(g.durable(size_of(f) + 1));
  // Well inside the chunk: no growth.
  ok(ctx, g.prepare_ahead(4 * kCluster, 1));
  CHECK(size_of(f) == 3 * kCluster + 8 * kMiB);
  // Within half a chunk of the end: the next chunk.
  ok(ctx, g.prepare_ahead(6 * kMiB, 1));
  CHECK(size_of(f) == 14 * kMiB);
}

TEST_CASE("FileGrowth writes zeros ahead only once a client is flush-heavy") {
  boost::asio::io_context ctx;
  MemoryFile f{std::vector<std::byte>(kCluster)};
  f.set_yield(false);
  FileGrowth g(f, "t", 64 * kMiB, kCluster);
  ok(ctx, g.prepare_ahead(2 * kCluster, 1));
  CHECK(f.stats().bytes_written == 0);  // growth by allocate/truncate, no writes
  g.flushed();                          // 1 new cluster in the cycle: flush-heavy
  ok(ctx, g.prepare_ahead(3 * kCluster, 1));
  CHECK(f.stats().bytes_written == kMiB);  // 1 MiB ahead of the clusters in use
  // Many clusters between flushes: no longer flush-heavy.
  ok(ctx, g.prepare_ahead(4 * kCluster, 100));
  g.flushed();
  f.reset_stats();
  ok(ctx, g.prepare_ahead(40 * kCluster, 1));
  CHECK(f.stats().bytes_written == 0);
}

TEST_CASE("FileGrowth trims at close to the size at open or the clusters in use") {
  boost::asio::io_context ctx;
  MemoryFile f{std::vector<std::byte>(5 * kCluster)};
  f.set_yield(false);
  FileGrowth g(f, "t", 64 * kMiB, kCluster);
  ok(ctx, g.prepare_ahead(5 * kCluster, 1));
  REQUIRE(size_of(f) > 5 * kCluster);
  REQUIRE(g.trim_tail(2 * kCluster));  // below the size at open: keeps that
  CHECK(size_of(f) == 5 * kCluster);
  ok(ctx, g.prepare_ahead(5 * kCluster, 1));
  REQUIRE(g.trim_tail(7 * kCluster));  // a cluster in use past it: kept
  CHECK(size_of(f) == 7 * kCluster);
}

TEST_CASE("FileGrowth shrink cuts the file, makes it durable and lowers the keep size") {
  boost::asio::io_context ctx;
  MemoryFile f{std::vector<std::byte>(10 * kCluster)};
  f.set_yield(false);
  FileGrowth g(f, "t", 64 * kMiB, kCluster);
  ok(ctx, g.shrink(4 * kCluster));
  CHECK(size_of(f) == 4 * kCluster);
  CHECK(g.durable(4 * kCluster));
  ok(ctx, g.prepare_ahead(4 * kCluster, 1));
  REQUIRE(size_of(f) > 10 * kCluster);
  REQUIRE(g.trim_tail(kCluster));  // the size at open counts as 4 clusters now
  CHECK(size_of(f) == 4 * kCluster);
}

TEST_CASE("FileGrowth: a failure to grow or to write zeros costs only speed") {
  boost::asio::io_context ctx;
  MemoryFile f{std::vector<std::byte>(kCluster)};
  f.set_yield(false);
  f.set_size_limit(2 * kCluster);  // fallocate and writes past it fail with ENOSPC
  FileGrowth g(f, "t", 64 * kMiB, kCluster);
  g.flushed();
  ok(ctx, g.prepare_ahead(kCluster, 1));
  // The sparse fallback (truncate) is not bounded by the limit; zeros are.
  CHECK(size_of(f) == kCluster + 8 * kMiB);
  g.flushed();
  f.inject({MemoryFile::Op::Write, ENOSPC, 0, 10});
  ok(ctx, g.prepare_ahead(2 * kCluster, 1));  // zeros fail: still success
  CHECK(size_of(f) == kCluster + 8 * kMiB);
}
