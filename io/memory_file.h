// An in-memory io::File for engine and crash tests: deterministic, fast, and
// able to inject failures (EIO, ENOSPC, short writes) and to simulate a crash
// that loses every write not yet made durable by sync().
//
// Model: `durable` is what survived the last sync; writes since then are
// kept in order in a pending log and applied to the visible contents. A
// crash keeps the durable image plus (optionally) a random subset of the
// pending writes, as a disk cache may persist any of them.
#pragma once

#include "io/file.h"

#include <cstdint>
#include <optional>
#include <random>
#include <vector>

namespace qnbd::io {

class MemoryFile final : public File {
 public:
  enum class Op { Read, Write, Sync, Discard, Any };
  // What an aligned file (set_alignment) does with an unaligned read or
  // write: serve it through whole blocks as an O_DIRECT UringFile does (a
  // write past the end then grows the file to a block boundary), or refuse
  // it with EINVAL as pread/pwrite on an O_DIRECT descriptor do.
  enum class Unaligned { Bounce, Reject };

  // The next matching operation(s) fail with `error` after `skip` matching
  // operations succeeded. A failing write with short_write set first stores
  // half of its bytes (a torn write), then reports the error.
  struct Fault {
    Op op = Op::Any;
    int error = EIO;
    std::uint64_t skip = 0;
    std::uint64_t count = 1;
    bool short_write = false;
  };

  struct Stats {
    std::uint64_t reads = 0, writes = 0, syncs = 0, discards = 0;
    std::uint64_t bytes_read = 0, bytes_written = 0;
    std::uint64_t unaligned = 0;  // reads and writes not aligned to alignment()
  };

  explicit MemoryFile(std::vector<std::byte> initial = {}, bool read_only = false);

  task<> readv_at(std::uint64_t offset, std::span<const iovec> iov) override;
  task<> writev_at(std::uint64_t offset, std::span<const iovec> iov) override;
  task<> sync() override;
  task<> punch_hole(std::uint64_t offset, std::uint64_t length) override;
  task<> zero_range(std::uint64_t offset, std::uint64_t length) override;
  task<> allocate(std::uint64_t offset, std::uint64_t length) override;
  result<> truncate(std::uint64_t size) override;
  result<std::uint64_t> size() const override { return data_.size(); }
  result<std::uint64_t> seek_data(std::uint64_t offset) const override;
  result<std::uint64_t> seek_hole(std::uint64_t offset) const override;
  bool read_only() const override { return read_only_; }
  std::uint32_t alignment() const override { return alignment_; }
  std::uint64_t syncs_started() const override { return stats_.syncs; }

  void inject(Fault f) { faults_.push_back(f); }
  void clear_faults() { faults_.clear(); }
  // Writes that would grow the file beyond `limit` bytes store what fits and
  // fail with ENOSPC.
  void set_size_limit(std::optional<std::uint64_t> limit) { limit_ = limit; }
  // When true (default) every operation yields to the event loop once, so
  // concurrent coroutines interleave as they would with real I/O.
  void set_yield(bool y) { yield_ = y; }
  // Alignment mode: alignment() reports `bytes` (a power of two; 1 turns
  // the mode off), as an O_DIRECT file does, and unaligned reads and writes
  // are counted in stats().unaligned and handled as `unaligned` says.
  void set_alignment(std::uint32_t bytes, Unaligned unaligned = Unaligned::Bounce) {
    alignment_ = bytes;
    unaligned_ = unaligned;
  }

  // Simulated power loss: the visible contents become the durable image plus
  // each pending write with probability `keep` (0 = drop all unsynced).
  void crash(double keep = 0.0, std::uint32_t seed = 0);

  const std::vector<std::byte>& contents() const { return data_; }
  const Stats& stats() const { return stats_; }
  void reset_stats() { stats_ = {}; }

 private:
  struct Pending {
    std::uint64_t offset;
    std::vector<std::byte> bytes;  // empty + new_size set: a truncate
    std::optional<std::uint64_t> new_size;
  };

  std::optional<int> take_fault(Op op);
  void apply(std::vector<std::byte>& image, const Pending& p) const;
  void record(Pending p);
  boost::asio::awaitable<void> maybe_yield();
  task<> fill(std::uint64_t offset, std::uint64_t length, Op op);
  bool aligned(std::uint64_t offset, std::span<const iovec> iov) const;
  void widen_to_blocks(Pending& p) const;

  std::vector<std::byte> data_;
  std::vector<std::byte> durable_;
  std::vector<Pending> pending_;
  std::vector<Fault> faults_;
  std::optional<std::uint64_t> limit_;
  Stats stats_;
  bool read_only_;
  bool yield_ = true;
  std::uint32_t alignment_ = 1;
  Unaligned unaligned_ = Unaligned::Bounce;
};

}  // namespace qnbd::io
