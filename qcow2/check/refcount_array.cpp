#include "qcow2/check/refcount_array.h"

#include "qcow2/format/entries.h"

#include <algorithm>
#include <cstring>

namespace qnbd::qcow2::check {

RefcountArray::RefcountArray(const format::Geometry& g)
    : geo_(g), max_(std::min<std::uint64_t>(g.refcount_max(), 0xffffffffu)) {}

void RefcountArray::resize(std::uint64_t clusters) {
  if (clusters > counts_.size()) counts_.resize(clusters, 0);
}

void RefcountArray::set(std::uint64_t cluster, std::uint64_t v) {
  resize(cluster + 1);
  counts_[cluster] = static_cast<std::uint32_t>(std::min(v, max_));
}

bool RefcountArray::increment(std::uint64_t cluster) {
  resize(cluster + 1);
  if (counts_[cluster] >= max_) return false;
  ++counts_[cluster];
  return true;
}

std::uint64_t RefcountArray::allocate(std::uint64_t count, std::uint64_t& first_free) {
  std::uint64_t cluster = first_free;
  std::uint64_t run = 0;
  bool first_gap = true;
  for (; cluster < counts_.size() && run < count; ++cluster) {
    if (counts_[cluster] == 0) {
      ++run;
      if (first_gap) {
        first_free = cluster;
        first_gap = false;
      }
    } else {
      run = 0;
    }
  }
  // A run shorter than `count` at the end continues into new clusters.
  if (run < count) resize(cluster + count - run);
  const std::uint64_t start = cluster - run;
  for (std::uint64_t i = 0; i < count; ++i) counts_[start + i] = 1;
  return start;
}

void RefcountArray::encode_block(std::uint64_t index, std::span<std::byte> block) const {
  std::memset(block.data(), 0, block.size());
  const std::uint64_t n = geo_.refblock_entries();
  const std::uint64_t first = index * n;
  for (std::uint64_t i = 0; i < n && first + i < counts_.size(); ++i)
    if (counts_[first + i])
      format::set_refcount(block.data(), geo_.refcount_order(), i, counts_[first + i]);
}

}  // namespace qnbd::qcow2::check
