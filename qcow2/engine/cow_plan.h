// Plan of one allocating write inside one L2 table: per cluster, whether its
// host cluster is kept or replaced, which byte span of it gets written (the
// guest data plus the copy-on-write fill around it), and the L2 entry to
// link afterwards. Planning is pure; fill() and writes() turn the plan into
// I/O: one read of the old contents around the data (none if they read as
// zeros) and one write per host-contiguous extent with old and new data
// gathered in one iovec.
#pragma once

#include "common/task.h"
#include "io/buffer_cache.h"
#include "io/file.h"
#include "qcow2/engine/coro_sync.h"
#include "qcow2/engine/refcounts.h"
#include "qcow2/format/entries.h"

#include <boost/container/small_vector.hpp>

#include <functional>
#include <span>
#include <vector>

namespace qnbd::qcow2 {

struct ClusterPlan {
  std::uint64_t guest = 0;  // guest offset of the cluster
  format::L2Entry old_entry;
  bool keep = false;  // the existing host cluster is ours and stays
  std::uint64_t host = 0;
  std::uint64_t span_start = 0, span_end = 0;  // bytes written, within the cluster
  bool changes_metadata = false;
  bool free_old_cluster = false;
  bool free_old_compressed = false;
  bool fresh = false;  // new host cluster in a never used hole (HostRun::fresh)
  // Fresh, and the cluster read as zeros before: only the data is written,
  // the rest of the hole already reads as the fill would.
  bool blank = false;
  format::L2Entry new_entry;
};

class CowPlan {
 public:
  using ReadFn = std::function<task<>(std::uint64_t guest, std::span<std::byte>)>;

  CowPlan(const format::Geometry& g, std::uint64_t offset, std::uint64_t length);

  std::uint64_t first_cluster() const { return first_; }
  std::uint64_t last_cluster() const { return last_; }
  // Adds the next cluster's current entry; false if the entry is invalid.
  bool add_cluster(const format::L2Entry& e);
  std::uint64_t new_clusters() const;
  // Gives the replaced clusters their new host clusters, in order.
  void assign_hosts(std::span<const HostRun> runs);
  std::span<const ClusterPlan> clusters() const { return clusters_; }
  // Marks fresh new clusters whose old contents `reads_zero` as blank: their
  // fill is neither read nor written. Call after assign_hosts.
  void skip_blank_fill(const std::function<bool(const ClusterPlan&)>& reads_zero);

  // Guest range written in total (data plus fill).
  std::uint64_t hull_start() const;
  std::uint64_t hull_end() const;
  // Reads the fill around the data through `read` (what the guest range
  // reads as now): one read when head and tail are close, else two, into a
  // buffer from `buffers` that goes back there with the plan.
  task<> fill(ReadFn read, io::BufferCache& buffers);
  // One write per host-contiguous extent. The plan must outlive the tasks.
  Tasks writes(io::File& file, std::span<const std::byte> data);

 private:
  format::Geometry g_;
  std::uint64_t offset_, end_;
  std::uint64_t first_, last_;
  // Inline storage for the common write of one or two clusters: planning
  // and writing it allocate nothing here.
  boost::container::small_vector<ClusterPlan, 2> clusters_;
  // The fill, read into one aligned buffer (no bounce under O_DIRECT) that
  // is never zeroed first (the read writes every byte; nothing is written
  // unless it succeeded): head_ and tail_ point into it, so the merged read
  // needs no copying either.
  io::BufferCache::Lease fill_;
  std::span<std::byte> head_, tail_;
  boost::container::small_vector<boost::container::small_vector<iovec, 3>, 2> iovs_;
};

}  // namespace qnbd::qcow2
