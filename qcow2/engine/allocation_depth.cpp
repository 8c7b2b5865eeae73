// qemu:allocation-depth as qemu's bdrv_is_allocated_above: a range is held
// by the first layer of the chain whose status for it is data or zeros
// (data, compressed and zero clusters or subclusters; never unallocated
// ones). A backing file shorter than the image holds, as zeros, what lies
// past its end (qemu's synthesised EOF zeros). Depth 0: no layer holds it.
#include "qcow2/engine/image.h"
#include "qcow2/engine/status_runs.h"

namespace qnbd::qcow2 {

task<std::vector<StatusRun>> Image::allocation_depth(std::uint64_t offset, std::uint64_t length) {
  auto runs = co_await map_range(offset, status_window(offset, length));
  if (!runs) co_return runs.error();
  std::vector<StatusRun> out;
  for (const MapRun& r : *runs) {
    if (r.kind != MapKind::Backing) {
      append_run<StatusRun>(out, {r.length, r.unallocated ? 0u : 1u});
      continue;
    }
    std::uint64_t pos = r.guest;
    const std::uint64_t end = r.guest + r.length;
    while (pos < end) {
      if (pos >= backing_size_) {
        append_run<StatusRun>(out, {end - pos, 2});
        break;
      }
      auto b = co_await backing_->context_status(std::string(kAllocationDepthContext), pos,
                                                 std::min(end, backing_size_) - pos);
      if (!b) co_return b.error();
      if (b->empty()) co_return errno_error(EIO);
      for (const StatusRun& s : *b) {
        const std::uint64_t n = std::min(s.length, end - pos);
        append_run<StatusRun>(out, {n, s.flags == 0 ? 0 : s.flags + 1});
        pos += n;
        if (pos >= end) break;
      }
    }
  }
  co_return out;
}

}  // namespace qnbd::qcow2
