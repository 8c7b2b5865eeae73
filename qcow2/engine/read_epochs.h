// Reads in flight, by epoch. A read copies host offsets out of the L2 tables
// and then does its I/O with no lock held; when the defragmenter has moved a
// cluster and relinked its L2 entry, a read that mapped the old place may
// still be reading it. drain() returns once every read that started before
// it has finished, so the old cluster is freed (and maybe reused or punched)
// only after nobody reads it. One drainer at a time (the defragmenter).
#pragma once

#include "qcow2/engine/coro_sync.h"

#include <array>
#include <cstdint>
#include <utility>

namespace qnbd::qcow2 {

class ReadEpochs {
 public:
  class Guard {
   public:
    Guard(ReadEpochs* o, unsigned e) : owner_(o), epoch_(e) { ++owner_->count_[epoch_]; }
    Guard(Guard&& g) noexcept : owner_(std::exchange(g.owner_, nullptr)), epoch_(g.epoch_) {}
    Guard& operator=(Guard&&) = delete;
    ~Guard() {
      if (owner_ && --owner_->count_[epoch_] == 0) owner_->drained_.notify_all();
    }

   private:
    ReadEpochs* owner_;
    unsigned epoch_;
  };

  Guard enter() { return Guard(this, current_); }
  boost::asio::awaitable<void> drain() {
    const unsigned old = current_;
    current_ ^= 1;
    while (count_[old]) co_await drained_.wait();
  }

 private:
  unsigned current_ = 0;
  std::array<std::uint64_t, 2> count_{};
  WaitQueue drained_;
};

}  // namespace qnbd::qcow2
