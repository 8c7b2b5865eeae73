// qcow2 consistency check and repair, with the semantics of `qemu-img check`:
// recompute every cluster's refcount from the header, the active and
// snapshot L1/L2 tables, the snapshot table, the refcount structures and the
// bitmaps, compare with the refcount blocks on disk, and report (or repair)
// leaks, refcount mismatches, references beyond the end of the file, bad
// entries and OFLAG_COPIED mismatches.
//
// Used by `qnbd-img check` and by the engine, which repairs an image whose
// dirty bit is set before serving it (repair_dirty_image). Everything is an
// awaitable over io::File, so the engine can call it from its open coroutine.
#pragma once

#include "common/task.h"
#include "io/file.h"
#include "io/uring.h"

#include <cstdint>
#include <functional>
#include <string>

namespace qnbd::qcow2::check {

// What may be repaired (qemu's BDRV_FIX_LEAKS / BDRV_FIX_ERRORS).
enum class Fix : unsigned { none = 0, leaks = 1, errors = 2, all = 3 };
inline bool fixes(Fix mode, Fix what) {
  return (static_cast<unsigned>(mode) & static_cast<unsigned>(what)) != 0;
}

// Counters as qemu's BdrvCheckResult reports them.
struct CheckResult {
  std::int64_t corruptions = 0;
  std::int64_t leaks = 0;
  std::int64_t check_errors = 0;
  std::int64_t corruptions_fixed = 0;
  std::int64_t leaks_fixed = 0;
  std::uint64_t image_end_offset = 0;
  std::uint64_t total_clusters = 0;
  std::uint64_t allocated_clusters = 0;
  std::uint64_t fragmented_clusters = 0;
  std::uint64_t compressed_clusters = 0;
  // Why the check could not complete (check_errors > 0), one line.
  std::string failure;
};

// One line per finding ("ERROR cluster 5 refcount=0 reference=1", ...), in
// qemu's wording.
using Log = std::function<void(const std::string&)>;

struct CheckOptions {
  Fix fix = Fix::none;
  Log log;  // may be empty
  // Lines after this many are counted but not passed to `log` (a dirty
  // 100 GiB image can have millions of mismatches); 0 = no limit.
  std::uint64_t max_log_lines = 0;
};

// Checks (and with opts.fix, repairs) the image in `file`. Never throws: a
// malformed header, an I/O error or an allocation failure ends the check
// with check_errors > 0 and `failure` set. After a repair that leaves no
// corruption, the dirty and corrupt bits are cleared (after a sync).
boost::asio::awaitable<CheckResult> check_image(io::File& file, CheckOptions opts);

// The engine's repair on open: rebuild/fix everything (qemu does
// BDRV_FIX_ERRORS | BDRV_FIX_LEAKS when it opens a dirty image read-write).
// Fails (errc::corrupt_image) if the image still has corruptions or the
// check could not complete; logs through spdlog (first 100 findings).
// The check does small unaligned reads and writes: `file` must not be
// opened with O_DIRECT. The second form opens `path` itself (page cache,
// read-write) on `ring`, so an engine serving with O_DIRECT can repair
// before it opens its own file.
task<CheckResult> repair_dirty_image(io::File& file);
task<CheckResult> repair_dirty_image(io::Ring& ring, const std::string& path);

// qemu-img check's exit status for a result: 0 clean, 1 check failed,
// 2 corruptions, 3 leaks only.
int exit_code(const CheckResult& r);

}  // namespace qnbd::qcow2::check
