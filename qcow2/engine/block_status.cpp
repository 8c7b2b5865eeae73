// base:allocation from the L2 tables: data (and compressed) clusters are
// allocated, zero clusters are holes that read as zeros, unallocated ones
// take the backing image's status (holes + zeros past its end).
#include "qcow2/engine/image.h"
#include "qcow2/engine/status_runs.h"

#include <algorithm>

namespace qnbd::qcow2 {

// Bounds the work of one request; the client asks again for the rest.
std::uint64_t Image::status_window(std::uint64_t offset, std::uint64_t length) const {
  return std::min({length, 64 * g_.l2_coverage(), size() - offset});
}

task<std::vector<Extent>> Image::block_status(std::uint64_t offset, std::uint64_t length) {
  auto runs = co_await map_range(offset, status_window(offset, length));
  if (!runs) co_return runs.error();
  std::vector<Extent> out;
  for (const MapRun& r : *runs) {
    switch (r.kind) {
      case MapKind::Data:
      case MapKind::Compressed:
        append_run<Extent>(out, {r.length, false, false});
        break;
      case MapKind::Zero:
        append_run<Extent>(out, {r.length, true, true});
        break;
      case MapKind::Backing: {
        std::uint64_t pos = r.guest;
        const std::uint64_t end = r.guest + r.length;
        while (pos < end) {
          if (pos >= backing_size_) {
            append_run<Extent>(out, {end - pos, true, true});
            break;
          }
          auto b = co_await backing_->block_status(pos, std::min(end, backing_size_) - pos);
          if (!b) co_return b.error();
          if (b->empty()) co_return errno_error(EIO);
          for (const Extent& e : *b) {
            const std::uint64_t n = std::min(e.length, end - pos);
            append_run<Extent>(out, {n, e.hole, e.zero});
            pos += n;
            if (pos >= end) break;
          }
        }
        break;
      }
    }
  }
  co_return out;
}

}  // namespace qnbd::qcow2
