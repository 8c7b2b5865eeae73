#include "qcow2/create/create.h"

#include <fmt/format.h>

#include <bit>

namespace qnbd::qcow2::create {

using namespace format;

namespace {

std::uint64_t div_up(std::uint64_t a, std::uint64_t b) { return (a + b - 1) / b; }

// The feature name table qemu writes, so tools name the bits.
void add_feature_table(Header& h) {
  h.feature_table = {{FeatureName::Incompatible, 0, "dirty bit"},
                     {FeatureName::Incompatible, 1, "corrupt bit"},
                     {FeatureName::Incompatible, 2, "external data file"},
                     {FeatureName::Incompatible, 3, "compression type"},
                     {FeatureName::Incompatible, 4, "extended L2 entries"},
                     {FeatureName::Compatible, 0, "lazy refcounts"},
                     {FeatureName::Autoclear, 0, "bitmaps"},
                     {FeatureName::Autoclear, 1, "raw external data"}};
}

Header make_header(const CreateOptions& o) {
  Header h;
  h.version = o.version;
  h.cluster_bits = static_cast<std::uint32_t>(std::countr_zero(o.cluster_size));
  h.size = o.size;
  h.refcount_order = static_cast<std::uint32_t>(std::countr_zero(o.refcount_bits));
  h.backing_file = o.backing_file;
  h.backing_format = o.backing_format;
  if (o.version >= 3) {
    h.header_length = QCOW2_V3_HEADER_LENGTH + 8;
    h.compression_type = o.compression_type;
    if (o.compression_type != QCOW2_COMPRESSION_TYPE_ZLIB)
      h.incompatible_features |= QCOW2_INCOMPAT_COMPRESSION;
    if (o.extended_l2) h.incompatible_features |= QCOW2_INCOMPAT_EXTL2;
    if (o.lazy_refcounts) h.compatible_features |= QCOW2_COMPAT_LAZY_REFCOUNTS;
    add_feature_table(h);
  } else {
    h.header_length = QCOW2_V2_HEADER_LENGTH;
  }
  return h;
}

}  // namespace

void validate(const CreateOptions& o) {
  auto fail = [](std::string m) { throw OptionError(std::move(m)); };
  if (o.cluster_size < 512 || o.cluster_size > (2u << 20) || !std::has_single_bit(o.cluster_size))
    fail("Cluster size must be a power of two between 512 and 2048k");
  if (!std::has_single_bit(o.refcount_bits) || o.refcount_bits > 64)
    fail("Refcount width must be a power of two and may not exceed 64 bits");
  if (o.version < 3 && o.refcount_bits != 16)
    fail(
        "Different refcount widths than 16 bits require compatibility level 1.1 or above "
        "(use compat=1.1 or greater)");
  if (o.version < 3 && o.lazy_refcounts)
    fail(
        "Lazy refcounts only supported with compatibility level 1.1 and above (use "
        "compat=1.1 or greater)");
  if (o.version < 3 && o.extended_l2)
    fail(
        "Extended L2 entries are only supported with compatibility level 1.1 and above "
        "(use compat=1.1 or greater)");
  if (o.version < 3 && o.compression_type != QCOW2_COMPRESSION_TYPE_ZLIB)
    fail(
        "Non-zlib compression type is only supported with compatibility level 1.1 and above "
        "(use compat=1.1 or greater)");
  if (o.extended_l2 && o.cluster_size < 16384)
    fail("Extended L2 entries are only supported with cluster sizes of at least 16384 bytes");
  // With extended L2 a preallocated cluster whose subclusters are all
  // unallocated still reads from the backing file; without, it would not.
  if (!o.backing_file.empty() && o.prealloc != Prealloc::off && !o.extended_l2)
    fail(
        "Backing file and preallocation can only be used at the same time if "
        "extended_l2 is on");
  if (o.backing_file.size() > MAX_BACKING_FILE_NAME) fail("Backing file name too long");
  if (o.backing_format.size() > MAX_BACKING_FORMAT_NAME) fail("Backing format name too long");
  const Geometry g(static_cast<unsigned>(std::countr_zero(o.cluster_size)), o.extended_l2, 4);
  if (o.size > (1ull << 62) || g.l1_entries_for(o.size) > QCOW_MAX_L1_SIZE / 8)
    fail(
        fmt::format("The image size is too large for file format 'qcow2' (try using a larger "
                    "cluster size)"));
}

Layout plan_layout(const CreateOptions& o) {
  validate(o);
  Layout L;
  L.header = make_header(o);
  L.header.size = (o.size + 511) & ~511ull;  // qemu rounds up to whole sectors
  const Geometry g = L.header.geometry();
  const std::uint64_t cs = g.cluster_size();
  const std::uint64_t l1_entries = g.l1_entries_for(L.header.size);
  L.l1_clusters = div_up(l1_entries * 8, cs);
  if (o.prealloc != Prealloc::off) {
    L.data_clusters = div_up(L.header.size, cs);
    L.l2_count = l1_entries;
  }
  // The refcount structure covers itself: grow it until it does.
  std::uint64_t rt = 1, rb = 1;
  for (;;) {
    const std::uint64_t n = 1 + rt + rb + L.l1_clusters + L.l2_count + L.data_clusters;
    const std::uint64_t rb2 = div_up(n, g.refblock_entries());
    const std::uint64_t rt2 = div_up(rb2 * 8, cs);
    if (rb2 <= rb && rt2 <= rt) {
      L.used_clusters = n;
      break;
    }
    rb = std::max(rb, rb2);
    rt = std::max(rt, rt2);
  }
  L.reftable_offset = cs;
  L.reftable_clusters = rt;
  L.refblocks_offset = L.reftable_offset + rt * cs;
  L.refblock_count = rb;
  L.l1_offset = L.refblocks_offset + rb * cs;
  L.l2_offset = L.l1_offset + L.l1_clusters * cs;
  L.data_offset = L.l2_offset + L.l2_count * cs;
  L.file_size = L.used_clusters * cs;

  Header& h = L.header;
  h.refcount_table_offset = L.reftable_offset;
  h.refcount_table_clusters = static_cast<std::uint32_t>(rt);
  h.l1_size = static_cast<std::uint32_t>(l1_entries);
  h.l1_table_offset = l1_entries ? L.l1_offset : 0;
  return L;
}

}  // namespace qnbd::qcow2::create
