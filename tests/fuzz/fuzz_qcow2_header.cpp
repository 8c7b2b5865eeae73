// libFuzzer target for the pure qcow2 codecs (qcow2/format/).
//
// An input that starts with the qcow2 magic is an image prefix: cluster 0 is
// parsed as the header (with extensions and backing name), then, when the
// input reaches that far, the snapshot table at snapshots_offset. Any other
// input is: one selector byte, then
//   0  a geometry and an L2 table / refcount block (entry codecs,
//      subcluster bitmaps, compressed descriptors, refcount packing)
//   1  a snapshot table with a fuzzed entry count
//   2  compressed cluster data (zlib and zstd) and a compress round trip
// Every parser must either throw FormatError or return a value whose
// invariants hold and which encodes back to an equal value.
#include "tests/fuzz/fuzz_check.h"
#include "qcow2/format/compression.h"
#include "qcow2/format/entries.h"
#include "qcow2/format/header.h"
#include "qcow2/format/snapshot.h"

#include "tests/fuzz/data_provider.h"

#include <algorithm>
#include <bit>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

using namespace qnbd::qcow2::format;

void check_geometry(const Geometry& g) {
  FUZZ_CHECK(g.l2_entries() * g.l2_entry_size() == g.cluster_size());
  FUZZ_CHECK(g.refblock_entries() * g.refcount_bits() == g.cluster_size() * 8);
  FUZZ_CHECK(g.subclusters_per_cluster() * g.subcluster_size() == g.cluster_size());
  FUZZ_CHECK(g.subcluster_size() >= 512);
}

// What parse_header promises about an accepted header.
void check_header_invariants(const Header& h, std::size_t input_size) {
  FUZZ_CHECK(h.version == 2 || h.version == 3);
  FUZZ_CHECK(h.cluster_bits >= MIN_CLUSTER_BITS && h.cluster_bits <= MAX_CLUSTER_BITS);
  FUZZ_CHECK(h.refcount_order <= MAX_REFCOUNT_ORDER);
  FUZZ_CHECK((h.incompatible_features & ~QCOW2_INCOMPAT_MASK) == 0);
  FUZZ_CHECK(h.crypt_method == QCOW_CRYPT_NONE);
  FUZZ_CHECK(h.compression_type <= QCOW2_COMPRESSION_TYPE_ZSTD);
  if (h.version == 3) {
    FUZZ_CHECK(h.header_length >= QCOW2_V3_HEADER_LENGTH && h.header_length % 8 == 0);
    FUZZ_CHECK(h.header_length <= h.cluster_size() && h.header_length <= input_size);
  }
  if (h.extended_l2()) FUZZ_CHECK(h.cluster_bits >= MIN_EXTL2_CLUSTER_BITS);
  FUZZ_CHECK(h.backing_file.size() <= MAX_BACKING_FILE_NAME);
  FUZZ_CHECK(h.backing_format.size() <= MAX_BACKING_FORMAT_NAME);
  const std::uint64_t cs = h.cluster_size();
  FUZZ_CHECK(h.refcount_table_clusters > 0);
  FUZZ_CHECK(std::uint64_t{h.refcount_table_clusters} * cs <= QCOW_MAX_REFTABLE_SIZE);
  FUZZ_CHECK(std::uint64_t{h.l1_size} * 8 <= QCOW_MAX_L1_SIZE);
  FUZZ_CHECK(h.nb_snapshots <= QCOW_MAX_SNAPSHOTS);
  for (std::uint64_t off : {h.refcount_table_offset, h.l1_table_offset, h.snapshots_offset})
    FUZZ_CHECK(off % cs == 0 && off <= QCOW_MAX_CLUSTER_OFFSET);
  FUZZ_CHECK(h.size <= (1ull << 62));
  const Geometry g = h.geometry();
  check_geometry(g);
  FUZZ_CHECK(h.l1_size >= g.l1_entries_for(h.size));
  if (h.bitmaps) {
    FUZZ_CHECK(h.bitmaps->nb_bitmaps > 0 && h.bitmaps->nb_bitmaps <= QCOW2_MAX_BITMAPS);
    FUZZ_CHECK(h.bitmaps->directory_offset % cs == 0);
  }
  (void)h.describe_feature(FeatureName::Incompatible, 63);
}

