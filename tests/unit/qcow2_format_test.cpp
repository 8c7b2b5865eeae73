// Unit tests of the pure qcow2 codecs: address math, entry codecs, refcount
// packing, header parse/encode and its sanity checks, snapshot table,
// compression.
#include "qcow2/format/compression.h"
#include "qcow2/format/entries.h"
#include "qcow2/format/header.h"
#include "qcow2/format/snapshot.h"
#include "qcow2/meta/backing.h"

#include <doctest/doctest.h>

#include <numeric>
#include <random>
#include <vector>

using namespace qnbd::qcow2::format;

namespace {

Header sample_header() {
  Header h;
  h.version = 3;
  h.cluster_bits = 16;
  h.size = 1ull << 30;
  h.l1_size = 2;
  h.l1_table_offset = 0x30000;
  h.refcount_table_offset = 0x10000;
  h.refcount_table_clusters = 1;
  h.backing_file = "base.raw";
  h.backing_format = "raw";
  h.feature_table.push_back({FeatureName::Incompatible, 5, "future feature"});
  h.unknown_extensions.push_back({0x12345678, {std::byte{1}, std::byte{2}, std::byte{3}}});
  return h;
}

}  // namespace

TEST_CASE("qcow2 geometry: address math for 64 KiB clusters") {
  Geometry g(16, false, 4);
  CHECK(g.cluster_size() == 65536);
  CHECK(g.l2_entries() == 8192);
  CHECK(g.l2_coverage() == 512ull << 20);
  CHECK(g.l1_index((512ull << 20) + 5) == 1);
  CHECK(g.l2_index(3 * 65536 + 7) == 3);
  CHECK(g.refblock_entries() == 32768);
  CHECK(g.l1_entries_for(1ull << 30) == 2);
  CHECK(g.csize_shift() == 54);
  Geometry x(16, true, 0);
  CHECK(x.l2_entries() == 4096);
  CHECK(x.subcluster_size() == 2048);
  CHECK(x.subcluster_index(2048 * 5 + 1) == 5);
  CHECK(x.refblock_entries() == 65536 * 8);
  Geometry big(21, false, 6);
  CHECK(big.csize_shift() == 49);
  CHECK(big.refblock_entries() == (2u << 20) / 8);
}

TEST_CASE("qcow2 entries: cluster and subcluster types") {
  Geometry g(16, false, 4);
  CHECK(cluster_type(g, {0, 0}) == ClusterType::Unallocated);
  CHECK(cluster_type(g, {QCOW_OFLAG_ZERO, 0}) == ClusterType::ZeroPlain);
  CHECK(cluster_type(g, {0x50000 | QCOW_OFLAG_ZERO, 0}) == ClusterType::ZeroAlloc);
  CHECK(cluster_type(g, {0x50000 | QCOW_OFLAG_COPIED, 0}) == ClusterType::Normal);
  CHECK(cluster_type(g, {QCOW_OFLAG_COMPRESSED | 77, 0}) == ClusterType::Compressed);
  CHECK(subcluster_type(g, {0x50000, 0}, 0) == SubclusterType::Normal);

  Geometry x(16, true, 4);
  L2Entry e{0x50000 | QCOW_OFLAG_COPIED, sc_alloc_bit(0) | sc_zero_bit(1)};
  CHECK(subcluster_type(x, e, 0) == SubclusterType::Normal);
  CHECK(subcluster_type(x, e, 1) == SubclusterType::ZeroAlloc);
  CHECK(subcluster_type(x, e, 2) == SubclusterType::UnallocatedAlloc);
  CHECK(subcluster_type(x, {0, sc_zero_bit(3)}, 3) == SubclusterType::ZeroPlain);
  CHECK(subcluster_type(x, {0, sc_zero_bit(3)}, 4) == SubclusterType::UnallocatedPlain);
  CHECK(subcluster_type(x, {0, sc_alloc_bit(3)}, 4) == SubclusterType::Invalid);
  CHECK(subcluster_type(x, {0x50000, sc_alloc_bit(3) | sc_zero_bit(3)}, 0) ==
        SubclusterType::Invalid);
  CHECK(sc_range_mask(2, 3) == 0x1cu);
  CHECK(sc_range_mask(0, 32) == 0xffffffffu);
  CHECK(l2_reserved_bits_set(x, {0x50000 | QCOW_OFLAG_ZERO, 0}));
  CHECK_FALSE(l2_reserved_bits_set(g, {0x50000 | QCOW_OFLAG_ZERO, 0}));
  CHECK(l2_reserved_bits_set(g, {0x50000 | 2, 0}));
}

