// What a backend reports about its image for the metrics endpoint. Read on
// the backend's home worker (like every other backend call); all plain
// values, copied out.
#pragma once

#include "io/file.h"

#include <cstdint>
#include <optional>

namespace qnbd {

struct MetadataCacheStats {
  std::uint64_t hits = 0, misses = 0, evictions = 0;
  std::uint64_t dirty = 0;  // tables changed in memory, not yet written back
};

// The online defragmenter's progress (exports with defrag: auto).
struct DefragStats {
  std::uint64_t passes = 0;             // passes finished (compaction included)
  std::uint64_t clusters_moved = 0;     // by every pass so far
  std::uint64_t active = 0;             // 1 while a pass runs
  double contiguous_fraction = 1.0;     // guest runs that are host-contiguous, at the last check
  std::uint64_t reclaimable_bytes = 0;  // what compaction would give back, at the last check
};

struct BackendStats {
  std::uint64_t file_size = 0;         // bytes, as stat() reports st_size
  std::uint64_t allocated_bytes = 0;   // bytes the file system allocated (st_blocks * 512)
  std::uint64_t metadata_flushes = 0;  // qcow2 metadata write-back sequences
  std::uint64_t data_syncs = 0;        // fdatasync calls on the image file
  // qcow2 only: the L2 table cache and the refcount block cache.
  std::optional<MetadataCacheStats> l2_cache, refcount_cache;
  std::optional<DefragStats> defrag;
};

// Size, allocation and syncs of the file `f` (errors read as 0).
inline BackendStats file_stats(const io::File& f) {
  BackendStats s;
  if (auto n = f.size()) s.file_size = *n;
  if (auto n = f.allocated()) s.allocated_bytes = *n;
  s.data_syncs = f.syncs_started();
  return s;
}

}  // namespace qnbd
