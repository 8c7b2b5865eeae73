// Consistency checks made before the engine acts on a host cluster, so that
// a damaged image never makes it lose acknowledged data. What the tables say
// about a cluster must agree with its refcount and the metadata map:
//  - giving out (Refcounts::find_free): refcount 0 and not metadata; and no
//    L2 table read for the first time may map a cluster given out since the
//    image was opened (given_out(), first_use());
//  - rewriting in place (OFLAG_COPIED in an L2 or L1 entry): the flag claims
//    sole ownership, so the refcount must be exactly 1, and data must not
//    land on metadata;
//  - dropping a reference (copy-on-write, discard, unmapping zeroes): the
//    refcount must be at least 1, and a data cluster must not be metadata.
// A contradiction means acting would lose data: a cluster in use whose
// refcount is 0 is given out again to another guest cluster and later freed
// or overwritten under it (the fuzz findings regress-cow-frees-reused and
// regress-l1-points-at-data in tests/fuzz/corpus/fuzz_qcow2_open). The guard
// reports it through the image's corrupt() (a log line naming the cluster
// and why; the image is marked corrupt and refuses writes from then on, as
// QEMU does for metadata overlaps) and the request fails with EIO.
//
// Not caught: a refcount too low but not 0 (two references, refcount 1) is
// found only by `qnbd-img check`, which needs every table.
//
// Refcounts are read through the cache; callers that may change refcounts
// concurrently hold the metadata lock.
#pragma once

#include "common/task.h"
#include "common/wait_queue.h"
#include "qcow2/engine/overlap.h"
#include "qcow2/engine/refcounts.h"
#include "qcow2/engine/table_cache.h"
#include "qcow2/format/entries.h"
#include "qcow2/format/geometry.h"

#include <functional>
#include <limits>
#include <span>
#include <string>
#include <unordered_set>
#include <vector>

namespace qnbd::qcow2 {

class ClusterGuard {
 public:
  // Marks the image corrupt with a reason and returns errc::corrupt_image.
  using Corrupt = std::function<error_code(const std::string&)>;

  ClusterGuard(Refcounts& refcounts, const MetadataMap& metadata, const format::Geometry& g,
               Corrupt corrupt)
      : refcounts_(refcounts), metadata_(metadata), g_(g), corrupt_(std::move(corrupt)) {}

  // Data cluster `host` (mapped by an L2 entry with OFLAG_COPIED at guest
  // offset `guest`) is about to be written in place.
  task<> rewrite_data(std::uint64_t host, std::uint64_t guest);
  // rewrite_data's check decided without suspending: true only when it
  // passes now (refcount block cached); false when it fails or needs I/O,
  // and then the caller runs rewrite_data, which reports a failure.
  bool rewrite_data_passes_now(std::uint64_t host) {
    return !metadata_.contains_cluster(g_.cluster_index(host)) &&
           refcounts_.peek(g_.cluster_index(host)) == std::optional<std::uint64_t>(1);
  }
  // The L2 table at `host` (its L1 entry has OFLAG_COPIED) gets new entries.
  task<> rewrite_table(std::uint64_t host);
  // The L2 entry `e` of guest offset `guest` is about to stop referencing
  // its data (a normal cluster, or every cluster a compressed descriptor
  // touches).
  task<> unlink_data(const format::L2Entry& e, std::uint64_t guest);
  // The L2 table at `host` is about to be replaced by a copy.
  task<> unlink_table(std::uint64_t host);

  // Clusters just allocated must not appear in a table read later. Fresh
  // ones (beyond the file's end when the image was opened) are kept as the
  // lowest such cluster: a table read later may map nothing from there on,
  // since a cluster there was either given out or past EOF when opened (the
  // table at the old EOF mapping a cluster past it, which a write was then
  // given: tests/fuzz/corpus/fuzz_qcow2_open/regress-table-maps-past-eof).
  void given_out(std::span<const HostRun> runs);
  // An L2 table the engine made itself: its entries are checked already.
  void table_is_ours(std::uint64_t offset) { checked_tables_.insert(offset); }
  // Every cluster an active L2 table maps, the first time the table is used
  // on a writable image: refcount at least 1, not metadata, not given out.
  task<> first_use(const Table& t, std::uint64_t guest_base);
  // Whether first_use() passed for the table at `offset` (or it is ours).
  bool checked(std::uint64_t offset) const { return checked_tables_.count(offset) != 0; }

 private:
  // `what` describes the cluster in the log line; built only on failure.
  using What = std::function<std::string()>;
  task<> expect_refcount(std::uint64_t host, std::uint64_t lo, std::uint64_t hi, const What& what);
  // A data cluster that loses or keeps a reference: not metadata, refcount >= 1.
  task<> referenced_data(std::uint64_t host, const What& what);
  // first_use's walk over every entry of the table.
  task<> walk_table(const Table& t, std::uint64_t guest_base);
  // Host clusters (offsets) an L2 entry maps; none for invalid entries.
  std::vector<std::uint64_t> data_clusters(const format::L2Entry& e) const;

  Refcounts& refcounts_;
  const MetadataMap& metadata_;
  const format::Geometry& g_;
  Corrupt corrupt_;
  std::unordered_set<std::uint64_t> given_out_;                           // cluster indexes
  std::uint64_t fresh_from_ = std::numeric_limits<std::uint64_t>::max();  // cluster index
  std::unordered_set<std::uint64_t> checked_tables_;
  std::unordered_set<std::uint64_t> checking_;  // tables first_use walks now
  WaitQueue walked_;                            // woken when a walk ends
};

}  // namespace qnbd::qcow2