TEST_CASE("qcow2 entries: L2 table load/store, standard and extended") {
  for (bool ext : {false, true}) {
    Geometry g(16, ext, 4);
    std::vector<std::byte> table(g.cluster_size());
    L2Entry e{0x123450000ull | QCOW_OFLAG_COPIED, ext ? 0xff00000000ffull : 0};
    store_l2(g, table.data(), 17, e);
    CHECK(load_l2(g, table.data(), 17) == e);
    CHECK(load_l2(g, table.data(), 16) == L2Entry{});
    CHECK(std::to_integer<int>(table[17 * g.l2_entry_size()]) == 0x80);
  }
}

TEST_CASE("qcow2 entries: compressed descriptors match QEMU's formula") {
  Geometry g(16, false, 4);
  L2Entry e;
  REQUIRE(encode_compressed(g, 0x12345, 3000, e));
  auto d = decode_compressed(g, e);
  CHECK(d.host_offset == 0x12345);
  // (0x12345 + 3000 - 1)/512 - 0x12345/512 additional sectors, +1
  CHECK(d.sectors == (0x12345 + 3000 - 1) / 512 - 0x12345 / 512 + 1);
  CHECK(d.size() >= 3000);
  CHECK(d.size() == d.sectors * 512 - (0x12345 & 511));
  CHECK(cluster_type(g, e) == ClusterType::Compressed);
  Geometry small(9, false, 4);
  CHECK_FALSE(encode_compressed(small, 0x1100, 1024, e));  // 2 extra sectors, 1 bit field
  CHECK(encode_compressed(small, 0x1000, 512, e));
}

TEST_CASE("qcow2 entries: refcounts of every width") {
  for (unsigned order = 0; order <= 6; ++order) {
    std::vector<std::byte> block(512);
    const unsigned bits = 1u << order;
    const std::uint64_t entries = 512 * 8 / bits;
    const std::uint64_t max = bits == 64 ? ~0ull : (1ull << bits) - 1;
    for (std::uint64_t i = 0; i < entries; ++i) set_refcount(block.data(), order, i, (i * 7) & max);
    for (std::uint64_t i = 0; i < entries; ++i)
      CHECK(get_refcount(block.data(), order, i) == ((i * 7) & max));
    set_refcount(block.data(), order, 3, max);
    CHECK(get_refcount(block.data(), order, 3) == max);
    CHECK(get_refcount(block.data(), order, 2) == ((2 * 7) & max));
  }
  std::vector<std::byte> b(8);
  set_refcount(b.data(), 0, 1, 1);  // QEMU: byte[i/8] >> (i%8)
  CHECK(std::to_integer<int>(b[0]) == 2);
  set_refcount(b.data(), 1, 5, 3);  // byte[i/4] >> 2*(i%4)
  CHECK(std::to_integer<int>(b[1]) == 0x0c);
  set_refcount(b.data(), 4, 3, 0x0102);
  CHECK(std::to_integer<int>(b[6]) == 1);
  CHECK(std::to_integer<int>(b[7]) == 2);
}

TEST_CASE("qcow2 header: encode and parse round trip") {
  Header h = sample_header();
  auto c0 = encode_header(h);
  CHECK(c0.size() == 65536);
  Header p = parse_header(c0);
  CHECK(p.version == 3);
  CHECK(p.size == h.size);
  CHECK(p.l1_table_offset == h.l1_table_offset);
  CHECK(p.backing_file == "base.raw");
  CHECK(p.backing_format == "raw");
  CHECK(p.header_length == 112);
  REQUIRE(p.unknown_extensions.size() == 1);
  CHECK(p.unknown_extensions[0].type == 0x12345678);
  CHECK(p.unknown_extensions[0].data.size() == 3);
  REQUIRE(p.feature_table.size() == 1);
  CHECK(p.feature_table[0].name == "future feature");
  CHECK(encode_header(p) == c0);
  CHECK_NOTHROW(validate_layout(p, 0x40000));
}

