// The in-memory refcount table a check builds from the image's references
// (qemu calls it the IMRT): one counter per host cluster, grown on demand,
// saturating at the image's refcount_max so overflow is reported as qemu
// does. Pure; also the source of the refcount blocks a rebuild writes.
#pragma once

#include "qcow2/format/geometry.h"

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace qnbd::qcow2::check {

class RefcountArray {
 public:
  RefcountArray() = default;
  explicit RefcountArray(const format::Geometry& g);

  std::uint64_t size() const { return counts_.size(); }
  void resize(std::uint64_t clusters);  // grows only
  void clear() { std::fill(counts_.begin(), counts_.end(), 0); }

  std::uint64_t get(std::uint64_t cluster) const {
    return cluster < counts_.size() ? counts_[cluster] : 0;
  }
  void set(std::uint64_t cluster, std::uint64_t v);
  // False (and no change) if the counter is already at refcount_max.
  bool increment(std::uint64_t cluster);
  std::uint64_t max() const { return max_; }

  // Finds `count` free clusters at or after *first_free, marks them used
  // (refcount 1), grows the array past its end if needed, and returns the
  // first cluster index. *first_free is moved to the first gap seen (qemu's
  // alloc_clusters_imrt).
  std::uint64_t allocate(std::uint64_t count, std::uint64_t& first_free);

  // Encodes the counters of refcount block `index` in on-disk format into
  // `block` (cluster_size bytes).
  void encode_block(std::uint64_t index, std::span<std::byte> block) const;

 private:
  format::Geometry geo_;
  std::uint64_t max_ = 0;
  // 32-bit counters: a cluster referenced more than 2^32-1 times would need
  // 32 GiB of L2 tables; refcount_max is capped to fit.
  std::vector<std::uint32_t> counts_;
};

}  // namespace qnbd::qcow2::check
