// The defragmentation and compaction planner: pure, no I/O. From what a scan
// of the image found (which host clusters are in use, which of them may move,
// where each guest cluster's data lies) it computes how fragmented the image
// is and a sequence of cluster moves that makes data host-contiguous in
// guest order and gathers the free space at the end of the file, so that
// the file can then be truncated.
//
// Movable ("items"): data clusters mapped by exactly one L2 entry of the
// active table (refcount 1, not compressed), and active L2 tables that lie
// beyond the data. Everything else in use is pinned: the header, L1 and
// refcount tables, refcount blocks, L2 tables among the data, compressed
// clusters, clusters shared with internal snapshots, bitmaps.
//
// Layout goal: the i-th data cluster in guest order goes to the i-th
// cluster that is not pinned, counting from the start of the file; the L2
// tables found beyond that region follow it. A move whose destination is
// occupied by another item first moves that item out of the way (to its own
// destination if that is free, else to a free cluster past the goal region).
//
// All positions here are host cluster indices.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace qnbd::qcow2::defrag {

enum class ItemKind : std::uint8_t { Data, L2Table };

struct Item {
  ItemKind kind = ItemKind::Data;
  std::uint64_t key = 0;   // Data: guest cluster index; L2Table: L1 index
  std::uint64_t host = 0;  // where it is now
};

// A data cluster mapped by the active L2 tables (movable or not), for the
// statistics.
struct Mapped {
  std::uint64_t guest = 0;  // guest cluster index
  std::uint64_t host = 0;
};

struct Layout {
  std::uint64_t file_clusters = 0;  // clusters the file spans (rounded up)
  // Per host cluster below file_clusters: true if its refcount is not 0.
  std::vector<bool> in_use;
  // Movable clusters: data clusters (ItemKind::Data, any order) and every
  // active L2 table with OFLAG_COPIED (ItemKind::L2Table). Their hosts are
  // in use and below file_clusters.
  std::vector<Item> items;
  // Every non-compressed data cluster of the active tables, sorted by guest.
  std::vector<Mapped> data;
};

struct Stats {
  std::uint64_t data_clusters = 0;
  // Maximal runs of guest-adjacent data clusters, and how many of them are
  // host-contiguous in guest order (a gap of pinned metadata between two
  // clusters does not break a run: reads of the data on either side are
  // still sequential enough, and moving all data to skip it gains nothing).
  std::uint64_t guest_runs = 0;
  std::uint64_t contiguous_runs = 0;
  // Guest-adjacent pairs whose data is not host-adjacent.
  std::uint64_t breaks = 0;
  std::uint64_t free_clusters = 0;  // inside the file
  std::uint64_t file_clusters = 0;
  std::uint64_t target_clusters = 0;  // file length once the plan is done
  double contiguous_fraction() const {
    return guest_runs ? static_cast<double>(contiguous_runs) / guest_runs : 1.0;
  }
};

struct Step {
  ItemKind kind = ItemKind::Data;
  std::uint64_t key = 0;
  std::uint64_t from = 0, to = 0;
};

struct Plan {
  Stats stats;
  std::vector<Step> steps;  // in order; each one's destination is free when its turn comes
};

Plan make_plan(const Layout& layout);

// The steps to run together in one crash-ordered cycle (copy, sync, link,
// sync, free): a prefix-respecting selection of at most `max_steps` steps
// none of which touches a cluster that an earlier step (chosen or not)
// touches, since a destination freed by a step is free only after its cycle
// and an item moved by a step is elsewhere only after it.
std::vector<Step> select_batch(const std::vector<Step>& steps, std::size_t max_steps);

}  // namespace qnbd::qcow2::defrag
