// The defragmenter: moves clusters of an open image as the planner
// (qcow2/defrag/plan.h) says, through the engine's caches, allocator,
// cluster guard and ordered flush, so that every move is crash safe by the
// same rules as a guest write:
//  - the copy of a cluster is written, then the flush's first stage makes it
//    (and its refcount) durable before the L2 entry (or L1 entry, for a
//    moved L2 table) that points at it is written;
//  - the old cluster's refcount falls only in the flush's last stage, after
//    the new L2/L1 entries are durable (a deferred free), and only after
//    every read that may have mapped the old place has finished;
//  - the guest cluster is claimed exclusively while it moves, so client
//    writes, zeroes and trims to it wait for the move and then go to the
//    new place; a step whose source changed since it was planned is dropped.
// Each cycle scans the image, plans from scratch and runs one batch, so a
// client that changes the mapping between cycles only changes the next plan.
// compact() then truncates the file to what the plan left in use.
#pragma once

#include "common/task.h"
#include "qcow2/defrag/plan.h"

#include <cstdint>
#include <string>

namespace qnbd::qcow2 {

class Image;

struct DefragCycle {
  defrag::Stats stats;          // before the cycle
  std::uint64_t remaining = 0;  // steps the plan had before the cycle
  std::uint64_t moved = 0;      // steps done by the cycle
};

class Defragmenter {
 public:
  explicit Defragmenter(Image& img) : img_(img) {}

  // The image's layout and plan (read-only images too).
  task<defrag::Plan> plan();
  // One cycle of at most `max_steps` moves, flushed. remaining == 0: done.
  task<DefragCycle> cycle(std::size_t max_steps);
  // Whether a client operation started since the last call (or runs now).
  bool client_active();
  std::uint64_t cluster_size() const;
  const std::string& name() const;
  // Truncates the file after the last cluster in use (once no step
  // remains); returns the new size in bytes.
  task<std::uint64_t> compact();

 private:
  struct Move;
  task<defrag::Layout> scan();
  task<std::vector<Move>> begin_moves(const std::vector<defrag::Step>& batch);
  task<> copy_data(const std::vector<Move>& moves);
  task<> link(const std::vector<Move>& moves);
  task<> give_back(const std::vector<Move>& moves);
  task<> free_old(const std::vector<Move>& moves);

  Image& img_;
  std::uint64_t ops_seen_ = 0;
};

}  // namespace qnbd::qcow2