TEST_CASE("qcow2 header: version 2 round trip") {
  Header h = sample_header();
  h.version = 2;
  h.feature_table.clear();
  auto c0 = encode_header(h);
  Header p = parse_header(c0);
  CHECK(p.version == 2);
  CHECK(p.refcount_order == 4);
  CHECK(p.header_length == 72);
  CHECK(p.backing_file == "base.raw");
}

namespace {

std::string parse_error(std::vector<std::byte> c0) {
  try {
    parse_header(c0);
  } catch (const FormatError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("qcow2 header: malformed headers give clear errors") {
  const auto good = encode_header(sample_header());
  auto edit32 = [&](std::size_t off, std::uint32_t v) {
    auto c = good;
    store_be32(c.data() + off, v);
    return c;
  };
  auto edit64 = [&](std::size_t off, std::uint64_t v) {
    auto c = good;
    store_be64(c.data() + off, v);
    return c;
  };
  CHECK(parse_error(edit32(0, 0x12345678)) == "not a qcow2 image (bad magic)");
  CHECK(parse_error(edit32(4, 4)) == "unsupported qcow2 version 4");
  CHECK(parse_error(edit32(20, 8)) == "unsupported cluster size: 2^8");
  CHECK(parse_error(edit32(20, 22)) == "unsupported cluster size: 2^22");
  CHECK(parse_error(edit64(72, 1ull << 5)) ==
        "unsupported incompatible feature bit 5 (future feature)");
  CHECK(parse_error(edit64(72, 1ull << 9)) == "unsupported incompatible feature bit 9 (unknown)");
  CHECK(parse_error(edit32(96, 7)) == "reference count entry width too large (128 bits)");
  CHECK(parse_error(edit32(100, 100)) == "qcow2 header too short");
  CHECK(parse_error(edit32(36, 0x1000000)) == "active L1 table too large");
  CHECK(parse_error(edit32(36, 1)) == "L1 table is too small");
  CHECK(parse_error(edit64(40, 0x30001)) == "active L1 table offset invalid");
  CHECK(parse_error(edit32(56, 0x100000)) == "reference count table too large");
  CHECK(parse_error(edit32(56, 0)) == "image does not contain a reference count table");
  CHECK(parse_error(edit32(60, 70000)) == "snapshot table too large");
  CHECK(parse_error(edit32(32, 1)) == "encrypted images are not supported (crypt_method 1)");
  CHECK(parse_error(edit64(72, QCOW2_INCOMPAT_COMPRESSION)) ==
        "compression type field and compression type feature bit disagree");
  CHECK(parse_error(edit64(8, 70000)) == "invalid backing file offset");
  CHECK(parse_error(edit32(16, 2000)) == "backing file name too long");
  // An extension whose length runs past the end of cluster 0.
  auto c = good;
  store_be32(c.data() + 112 + 4, 0x10000);
  CHECK(parse_error(c).find("too large") != std::string::npos);
  CHECK(parse_error(std::vector<std::byte>(good.begin(), good.begin() + 50)) ==
        "file too short for a qcow2 header");
  // Extended L2 with 4 KiB clusters.
  Header x = sample_header();
  x.cluster_bits = 12;
  x.l1_size = 1024;
  x.incompatible_features = QCOW2_INCOMPAT_EXTL2;
  x.l1_table_offset = x.refcount_table_offset = 0x1000;
  x.backing_file.clear();
  x.feature_table.clear();
  x.unknown_extensions.clear();
  CHECK(parse_error(encode_header(x)) ==
        "extended L2 entries need a cluster size of at least 16 KiB");
}

TEST_CASE("qcow2 header: layout checks against the file size") {
  Header h = parse_header(encode_header(sample_header()));
  CHECK_THROWS_WITH_AS(validate_layout(h, 0x20000),
                       "active L1 table lies beyond the end of the file", FormatError);
  h.refcount_table_offset = 0;
  CHECK_THROWS_WITH_AS(validate_layout(h, 0x40000),
                       "reference count table overlaps the qcow2 header", FormatError);
}

TEST_CASE("qcow2 snapshots: table round trip and bounds") {
  Header h = sample_header();
  std::vector<Snapshot> s(2);
  s[0].l1_table_offset = 0x50000;
  s[0].l1_size = 2;
  s[0].id = "1";
  s[0].name = "first";
  s[0].extra_data.resize(24);
  store_be64(s[0].extra_data.data() + 8, 12345);
  s[1].l1_table_offset = 0x60000;
  s[1].id = "2";
  s[1].name = "second snapshot";
  auto t = encode_snapshot_table(s);
  CHECK(t.size() % 8 == 0);
  auto p = parse_snapshot_table(t, 2, h);
  REQUIRE(p.size() == 2);
  CHECK(p[0].name == "first");
  CHECK(p[0].disk_size == 12345);
  CHECK(p[1].name == "second snapshot");
  CHECK(p[1].l1_table_offset == 0x60000);
  CHECK_THROWS_AS(parse_snapshot_table(std::span(t).first(50), 2, h), FormatError);
  store_be64(t.data(), 0x50001);
  CHECK_THROWS_WITH_AS(parse_snapshot_table(t, 2, h),
                       "snapshot 0: snapshot L1 table offset invalid", FormatError);
}

TEST_CASE("qcow2 compression: deflate and zstd round trip") {
  std::vector<std::byte> in(65536);
  std::mt19937 rng(1);
  for (std::size_t i = 0; i < in.size(); ++i)
    in[i] = static_cast<std::byte>(i % 97 < 50 ? 0 : rng() & 0xff);
  for (std::uint8_t type : {QCOW2_COMPRESSION_TYPE_ZLIB, QCOW2_COMPRESSION_TYPE_ZSTD}) {
    std::vector<std::byte> comp(in.size() - 1);
    const std::size_t n = compress_cluster(type, in, comp);
    REQUIRE(n > 0);
    // Trailing garbage up to the sector end is ignored.
    std::vector<std::byte> stored(comp.begin(), comp.begin() + n);
    stored.resize((n + 511) / 512 * 512, std::byte{0xaa});
    std::vector<std::byte> out(in.size());
    CHECK(decompress_cluster(type, stored, out));
    CHECK(out == in);
    CHECK_FALSE(decompress_cluster(type, std::span(stored).first(n / 2), out));
    std::vector<std::byte> junk(n, std::byte{0x5a});
    CHECK_FALSE(decompress_cluster(type, junk, out));
  }
}

TEST_CASE("qcow2 backing names: only plain file paths are followed") {
  using namespace qnbd::qcow2::meta;
  CHECK(is_plain_backing_name("base.qcow2"));
  CHECK(is_plain_backing_name("/images/base.qcow2"));
  CHECK(is_plain_backing_name("dir/a:b.qcow2"));  // ':' after a '/' is part of the path
  CHECK_FALSE(is_plain_backing_name(""));
  CHECK_FALSE(is_plain_backing_name(std::string("base\0/etc/passwd", 16)));
  for (const char* bad : {"json:{\"file.filename\":\"/etc/passwd\"}", "nbd:localhost:10809",
                          "nbd://127.0.0.1/x", "http://host/img", "file:base.qcow2"})
    CHECK_FALSE(is_plain_backing_name(bad));
  CHECK(backing_path("img/top.qcow2", "base.qcow2") == "img/base.qcow2");
  CHECK(backing_path("top.qcow2", "base.qcow2") == "base.qcow2");
  CHECK(backing_path("img/top.qcow2", "/abs/base") == "/abs/base");
  CHECK_THROWS_WITH(backing_path("top.qcow2", "nbd:h:1"),
                    "backing file name 'nbd:h:1' is not a plain file path; refusing to open it");
  BackingChain chain;
  chain.add("/nonexistent/a");
  chain.add("/nonexistent/b");
  CHECK_THROWS_WITH(chain.add("/nonexistent/a"), "/nonexistent/a: backing chain loop");
}
