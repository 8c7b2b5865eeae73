// What an export serves: a block device with NBD-shaped operations, each an
// awaitable returning an error as a value. Implemented by RawBackend and by
// the qcow2 adapter; the NBD front end knows nothing else about images.
#pragma once

#include "backend/backend_stats.h"
#include "common/task.h"
#include "io/completion.h"

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace qnbd {

namespace io {
class Ring;
}

struct Capabilities {
  bool read_only = false;
  bool flush = true;
  bool fua = true;
  bool trim = true;
  bool write_zeroes = true;
  bool fast_zero = true;
  bool cache = true;
  bool multi_conn = true;  // one shared cache for all connections
  // The fast path may run on any worker (BlockBackend::start_read's `away`):
  // it touches nothing of the home worker (a raw file's descriptor).
  bool fast_io_anywhere = false;
  std::uint32_t min_block = 1;
  std::uint32_t preferred_block = 4096;
};

// One run of base:allocation status (NBD_STATE_HOLE / NBD_STATE_ZERO).
struct Extent {
  std::uint64_t length;
  bool hole;
  bool zero;
};

// One run of a metadata context other than base:allocation (e.g.
// qemu:dirty-bitmap:NAME): its length and the context's flags for it.
struct StatusRun {
  std::uint64_t length;
  std::uint32_t flags;
};

// qemu's metadata context giving, per run, the layer of the backing chain
// that holds it: 0 = allocated nowhere, 1 = this image, 2 = its backing file...
inline constexpr std::string_view kAllocationDepthContext = "qemu:allocation-depth";

// True when [offset, offset+length) lies within a device of `size` bytes,
// without overflowing for offsets near 2^64.
constexpr bool range_fits(std::uint64_t offset, std::uint64_t length, std::uint64_t size) {
  return offset <= size && length <= size - offset;
}

// The public operations are the backend contract's one home (as nbdkit's
// backend_* functions): they check it for every implementation, then call the
// virtual do_* ones, which may assume it. The contract:
//  - a range must fit in size(), else errc::out_of_range;
//  - write, write_zeroes and trim on a read-only backend fail with
//    errc::read_only;
//  - an operation or flag the capabilities() do not offer fails with
//    errc::unsupported (FAST_ZERO: errc::fast_zero_unsupported);
//  - zero-length read, write, write_zeroes, trim and cache succeed without
//    reaching do_*; block_status needs a non-zero length;
//  - block_status returns at least one extent, each of non-zero length (an
//    implementation breaking this yields EIO).
// The NBD front end proves the same rules on the wire first (validate_request,
// which picks the NBD error), so there they hold by construction.
class BlockBackend {
 public:
  virtual ~BlockBackend() = default;

  virtual std::uint64_t size() const = 0;
  virtual Capabilities capabilities() const = 0;

  // Fills buf with the bytes at [offset, offset+buf.size()).
  task<> read(std::uint64_t offset, std::span<std::byte> buf);
  task<> write(std::uint64_t offset, std::span<const std::byte> buf, bool fua);
  // may_trim: the range may be deallocated (no NBD_CMD_FLAG_NO_HOLE).
  // fast: fail with errc::fast_zero_unsupported rather than write zeros slowly.
  task<> write_zeroes(std::uint64_t offset, std::uint64_t length, bool may_trim, bool fast,
                      bool fua);
  task<> trim(std::uint64_t offset, std::uint64_t length, bool fua);
  task<> flush();
  // Extents covering at least [offset, offset+1) and at most `length` bytes,
  // in order.
  task<std::vector<Extent>> block_status(std::uint64_t offset, std::uint64_t length);
  // Advisory prefetch.
  task<> cache(std::uint64_t offset, std::uint64_t length);
  // The request fast path: a read or write the backend can do as one file
  // I/O without suspending (a raw file; a qcow2 data cluster whose L2 table
  // is cached). True: started, and `c` will be completed with the byte count
  // or a negative errno, possibly before this returns; a result other than
  // buf.size() is redone through read()/write(), which then yields the same
  // bytes and errors as if the fast path had not been tried. False: nothing
  // was started; use read()/write(). Writes here carry no FUA.
  // `away`: called from a worker other than the home one, whose ring the
  // I/O is to run on; callers pass it only to a backend with
  // capabilities().fast_io_anywhere (the session checks the export's).
  bool start_read(std::uint64_t offset, std::span<std::byte> buf, io::Completion* c,
                  io::Ring* away = nullptr);
  bool start_write(std::uint64_t offset, std::span<const std::byte> buf, io::Completion* c,
                   io::Ring* away = nullptr);
  // Metadata contexts besides base:allocation ("qemu:dirty-bitmap:NAME"):
  // why `context` cannot be served ("" if it can; checked at start-up), and
  // its runs over [offset, offset+length), clipped to the device, in order.
  virtual std::string context_problem(const std::string& context) const {
    return "metadata context " + context + " is not available for this image";
  }
  virtual task<std::vector<StatusRun>> context_status(const std::string& context,
                                                      std::uint64_t offset, std::uint64_t length) {
    (void)context, (void)offset, (void)length;
    co_return make_error_code(errc::unsupported);
  }
  // Writes back everything dirty before the server exits.
  task<> close() { return do_close(); }
  // For the metrics endpoint; called on the home worker.
  virtual BackendStats stats() const { return {}; }

 protected:
  virtual task<> do_read(std::uint64_t offset, std::span<std::byte> buf) = 0;
  virtual task<> do_write(std::uint64_t offset, std::span<const std::byte> buf, bool fua) = 0;
  virtual task<> do_write_zeroes(std::uint64_t offset, std::uint64_t length, bool may_trim,
                                 bool fast, bool fua) = 0;
  virtual task<> do_trim(std::uint64_t offset, std::uint64_t length, bool fua) = 0;
  virtual task<> do_flush() = 0;
  virtual task<std::vector<Extent>> do_block_status(std::uint64_t offset, std::uint64_t length) = 0;
  virtual task<> do_cache(std::uint64_t offset, std::uint64_t length) = 0;
  virtual task<> do_close() = 0;
  virtual bool do_start_read(std::uint64_t, std::span<std::byte>, io::Completion*, io::Ring*) {
    return false;
  }
  virtual bool do_start_write(std::uint64_t, std::span<const std::byte>, io::Completion*,
                              io::Ring*) {
    return false;
  }

 private:
  // The error a modifying request breaks the contract with, if any.
  error_code check_modify(std::uint64_t offset, std::uint64_t length, bool fua) const;
};

}  // namespace qnbd