bool same_header(const Header& a, const Header& b) {
  auto ext_eq = [](const HeaderExtension& x, const HeaderExtension& y) {
    return x.type == y.type && x.data == y.data;
  };
  auto feat_eq = [](const FeatureName& x, const FeatureName& y) {
    return x.type == y.type && x.bit == y.bit && x.name == y.name;
  };
  auto bm_eq = [](const std::optional<BitmapsExtension>& x,
                  const std::optional<BitmapsExtension>& y) {
    if (x.has_value() != y.has_value()) return false;
    return !x || (x->nb_bitmaps == y->nb_bitmaps && x->directory_size == y->directory_size &&
                  x->directory_offset == y->directory_offset);
  };
  auto crypto_eq = [](const std::optional<CryptoHeaderExtension>& x,
                      const std::optional<CryptoHeaderExtension>& y) {
    if (x.has_value() != y.has_value()) return false;
    return !x || (x->offset == y->offset && x->length == y->length);
  };
  return a.version == b.version && a.cluster_bits == b.cluster_bits && a.size == b.size &&
         a.crypt_method == b.crypt_method && a.l1_size == b.l1_size &&
         a.l1_table_offset == b.l1_table_offset &&
         a.refcount_table_offset == b.refcount_table_offset &&
         a.refcount_table_clusters == b.refcount_table_clusters &&
         a.nb_snapshots == b.nb_snapshots && a.snapshots_offset == b.snapshots_offset &&
         a.incompatible_features == b.incompatible_features &&
         a.compatible_features == b.compatible_features &&
         a.autoclear_features == b.autoclear_features && a.refcount_order == b.refcount_order &&
         a.compression_type == b.compression_type &&
         a.unknown_header_fields == b.unknown_header_fields && a.backing_file == b.backing_file &&
         a.backing_format == b.backing_format && a.data_file == b.data_file &&
         std::equal(a.feature_table.begin(), a.feature_table.end(), b.feature_table.begin(),
                    b.feature_table.end(), feat_eq) &&
         bm_eq(a.bitmaps, b.bitmaps) && crypto_eq(a.crypto_header, b.crypto_header) &&
         std::equal(a.unknown_extensions.begin(), a.unknown_extensions.end(),
                    b.unknown_extensions.begin(), b.unknown_extensions.end(), ext_eq);
}

void check_snapshot(const Snapshot& s, const Header& h) {
  FUZZ_CHECK(std::uint64_t{s.l1_size} * 8 <= QCOW_MAX_L1_SIZE);
  FUZZ_CHECK(s.l1_table_offset % h.cluster_size() == 0);
  FUZZ_CHECK(s.l1_table_offset <= QCOW_MAX_CLUSTER_OFFSET);
  FUZZ_CHECK(s.extra_data.size() <= QCOW_MAX_SNAPSHOT_EXTRA_DATA);
  FUZZ_CHECK(s.id.size() <= 0xffff && s.name.size() <= 0xffff);
}

bool same_snapshot(const Snapshot& a, const Snapshot& b) {
  return a.l1_table_offset == b.l1_table_offset && a.l1_size == b.l1_size && a.id == b.id &&
         a.name == b.name && a.date_sec == b.date_sec && a.date_nsec == b.date_nsec &&
         a.vm_clock_nsec == b.vm_clock_nsec && a.vm_state_size == b.vm_state_size &&
         a.disk_size == b.disk_size && a.extra_data == b.extra_data;
}

