// All qcow2 address math in one value type: which L1/L2 slot a guest offset
// uses, where a host cluster's refcount lives, subcluster indices. Built from
// a validated header (cluster_bits 9..21, refcount_order 0..6).
#pragma once

#include <algorithm>
#include <cstdint>

namespace qnbd::qcow2::format {

class Geometry {
 public:
  Geometry() = default;
  Geometry(unsigned cluster_bits, bool extended_l2, unsigned refcount_order)
      : cluster_bits_(cluster_bits), extended_l2_(extended_l2), refcount_order_(refcount_order) {}

  unsigned cluster_bits() const { return cluster_bits_; }
  std::uint64_t cluster_size() const { return 1ull << cluster_bits_; }
  bool extended_l2() const { return extended_l2_; }
  unsigned refcount_order() const { return refcount_order_; }
  unsigned refcount_bits() const { return 1u << refcount_order_; }
  std::uint64_t refcount_max() const {
    return refcount_bits() == 64 ? ~0ull : (1ull << refcount_bits()) - 1;
  }

  // L2: 8-byte entries, or 16 with extended L2 (entry + subcluster bitmap).
  unsigned l2_entry_size() const { return extended_l2_ ? 16 : 8; }
  unsigned l2_bits() const { return cluster_bits_ - (extended_l2_ ? 4 : 3); }
  std::uint64_t l2_entries() const { return 1ull << l2_bits(); }
  // Guest bytes one L2 table maps.
  std::uint64_t l2_coverage() const { return 1ull << (l2_bits() + cluster_bits_); }
  // Where the piece of [pos, end) that pos's L2 table maps ends: requests are
  // split there, since each table is loaded, locked and updated on its own.
  std::uint64_t l2_piece_end(std::uint64_t pos, std::uint64_t end) const {
    return std::min(end, (pos / l2_coverage() + 1) * l2_coverage());
  }

  // Subclusters: 32 per cluster with extended L2, else the cluster itself.
  unsigned subclusters_per_cluster() const { return extended_l2_ ? 32 : 1; }
  unsigned subcluster_bits() const { return cluster_bits_ - (extended_l2_ ? 5 : 0); }
  std::uint64_t subcluster_size() const { return 1ull << subcluster_bits(); }

  std::uint64_t offset_in_cluster(std::uint64_t off) const { return off & (cluster_size() - 1); }
  std::uint64_t cluster_index(std::uint64_t off) const { return off >> cluster_bits_; }
  std::uint64_t cluster_start(std::uint64_t off) const { return off & ~(cluster_size() - 1); }
  std::uint64_t round_up_cluster(std::uint64_t off) const {
    return (off + cluster_size() - 1) & ~(cluster_size() - 1);
  }
  bool cluster_aligned(std::uint64_t off) const { return offset_in_cluster(off) == 0; }

  std::uint64_t l1_index(std::uint64_t guest) const { return guest >> (l2_bits() + cluster_bits_); }
  std::uint64_t l2_index(std::uint64_t guest) const {
    return (guest >> cluster_bits_) & (l2_entries() - 1);
  }
  unsigned subcluster_index(std::uint64_t guest) const {
    return static_cast<unsigned>(offset_in_cluster(guest) >> subcluster_bits());
  }
  // L1 entries needed to map `virtual_size` bytes (QEMU size_to_l1).
  std::uint64_t l1_entries_for(std::uint64_t virtual_size) const {
    const auto shift = l2_bits() + cluster_bits_;
    return (virtual_size + (1ull << shift) - 1) >> shift;
  }

  // Refcounts.
  unsigned refblock_bits() const { return cluster_bits_ + 3 - refcount_order_; }
  std::uint64_t refblock_entries() const { return 1ull << refblock_bits(); }
  std::uint64_t reftable_index(std::uint64_t host_cluster) const {
    return host_cluster >> refblock_bits();
  }
  std::uint64_t refblock_index(std::uint64_t host_cluster) const {
    return host_cluster & (refblock_entries() - 1);
  }
  // Host bytes one refcount block describes.
  std::uint64_t refblock_coverage() const { return 1ull << (refblock_bits() + cluster_bits_); }

  // Compressed descriptor layout: x = 62 - (cluster_bits - 8).
  unsigned csize_shift() const { return 62 - (cluster_bits_ - 8); }
  std::uint64_t csize_mask() const { return (1ull << (cluster_bits_ - 8)) - 1; }
  std::uint64_t cluster_offset_mask() const { return (1ull << csize_shift()) - 1; }

 private:
  unsigned cluster_bits_ = 16;
  bool extended_l2_ = false;
  unsigned refcount_order_ = 4;
};

}  // namespace qnbd::qcow2::format
