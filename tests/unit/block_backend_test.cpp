// The BlockBackend contract (backend/block_backend.h) holds for both
// backends: it is checked once, in the base class, before any do_* runs.
#include "backend/raw_backend.h"
#include "engine_fixture.h"
#include "qcow2/qcow2_backend.h"

#include <doctest/doctest.h>

namespace qnbd::qcow2::test {
namespace {

constexpr std::uint64_t kSize = 1 << 20;

error_code failure(boost::asio::io_context& ctx, task<> t) {
  auto r = run(ctx, std::move(t));
  return r ? error_code{} : r.error();
}

// Breaks of the contract fail alike whatever the backend, and leave the
// device as it was.
void check_contract(boost::asio::io_context& ctx, BlockBackend& be) {
  REQUIRE(be.size() == kSize);
  std::vector<std::byte> buf(512, std::byte{7});
  const error_code out_of_range = errc::out_of_range;
  CHECK(failure(ctx, be.read(kSize - 256, buf)) == out_of_range);
  CHECK(failure(ctx, be.read(~0ULL - 10, buf)) == out_of_range);
  CHECK(failure(ctx, be.write(kSize, buf, false)) == out_of_range);
  CHECK(failure(ctx, be.write_zeroes(kSize - 1, 2, true, false, false)) == out_of_range);
  CHECK(failure(ctx, be.trim(~0ULL, 1, false)) == out_of_range);
  CHECK(failure(ctx, be.cache(kSize + 1, 0)) == out_of_range);
  CHECK(!run(ctx, be.block_status(0, 0)));
  CHECK(!run(ctx, be.block_status(kSize, 1)));
  // Zero-length requests at the end succeed and change nothing.
  CHECK(!failure(ctx, be.write(kSize, std::span<const std::byte>(), true)));
  CHECK(!failure(ctx, be.trim(kSize, 0, false)));
  CHECK(!failure(ctx, be.write_zeroes(0, 0, false, false, false)));
  CHECK(!failure(ctx, be.read(0, buf)));
  CHECK(buf == std::vector<std::byte>(512));
  auto extents = run(ctx, be.block_status(0, kSize));
  REQUIRE(extents.has_value());
  REQUIRE(!extents->empty());
  for (const auto& e : *extents) CHECK(e.length > 0);
}

}  // namespace

TEST_CASE("backend contract: raw and qcow2 backends refuse the same requests") {
  boost::asio::io_context ctx;
  SUBCASE("raw") {
    RawBackend be(std::make_unique<io::MemoryFile>(std::vector<std::byte>(kSize)));
    check_contract(ctx, be);
  }
  SUBCASE("qcow2") {
    Fixture f;
    f.open(make_image(16, kSize));
    Qcow2Backend be(std::move(f.image));
    check_contract(f.ctx, be);
  }
  SUBCASE("read-only raw refuses every write kind") {
    RawBackend be(std::make_unique<io::MemoryFile>(std::vector<std::byte>(kSize), true));
    std::vector<std::byte> buf(512);
    const error_code read_only = errc::read_only;
    CHECK(failure(ctx, be.write(0, buf, false)) == read_only);
    CHECK(failure(ctx, be.write_zeroes(0, 512, true, false, false)) == read_only);
    CHECK(failure(ctx, be.trim(0, 512, false)) == read_only);
    CHECK(!failure(ctx, be.read(0, buf)));
  }
}

}  // namespace qnbd::qcow2::test
