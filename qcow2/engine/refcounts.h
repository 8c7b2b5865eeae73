// Reference counts of host clusters: the refcount table (in memory, written
// whole when it changes), refcount blocks through a TableCache, cluster
// allocation, and frees deferred until the tables that stopped referencing a
// cluster are durable (crash rule 2).
//
// Every method that changes state runs under the image's metadata lock.
//
// Allocation is first fit from the lowest free cluster, one cluster at a
// time, so freed clusters are reused whatever size later requests have (no
// REF-/REF+ leak: a multi-cluster request may get several host runs). A
// missing refcount block is placed at the first free cluster of the range it
// describes, so it describes itself; a full refcount table is replaced by a
// bigger copy in free space, switched to by a header update at flush.
#pragma once

#include "common/task.h"
#include "io/file.h"
#include "qcow2/engine/overlap.h"
#include "qcow2/engine/table_cache.h"
#include "qcow2/format/entries.h"
#include "qcow2/format/geometry.h"

#include <boost/container/small_vector.hpp>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <vector>

namespace qnbd::qcow2 {

struct HostRun {
  std::uint64_t offset;  // bytes
  std::uint64_t clusters;
  // Never used since the image was opened and beyond its end then: the file
  // has a hole there, so it reads as zeros without being written.
  bool fresh = false;
};
// Most allocations are of one cluster, or of clusters in one run.
using HostRuns = boost::container::small_vector<HostRun, 1>;

class Refcounts {
 public:
  Refcounts(io::File& file, const format::Geometry& g, std::uint64_t reftable_offset,
            std::uint32_t reftable_clusters, std::vector<std::uint64_t> reftable,
            std::size_t cache_tables, MetadataMap& metadata);

  task<std::uint64_t> get(std::uint64_t cluster);
  // The refcount if its block is cached (no I/O, no suspension), else
  // nullopt (also for a block offset get() would report as corrupt).
  std::optional<std::uint64_t> peek(std::uint64_t cluster);
  // Adds `delta` (may be negative) to a cluster's refcount, now.
  task<> update(std::uint64_t cluster, std::int64_t delta);
  // Allocates n clusters with refcount 1, lowest free first.
  task<HostRuns> allocate(std::uint64_t n);
  // Allocates n adjacent clusters with refcount 1 (tables that must be
  // contiguous, e.g. a bitmap table); returns the first one's offset.
  task<std::uint64_t> allocate_contiguous(std::uint64_t n);
  // Allocates cluster `c` that the caller chose (the defragmenter): false,
  // and no change, if it is in use or holds metadata.
  task<bool> allocate_at(std::uint64_t c);
  // Per cluster below `clusters`: whether its refcount is not 0. Reads each
  // refcount block once.
  task<std::vector<bool>> in_use(std::uint64_t clusters);
  // Frees after the next metadata flush made the dropped references durable.
  void defer_free_cluster(std::uint64_t host_offset) {
    defer_free_bytes(host_offset, g_.cluster_size());
  }
  // Compressed data: every cluster the byte range touches loses one reference.
  void defer_free_bytes(std::uint64_t host_offset, std::uint64_t bytes);
  // The data an L2 entry being replaced points at (a compressed extent's
  // sectors or a data cluster; nothing for an entry without data), freed as
  // above.
  void defer_free_data_of(const format::L2Entry& e);

  // Flush stage 1 (data and refcounts first): refcount blocks, sync, then a
  // changed refcount table, sync, then a moved table in the header, sync.
  task<> write_back();
  bool dirty() const { return cache_.dirty_count() || reftable_dirty_ || header_dirty_; }
  const TableCache& cache() const { return cache_; }
  // Flush stage 4: apply deferred frees (their L2/L1 are durable now) and
  // punch holes for clusters whose refcount fell to zero.
  task<> apply_deferred();
  bool has_deferred() const { return !deferred_.empty(); }

  std::uint64_t reftable_offset() const { return reftable_offset_; }
  // One past the highest cluster that is or ever was in use (bytes).
  std::uint64_t used_end() const { return high_water_ << g_.cluster_bits(); }
  // A cluster a table references counts as used even past the end of the
  // file at open (a damaged image whose refcounts agree), so that neither
  // trimming the file at close nor zeroing ahead reaches data written there.
  void note_used(std::uint64_t cluster) { high_water_ = std::max(high_water_, cluster + 1); }

 private:
  struct Range {
    std::uint64_t first = 0, count = 0;  // clusters
    bool contains(std::uint64_t c) const { return c >= first && c < first + count; }
  };
  // Clusters chosen but not yet counted: new metadata must not land there.
  struct Avoid {
    Range a, b;
    bool contains(std::uint64_t c) const { return a.contains(c) || b.contains(c); }
  };
  task<std::shared_ptr<Table>> block_for(std::uint64_t cluster, bool create, Avoid avoid);
  task<> ensure_block(std::uint64_t reftable_index, Avoid avoid);
  task<> set(std::uint64_t cluster, std::uint64_t value, Avoid avoid);
  task<std::uint64_t> find_free(std::uint64_t from, std::uint64_t n, Avoid avoid);
  task<> grow_table(std::uint64_t min_entries, Avoid avoid);
  std::uint64_t max_clusters() const;

  io::File& file_;
  format::Geometry g_;
  std::uint64_t reftable_offset_;
  std::uint32_t reftable_clusters_;
  std::vector<std::uint64_t> reftable_;
  TableCache cache_;
  MetadataMap& metadata_;
  bool reftable_dirty_ = false;
  bool header_dirty_ = false;
  std::vector<Range> old_tables_;  // freed once the header points elsewhere
  std::vector<Range> deferred_;    // in bytes: {offset, length}
  std::uint64_t free_index_ = 0;
  std::uint64_t high_water_ = 0;  // clusters at and after it were never used
};

}  // namespace qnbd::qcow2