void fuzz_snapshot_table(std::span<const std::byte> table, std::uint32_t count, const Header& h) {
  std::vector<Snapshot> snaps;
  try {
    snaps = parse_snapshot_table(table, count, h);
  } catch (const FormatError&) {
    return;
  }
  FUZZ_CHECK(snaps.size() == count);
  for (const auto& s : snaps) check_snapshot(s, h);
  const auto encoded = encode_snapshot_table(snaps);
  FUZZ_CHECK(encoded.size() % 8 == 0);
  const auto again = parse_snapshot_table(encoded, count, h);  // must not throw
  FUZZ_CHECK(std::equal(snaps.begin(), snaps.end(), again.begin(), again.end(), same_snapshot));
}

void fuzz_image_prefix(std::span<const std::byte> in) {
  Header h;
  try {
    const std::uint64_t cs = probe_cluster_size(in);
    FUZZ_CHECK(cs >= 512 && cs <= (2u << 20) && std::has_single_bit(cs));
    h = parse_header(in.first(std::min<std::size_t>(in.size(), cs)));
  } catch (const FormatError&) {
    return;
  }
  check_header_invariants(h, in.size());

  // Tables the layout check accepts lie inside the file, after cluster 0.
  for (std::uint64_t file_size :
       {std::uint64_t{in.size()}, std::uint64_t{1} << 40, ~std::uint64_t{0}}) {
    try {
      validate_layout(h, file_size);
    } catch (const FormatError&) {
      continue;
    }
    const std::uint64_t cs = h.cluster_size();
    if (h.l1_size)
      FUZZ_CHECK(h.l1_table_offset >= cs &&
                 h.l1_table_offset + std::uint64_t{h.l1_size} * 8 <= file_size);
    FUZZ_CHECK(h.refcount_table_offset >= cs);
    FUZZ_CHECK(h.refcount_table_offset + std::uint64_t{h.refcount_table_clusters} * cs <=
               file_size);
  }

  // Encoding what we parsed and parsing it again gives the same header
  // (the backing name may move, and a short v3 header grows to 112 bytes).
  std::vector<std::byte> encoded;
  try {
    encoded = encode_header(h);
  } catch (const FormatError&) {
    // Only possible when the original packed cluster 0 tighter than we do.
    return;
  }
  FUZZ_CHECK(encoded.size() == h.cluster_size());
  Header again;
  try {
    again = parse_header(encoded);
  } catch (const FormatError& e) {
    std::fprintf(stderr, "re-encoded header rejected: %s\n", e.what());
    std::abort();
  }
  FUZZ_CHECK(same_header(h, again));

  if (h.nb_snapshots && h.snapshots_offset < in.size())
    fuzz_snapshot_table(in.subspan(h.snapshots_offset), h.nb_snapshots, h);
}

Geometry fuzzed_geometry(FuzzedDataProvider& in, unsigned max_cluster_bits) {
  const bool extl2 = in.ConsumeBool();
  const unsigned min_bits = extl2 ? MIN_EXTL2_CLUSTER_BITS : MIN_CLUSTER_BITS;
  const unsigned bits = in.ConsumeIntegralInRange<unsigned>(min_bits, max_cluster_bits);
  const unsigned order = in.ConsumeIntegralInRange<unsigned>(0, MAX_REFCOUNT_ORDER);
  return Geometry(bits, extl2, order);
}

