// Online defragmentation: a background coroutine on the export's home
// worker (where the image lives, so it needs no locks beyond the engine's)
// that checks the layout now and then and, when the image is fragmented or
// has reclaimable space, runs Defragmenter cycles and then compacts.
//  - It yields to clients: a cycle starts only when no client operation ran
//    during the last pause (kBusyPause), so a busy export is left alone.
//  - It keeps to a rate: after a cycle that moved N bytes it waits N / rate.
//  - A client write to a cluster being moved waits for that one move (the
//    guest cluster is claimed) and then lands on the new place; nothing the
//    client writes is lost or redone by the mover.
// It logs each pass (start, every 10%, end) at info level.
#pragma once

#include "backend/backend_stats.h"
#include "qcow2/engine/coro_sync.h"
#include "qcow2/engine/defrag.h"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/steady_timer.hpp>

#include <memory>

namespace qnbd::qcow2 {

struct DefragOptions {
  bool enabled = false;                 // YAML defrag: auto | off
  std::uint64_t rate = 64ull << 20;     // bytes moved per second at most
  double threshold = 0.9;               // a pass starts below this contiguous fraction,
  std::uint64_t reclaim = 64ull << 20;  // or when this many bytes are reclaimable
  double check_interval = 30.0;         // seconds between layout checks when idle
};

class DefragTask {
 public:
  DefragTask(Image& img, DefragOptions o) : d_(img), o_(o) {}
  // Starts the loop on `ex` (the image's executor).
  void start(const boost::asio::any_io_executor& ex);
  // Ends the loop after the cycle in progress, if any.
  boost::asio::awaitable<void> stop();
  // Progress for the metrics (read on the image's worker).
  const DefragStats& progress() const { return progress_; }

 private:
  boost::asio::awaitable<void> run();
  boost::asio::awaitable<void> pause(double seconds);
  // A pass: cycles until nothing is left to move, then compaction.
  boost::asio::awaitable<void> pass(const defrag::Stats& before, std::uint64_t steps);
  bool wanted(const defrag::Stats& s) const;
  void observe(const defrag::Stats& s);

  Defragmenter d_;
  DefragOptions o_;
  std::unique_ptr<boost::asio::steady_timer> timer_;
  bool stopping_ = false;
  bool running_ = false;
  WaitQueue stopped_;
  DefragStats progress_;
};

}  // namespace qnbd::qcow2
