// The internal snapshot table: variable-length entries (40-byte fixed part,
// extra data, id and name strings, padded to 8). Decoding validates every
// length against the buffer, so a hostile table cannot make us read past it.
#pragma once

#include "qcow2/format/header.h"

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace qnbd::qcow2::format {

struct Snapshot {
  std::uint64_t l1_table_offset = 0;
  std::uint32_t l1_size = 0;
  std::string id;
  std::string name;
  std::uint32_t date_sec = 0;
  std::uint32_t date_nsec = 0;
  std::uint64_t vm_clock_nsec = 0;
  std::uint64_t vm_state_size = 0;    // vm_state_size_large when present
  std::uint64_t disk_size = 0;        // from extra data; header size if absent
  std::vector<std::byte> extra_data;  // raw extra data, preserved
};

// strict: opening an image refuses snapshot L1 tables that are unaligned or
// larger than QEMU's limit. lenient: the checker keeps them (qemu's check
// reports them as corruptions and goes on). Bounds against the buffer are
// checked in both modes.
enum class SnapshotL1Check { strict, lenient };

// Decodes `count` entries from `table` (the bytes at snapshots_offset).
// Throws FormatError on truncation, oversized extra data, or (strict) bad
// snapshot L1 tables.
std::vector<Snapshot> parse_snapshot_table(std::span<const std::byte> table, std::uint32_t count,
                                           const Header& h,
                                           SnapshotL1Check l1 = SnapshotL1Check::strict);

// Encoded size of one entry (for reading: upper bound is computed by the
// caller from the file, we only need to decode what is there).
std::vector<std::byte> encode_snapshot_table(const std::vector<Snapshot>& snaps);

}  // namespace qnbd::qcow2::format
