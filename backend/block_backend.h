// What an export serves: a block device with NBD-shaped operations, each an
// awaitable returning an error as a value. Implemented by RawBackend and by
// the qcow2 adapter; the NBD front end knows nothing else about images.
#pragma once

#include "common/task.h"

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace qnbd {

struct Capabilities {
  bool read_only = false;
  bool flush = true;
  bool fua = true;
  bool trim = true;
  bool write_zeroes = true;
  bool fast_zero = true;
  bool cache = true;
  bool multi_conn = true;  // one shared cache for all connections
  std::uint32_t min_block = 1;
  std::uint32_t preferred_block = 4096;
};

// One run of base:allocation status (NBD_STATE_HOLE / NBD_STATE_ZERO).
struct Extent {
  std::uint64_t length;
  bool hole;
  bool zero;
};

class BlockBackend {
 public:
  virtual ~BlockBackend() = default;

  virtual std::uint64_t size() const = 0;
  virtual Capabilities capabilities() const = 0;

  // Fills buf with the bytes at [offset, offset+buf.size()).
  virtual task<> read(std::uint64_t offset, std::span<std::byte> buf) = 0;
  virtual task<> write(std::uint64_t offset, std::span<const std::byte> buf, bool fua) = 0;
  // may_trim: the range may be deallocated (no NBD_CMD_FLAG_NO_HOLE).
  // fast: fail with errc::fast_zero_unsupported rather than write zeros slowly.
  virtual task<> write_zeroes(std::uint64_t offset, std::uint64_t length, bool may_trim, bool fast,
                              bool fua) = 0;
  virtual task<> trim(std::uint64_t offset, std::uint64_t length, bool fua) = 0;
  virtual task<> flush() = 0;
  // Extents covering at least [offset, offset+1) and at most `length` bytes,
  // in order, lengths non-zero.
  virtual task<std::vector<Extent>> block_status(std::uint64_t offset, std::uint64_t length) = 0;
  // Advisory prefetch.
  virtual task<> cache(std::uint64_t offset, std::uint64_t length) = 0;
  // Writes back everything dirty before the server exits.
  virtual task<> close() = 0;
};

}  // namespace qnbd
