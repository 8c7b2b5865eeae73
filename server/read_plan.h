// Splits a structured READ into OFFSET_DATA and OFFSET_HOLE chunks from the
// backend's allocation status, so zero ranges cost neither a read nor wire
// bytes (as qemu-nbd's sparse reads). Pure: unit-tested.
#pragma once

#include "backend/block_backend.h"

#include <cstdint>
#include <span>
#include <vector>

namespace qnbd::server {

struct ReadChunk {
  std::uint64_t offset;
  std::uint32_t length;
  bool hole;
};

// Holes shorter than min_hole are merged into the data around them; the
// chunks cover [offset, offset+length) exactly, in order.
std::vector<ReadChunk> plan_read_chunks(std::uint64_t offset, std::uint32_t length,
                                        std::span<const Extent> extents,
                                        std::uint32_t min_hole = 4096);

}  // namespace qnbd::server