void check_l2_entry(const Geometry& g, const L2Entry& e) {
  const ClusterType t = cluster_type(g, e);
  FUZZ_CHECK((t == ClusterType::Compressed) == l2_compressed(e));
  if (t == ClusterType::Normal || t == ClusterType::ZeroAlloc) FUZZ_CHECK(l2_host_offset(e) != 0);
  if (g.extended_l2()) FUZZ_CHECK(t != ClusterType::ZeroPlain && t != ClusterType::ZeroAlloc);
  (void)l2_reserved_bits_set(g, e);
  for (unsigned sc = 0; sc < g.subclusters_per_cluster(); ++sc) {
    const SubclusterType st = subcluster_type(g, e, sc);
    if (!g.extended_l2()) FUZZ_CHECK(st == subcluster_type(g, e, 0));
    if (st == SubclusterType::Normal) FUZZ_CHECK(t == ClusterType::Normal);
    if (st == SubclusterType::Compressed) FUZZ_CHECK(t == ClusterType::Compressed);
    if (st == SubclusterType::Invalid) FUZZ_CHECK(g.extended_l2());
  }
  if (t != ClusterType::Compressed) return;

  const CompressedDescriptor d = decode_compressed(g, e);
  FUZZ_CHECK(d.sectors >= 1 && d.sectors <= g.csize_mask() + 1);
  FUZZ_CHECK(d.host_offset <= g.cluster_offset_mask());
  FUZZ_CHECK(d.size() >= 1 && d.size() <= d.sectors * 512);
  // The descriptor re-encodes to the same bits (COPIED is never set on a
  // compressed entry we write, so it is not part of the comparison).
  L2Entry out;
  const bool ok = encode_compressed(g, d.host_offset, d.size(), out);
  if (d.host_offset <= QCOW_MAX_CLUSTER_OFFSET) {
    FUZZ_CHECK(ok);
    FUZZ_CHECK(out.entry == (e.entry & ~QCOW_OFLAG_COPIED));
    const CompressedDescriptor d2 = decode_compressed(g, out);
    FUZZ_CHECK(d2.host_offset == d.host_offset && d2.sectors == d.sectors);
  } else {
    FUZZ_CHECK(!ok);
  }
}

void check_refcounts(const Geometry& g, std::vector<std::byte>& block, FuzzedDataProvider& in) {
  const unsigned order = g.refcount_order();
  const std::uint64_t entries = g.refblock_entries();
  for (int i = 0; i < 8 && in.remaining_bytes() > 0; ++i) {
    const auto index = in.ConsumeIntegralInRange<std::uint64_t>(0, entries - 1);
    const auto value = in.ConsumeIntegral<std::uint64_t>() & g.refcount_max();
    const std::uint64_t before_prev = index ? get_refcount(block.data(), order, index - 1) : 0;
    const std::uint64_t before_next =
        index + 1 < entries ? get_refcount(block.data(), order, index + 1) : 0;
    FUZZ_CHECK(get_refcount(block.data(), order, index) <= g.refcount_max());
    set_refcount(block.data(), order, index, value);
    FUZZ_CHECK(get_refcount(block.data(), order, index) == value);
    if (index) FUZZ_CHECK(get_refcount(block.data(), order, index - 1) == before_prev);
    if (index + 1 < entries)
      FUZZ_CHECK(get_refcount(block.data(), order, index + 1) == before_next);
  }
}

void fuzz_entries(FuzzedDataProvider& in) {
  // Mostly small clusters (a 2 MiB table per run would dominate the time).
  const Geometry g = fuzzed_geometry(in, in.ConsumeBool() ? MAX_CLUSTER_BITS : 16);
  check_geometry(g);
  const std::uint64_t guest = in.ConsumeIntegral<std::uint64_t>();
  FUZZ_CHECK(((g.l1_index(guest) << (g.l2_bits() + g.cluster_bits())) |
              (g.l2_index(guest) << g.cluster_bits()) | g.offset_in_cluster(guest)) == guest);
  FUZZ_CHECK(g.subcluster_index(guest) < g.subclusters_per_cluster());
  const unsigned first = in.ConsumeIntegralInRange<unsigned>(0, 31);
  const unsigned count = in.ConsumeIntegralInRange<unsigned>(0, 32 - first);
  FUZZ_CHECK(static_cast<unsigned>(std::popcount(sc_range_mask(first, count))) == count);

  // The rest is a table: L2 entries, then the same bytes as a refcount block.
  std::vector<std::byte> table(g.cluster_size());
  const auto raw = in.ConsumeBytes<std::uint8_t>(
      std::min<std::size_t>(table.size(), in.remaining_bytes() / 2 + 1));
  std::copy(raw.begin(), raw.end(), reinterpret_cast<std::uint8_t*>(table.data()));
  const std::uint64_t used = std::min<std::uint64_t>(
      g.l2_entries(), (raw.size() + g.l2_entry_size() - 1) / g.l2_entry_size());
  std::vector<std::byte> copy(table.size());
  for (std::uint64_t i = 0; i < used; ++i) {
    const L2Entry e = load_l2(g, table.data(), i);
    check_l2_entry(g, e);
    store_l2(g, copy.data(), i, e);
    FUZZ_CHECK(load_l2(g, copy.data(), i) == e);
    (void)l1_reserved_bits_set(e.entry);
    (void)l1_l2_offset(e.entry);
    (void)reftable_block_offset(e.entry);
  }
  FUZZ_CHECK(std::memcmp(copy.data(), table.data(), used * g.l2_entry_size()) == 0);
  check_refcounts(g, table, in);
}

