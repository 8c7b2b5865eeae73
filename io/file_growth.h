// How an image file grows: its size as the engine knows it, the size the
// last sync made durable, and the space prepared ahead of allocation. Kept
// apart from the image's crash-ordering state (as QEMU's block/preallocate.c
// keeps data_end/zero_start/file_end in a layer of its own).
//
// Ahead of allocation the file is grown in chunks (fallocated, else sparse),
// so that new clusters lie inside a durable size by the time an L2 entry
// links them: a blank cluster there reads as zeros after any crash. For
// flush-heavy clients (few new clusters between flushes) the space just
// ahead is also filled with written zeros, so new data overwrites blocks the
// filesystem already allocated and its sync need not commit allocations each
// time. Everything grown ahead is trimmed at close, never below the size at
// open or the end of a cluster in use.
//
// Growing ahead is only for speed: its failures are logged at debug level
// and otherwise ignored.
#pragma once

#include "io/file.h"

#include <cstdint>
#include <string>

namespace qnbd::io {

class FileGrowth {
 public:
  // `unit` (a cluster) is the granularity of growth; `virtual_size` scales
  // the chunk (1/8 of it, 1-64 MiB).
  FileGrowth(File& file, std::string name, std::uint64_t virtual_size, std::uint64_t unit);

  // Whether bytes below `end` survive any crash as the file's contents.
  bool durable(std::uint64_t end) const { return end <= durable_size_; }

  // Learns the current size (writes past the known end grow the file);
  // false if the file cannot tell.
  bool refresh();
  // Syncs the file (on the calling thread if `blocking`); every size known
  // before the sync is durable after it.
  task<> sync(bool blocking);

  // After an allocation, under the caller's metadata lock: `used_end` is
  // the end of every cluster ever used (so nothing prepared meets data), and
  // `clusters` how many the allocation gave out.
  task<> prepare_ahead(std::uint64_t used_end, std::uint64_t clusters);
  // At every metadata flush: the allocations since the last one decide
  // whether the client is flush-heavy.
  void flushed();

  // At close: gives back what was grown ahead beyond max(size at open,
  // `used_end`).
  result<> trim_tail(std::uint64_t used_end);
  // Cuts the file to `end` and syncs (compaction); the caller has made
  // sure nothing durable refers past it.
  task<> shrink(std::uint64_t end);

 private:
  task<> grow_ahead(std::uint64_t used_end);

  File& file_;
  std::string name_;  // for log messages
  std::uint64_t chunk_;
  std::uint64_t unit_;
  std::uint64_t open_size_ = 0;
  std::uint64_t size_ = 0;          // known to us
  std::uint64_t durable_size_ = 0;  // made durable by a sync
  std::uint64_t zeroed_end_ = 0;    // end of the zeros written ahead
  std::uint64_t allocated_in_cycle_ = 0;
  bool flush_heavy_ = false;
};

}  // namespace qnbd::io
