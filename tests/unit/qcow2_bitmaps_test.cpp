// The bitmaps extension codec and the in-memory dirty bitmap.
#include "qcow2/engine/bitmaps.h"
#include "qcow2/format/bitmaps.h"
#include "qcow2/format/endian.h"

#include <doctest/doctest.h>

using namespace qnbd::qcow2;
using namespace qnbd::qcow2::format;

namespace {

Header header_with(std::uint32_t nb, std::uint64_t dir_size) {
  Header h;
  h.size = 64ull << 20;
  h.autoclear_features = QCOW2_AUTOCLEAR_BITMAPS;
  h.bitmaps = BitmapsExtension{nb, dir_size, 0x30000};
  return h;
}

BitmapEntry entry(const std::string& name, std::uint32_t flags) {
  BitmapEntry e;
  e.name = name;
  e.flags = flags;
  e.table_offset = 0x40000;
  e.table_size = 1;
  return e;
}

}  // namespace

TEST_CASE("bitmap directory: encode then parse gives the same entries") {
  std::vector<BitmapEntry> in{entry("b0", BME_FLAG_AUTO), entry("a-longer-name", 0)};
  Header h = header_with(2, 0);
  auto dir = encode_bitmap_directory(in, h);
  CHECK(dir.size() == 32 + 40);  // 24 + name, padded to 8
  auto out = parse_bitmap_directory(dir, h);
  REQUIRE(out.size() == 2);
  CHECK(out[0].name == "b0");
  CHECK(out[0].enabled());
  CHECK(out[1].name == "a-longer-name");
  CHECK(out[1].granularity() == 65536);
}

TEST_CASE("bitmap directory: QEMU's rules refuse bad entries") {
  Header h = header_with(1, 0);
  auto dir = encode_bitmap_directory({entry("b0", 0)}, h);
  SUBCASE("count mismatch") {
    h.bitmaps->nb_bitmaps = 2;
    CHECK_THROWS_WITH(parse_bitmap_directory(dir, h),
                      "Less bitmaps found than specified in header extension");
  }
  SUBCASE("reserved flag") {
    store_be32(dir.data() + 12, 4);
    CHECK_THROWS_WITH(parse_bitmap_directory(dir, h),
                      "Bitmap 'b0' doesn't satisfy the constraints");
  }
  SUBCASE("granularity below 512") {
    dir[17] = std::byte{8};
    CHECK_THROWS(parse_bitmap_directory(dir, h));
  }
  SUBCASE("table too small for the disk unless in use") {
    h.size = 1ull << 40;  // 64 KiB granularity: 2 MiB of bits, 32 clusters
    CHECK_THROWS(parse_bitmap_directory(dir, h));
    store_be32(dir.data() + 12, BME_FLAG_IN_USE);
    CHECK(parse_bitmap_directory(dir, h).at(0).in_use());
  }
  SUBCASE("extra data") {
    store_be32(dir.data() + 20, 8);
    CHECK_THROWS(parse_bitmap_directory(dir, h));
  }
  SUBCASE("truncated") {
    CHECK_THROWS_WITH(parse_bitmap_directory(std::span(dir).first(20), h),
                      "Broken bitmap directory");
  }
}

TEST_CASE("bitmap table entries") {
  CHECK(bitmap_table_entry_valid(0, 65536));
  CHECK(bitmap_table_entry_valid(BME_TABLE_ENTRY_FLAG_ALL_ONES, 65536));
  CHECK(bitmap_table_entry_valid(0x50000, 65536));
  CHECK_FALSE(bitmap_table_entry_valid(0x50000 | BME_TABLE_ENTRY_FLAG_ALL_ONES, 65536));
  CHECK_FALSE(bitmap_table_entry_valid(0x50200, 65536));
  CHECK_FALSE(bitmap_table_entry_valid(1ull << 60, 65536));
  CHECK(bitmap_table_entries(64ull << 20, 16, 65536) == 1);
  CHECK(bitmap_table_entries(1ull << 40, 9, 65536) == 4096);
  CHECK(bitmap_constraint_error("x", 8, 1 << 20, 65536) ==
        "Granularity is under minimum (512 bytes)");
}

TEST_CASE("dirty bitmap: marks granules and reports runs") {
  DirtyBitmap b;
  b.entry.granularity_bits = 16;
  const std::uint64_t size = 64ull << 20;
  b.fill(false, size);
  b.mark(65535, 2);  // touches granules 0 and 1
  b.mark(100 << 16, 200 << 16);
  auto runs = b.runs(0, size, size);
  using R = std::vector<std::pair<std::uint64_t, bool>>;
  CHECK(runs == R{{2 << 16, true}, {98 << 16, false}, {200 << 16, true}, {724 << 16, false}});
  CHECK(b.runs(1 << 16, 1, size) == R{{1, true}});
  b.fill(true, size);
  CHECK(b.runs(0, size, size) == R{{size, true}});
}