void fuzz_compression(FuzzedDataProvider& in) {
  // Small clusters keep each run fast; the codecs do not depend on the size.
  const unsigned bits =
      in.ConsumeIntegralInRange<unsigned>(MIN_CLUSTER_BITS, in.ConsumeBool() ? 16 : 12);
  const auto type = static_cast<std::uint8_t>(in.ConsumeIntegralInRange<unsigned>(0, 2));
  const auto data = in.ConsumeRemainingBytes<std::uint8_t>();
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data.data()),
                                         data.size());
  std::vector<std::byte> cluster(std::size_t{1} << bits);
  const bool ok = decompress_cluster(type, bytes, cluster);
  if (type > QCOW2_COMPRESSION_TYPE_ZSTD) FUZZ_CHECK(!ok);

  // Compressing a cluster and decompressing it gives the cluster back.
  if (type > QCOW2_COMPRESSION_TYPE_ZSTD) return;
  std::vector<std::byte> plain(cluster.size());
  std::copy_n(bytes.begin(), std::min(plain.size(), bytes.size()), plain.begin());
  std::vector<std::byte> packed(plain.size() - 1);  // must save at least a byte
  const std::size_t n = compress_cluster(type, plain, packed);
  FUZZ_CHECK(n <= packed.size());
  if (n == 0) return;
  std::vector<std::byte> unpacked(plain.size());
  // QEMU reads whole sectors: trailing garbage after the stream is ignored.
  std::vector<std::byte> stored(packed.begin(), packed.begin() + static_cast<std::ptrdiff_t>(n));
  stored.resize((n + 511) / 512 * 512, std::byte{0x5a});
  FUZZ_CHECK(decompress_cluster(type, stored, unpacked));
  FUZZ_CHECK(unpacked == plain);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> in(reinterpret_cast<const std::byte*>(data), size);
  if (size >= 4 && load_be32(in.data()) == QCOW_MAGIC) {
    fuzz_image_prefix(in);
    return 0;
  }
  if (size == 0) return 0;
  FuzzedDataProvider fdp(data + 1, size - 1);
  switch (data[0] % 3) {
    case 0:
      fuzz_entries(fdp);
      break;
    case 1: {
      Header h;
      h.cluster_bits = fdp.ConsumeIntegralInRange<unsigned>(MIN_CLUSTER_BITS, MAX_CLUSTER_BITS);
      h.size = fdp.ConsumeIntegral<std::uint64_t>();
      const auto count = fdp.ConsumeIntegralInRange<std::uint32_t>(0, 64);
      const auto table = fdp.ConsumeRemainingBytes<std::uint8_t>();
      fuzz_snapshot_table({reinterpret_cast<const std::byte*>(table.data()), table.size()}, count,
                          h);
      break;
    }
    default:
      fuzz_compression(fdp);
      break;
  }
  return 0;
}
