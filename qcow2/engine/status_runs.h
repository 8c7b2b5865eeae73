// The runs of a status reply (base:allocation extents, metadata-context
// runs) are built in order: a run with the same status as the last one
// lengthens it, so the reply has no two equal neighbours.
#pragma once

#include "backend/block_backend.h"

#include <vector>

namespace qnbd::qcow2 {

inline bool same_status(const Extent& a, const Extent& b) {
  return a.hole == b.hole && a.zero == b.zero;
}
inline bool same_status(const StatusRun& a, const StatusRun& b) { return a.flags == b.flags; }

template <class Run>
void append_run(std::vector<Run>& out, const Run& r) {
  if (!out.empty() && same_status(out.back(), r))
    out.back().length += r.length;
  else
    out.push_back(r);
}

}  // namespace qnbd::qcow2
