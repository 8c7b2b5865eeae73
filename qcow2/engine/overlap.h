// Which host clusters hold metadata (header, L1 tables, refcount table and
// blocks, active L2 tables, snapshot table, bitmap directory). Allocation
// and data writes consult it (DESIGN rule 6, QEMU's "cached" overlap check):
// an image whose refcounts or L2 entries point into metadata is corrupt, and
// the write fails instead of destroying the metadata.
#pragma once

#include <cstdint>
#include <set>

namespace qnbd::qcow2 {

class MetadataMap {
 public:
  explicit MetadataMap(unsigned cluster_bits) : bits_(cluster_bits) {}

  void add(std::uint64_t offset, std::uint64_t bytes) {
    for (std::uint64_t c = first(offset); bytes && c <= last(offset, bytes); ++c) set_.insert(c);
  }
  void remove(std::uint64_t offset, std::uint64_t bytes) {
    for (std::uint64_t c = first(offset); bytes && c <= last(offset, bytes); ++c) set_.erase(c);
  }
  bool contains_cluster(std::uint64_t cluster) const { return set_.count(cluster) != 0; }
  bool overlaps(std::uint64_t offset, std::uint64_t bytes) const {
    if (!bytes) return false;
    auto it = set_.lower_bound(first(offset));
    return it != set_.end() && *it <= last(offset, bytes);
  }

 private:
  std::uint64_t first(std::uint64_t off) const { return off >> bits_; }
  std::uint64_t last(std::uint64_t off, std::uint64_t bytes) const {
    return (off + bytes - 1) >> bits_;
  }
  unsigned bits_;
  std::set<std::uint64_t> set_;
};

}  // namespace qnbd::qcow2
