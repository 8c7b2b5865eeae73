#include "qcow2/format/entries.h"

namespace qnbd::qcow2::format {

ClusterType cluster_type(const Geometry& g, const L2Entry& e) {
  if (l2_compressed(e)) return ClusterType::Compressed;
  const bool has_offset = l2_host_offset(e) != 0;
  if (!g.extended_l2() && (e.entry & QCOW_OFLAG_ZERO))
    return has_offset ? ClusterType::ZeroAlloc : ClusterType::ZeroPlain;
  return has_offset ? ClusterType::Normal : ClusterType::Unallocated;
}

SubclusterType subcluster_type(const Geometry& g, const L2Entry& e, unsigned sc) {
  const ClusterType t = cluster_type(g, e);
  if (!g.extended_l2()) {
    switch (t) {
      case ClusterType::Compressed:
        return SubclusterType::Compressed;
      case ClusterType::ZeroPlain:
        return SubclusterType::ZeroPlain;
      case ClusterType::ZeroAlloc:
        return SubclusterType::ZeroAlloc;
      case ClusterType::Normal:
        return SubclusterType::Normal;
      case ClusterType::Unallocated:
        return SubclusterType::UnallocatedPlain;
    }
  }
  switch (t) {
    case ClusterType::Compressed:
      return SubclusterType::Compressed;
    case ClusterType::Normal:
      if ((e.bitmap >> 32) & e.bitmap) return SubclusterType::Invalid;
      if (sc_alloc(e, sc)) return SubclusterType::Normal;
      if (sc_zero(e, sc)) return SubclusterType::ZeroAlloc;
      return SubclusterType::UnallocatedAlloc;
    default:  // Unallocated (zero types do not exist with extended L2)
      if (e.bitmap & QCOW_L2_BITMAP_ALL_ALLOC) return SubclusterType::Invalid;
      if (sc_zero(e, sc)) return SubclusterType::ZeroPlain;
      return SubclusterType::UnallocatedPlain;
  }
}

CompressedDescriptor decode_compressed(const Geometry& g, const L2Entry& e) {
  CompressedDescriptor d;
  d.host_offset = e.entry & g.cluster_offset_mask();
  d.sectors = ((e.entry >> g.csize_shift()) & g.csize_mask()) + 1;
  return d;
}

bool encode_compressed(const Geometry& g, std::uint64_t host_offset, std::uint64_t length,
                       L2Entry& out) {
  if (length == 0 || host_offset > g.cluster_offset_mask() || host_offset > QCOW_MAX_CLUSTER_OFFSET)
    return false;
  const std::uint64_t extra = (host_offset + length - 1) / 512 - host_offset / 512;
  if (extra > g.csize_mask()) return false;
  out.entry = QCOW_OFLAG_COMPRESSED | (extra << g.csize_shift()) | host_offset;
  out.bitmap = 0;
  return true;
}

std::uint64_t get_refcount(const std::byte* block, unsigned order, std::uint64_t index) {
  switch (order) {
    case 0:
    case 1:
    case 2: {
      const unsigned bits = 1u << order;
      const unsigned per_byte = 8 / bits;
      const auto byte = std::to_integer<unsigned>(block[index / per_byte]);
      const unsigned shift = static_cast<unsigned>(index % per_byte) * bits;
      return (byte >> shift) & ((1u << bits) - 1);
    }
    case 3:
      return std::to_integer<std::uint64_t>(block[index]);
    case 4:
      return load_be16(block + index * 2);
    case 5:
      return load_be32(block + index * 4);
    default:
      return load_be64(block + index * 8);
  }
}

void set_refcount(std::byte* block, unsigned order, std::uint64_t index, std::uint64_t value) {
  switch (order) {
    case 0:
    case 1:
    case 2: {
      const unsigned bits = 1u << order;
      const unsigned per_byte = 8 / bits;
      std::byte& b = block[index / per_byte];
      const unsigned shift = static_cast<unsigned>(index % per_byte) * bits;
      const unsigned mask = ((1u << bits) - 1) << shift;
      const unsigned v =
          (std::to_integer<unsigned>(b) & ~mask) | ((static_cast<unsigned>(value) << shift) & mask);
      b = static_cast<std::byte>(v);
      return;
    }
    case 3:
      block[index] = static_cast<std::byte>(value);
      return;
    case 4:
      store_be16(block + index * 2, static_cast<std::uint16_t>(value));
      return;
    case 5:
      store_be32(block + index * 4, static_cast<std::uint32_t>(value));
      return;
    default:
      store_be64(block + index * 8, value);
      return;
  }
}

}  // namespace qnbd::qcow2::format
