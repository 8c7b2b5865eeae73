#include "server/read_plan.h"

#include <algorithm>

namespace qnbd::server {

std::vector<ReadChunk> plan_read_chunks(std::uint64_t offset, std::uint32_t length,
                                        std::span<const Extent> extents, std::uint32_t min_hole) {
  std::vector<ReadChunk> out;
  auto add = [&out](std::uint64_t off, std::uint32_t len, bool hole) {
    if (len == 0) return;
    if (!out.empty() && out.back().hole == hole) {
      out.back().length += len;
      return;
    }
    out.push_back({off, len, hole});
  };
  std::uint64_t pos = offset;
  const std::uint64_t end = offset + length;
  for (const auto& e : extents) {
    if (pos >= end) break;
    const auto len = static_cast<std::uint32_t>(std::min<std::uint64_t>(e.length, end - pos));
    add(pos, len, e.zero && len >= min_hole);
    pos += len;
  }
  if (pos < end) add(pos, static_cast<std::uint32_t>(end - pos), false);  // status unknown: data
  return out;
}

}  // namespace qnbd::server
