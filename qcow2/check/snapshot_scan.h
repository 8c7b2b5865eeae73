// A lenient reading of the snapshot table for the checker: entries whose L1
// table is unaligned or too large are kept (qemu's check reports them as
// corruptions and goes on), where opening an image refuses them. Bounds
// against the buffer are still checked, so a hostile table cannot make us
// read past it.
#pragma once

#include "qcow2/format/header.h"
#include "qcow2/format/snapshot.h"

#include <cstddef>
#include <span>
#include <vector>

namespace qnbd::qcow2::check {

// Throws format::FormatError on truncation or oversized extra data.
std::vector<format::Snapshot> parse_snapshots_for_check(std::span<const std::byte> table,
                                                        std::uint32_t count,
                                                        const format::Header& h);

}  // namespace qnbd::qcow2::check
