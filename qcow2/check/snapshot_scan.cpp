#include "qcow2/check/snapshot_scan.h"

#include "qcow2/format/endian.h"

#include <fmt/format.h>

namespace qnbd::qcow2::check {

using namespace format;

std::vector<Snapshot> parse_snapshots_for_check(std::span<const std::byte> t, std::uint32_t count,
                                                const Header& h) {
  std::vector<Snapshot> out;
  std::size_t pos = 0;
  auto fail = [](std::uint32_t i, const char* what) {
    throw FormatError(fmt::format("snapshot {}: {}", i, what));
  };
  for (std::uint32_t i = 0; i < count; ++i) {
    if (t.size() - pos < 40) fail(i, "snapshot table truncated");
    const std::byte* p = t.data() + pos;
    Snapshot s;
    s.l1_table_offset = load_be64(p);
    s.l1_size = load_be32(p + 8);
    const std::uint16_t id_size = load_be16(p + 12);
    const std::uint16_t name_size = load_be16(p + 14);
    s.date_sec = load_be32(p + 16);
    s.date_nsec = load_be32(p + 20);
    s.vm_clock_nsec = load_be64(p + 24);
    s.vm_state_size = load_be32(p + 32);
    const std::uint32_t extra = load_be32(p + 36);
    if (extra > QCOW_MAX_SNAPSHOT_EXTRA_DATA) fail(i, "extra data too large");
    const std::size_t len = 40 + std::size_t{extra} + id_size + name_size;
    if (t.size() - pos < len) fail(i, "snapshot table truncated");
    s.extra_data.assign(p + 40, p + 40 + extra);
    s.disk_size = h.size;
    if (extra >= 8) s.vm_state_size = load_be64(p + 40);
    if (extra >= 16) s.disk_size = load_be64(p + 48);
    s.id.assign(reinterpret_cast<const char*>(p + 40 + extra), id_size);
    s.name.assign(reinterpret_cast<const char*>(p + 40 + extra + id_size), name_size);
    out.push_back(std::move(s));
    pos = std::min(t.size(), pos + ((len + 7) & ~std::size_t{7}));
  }
  return out;
}

}  // namespace qnbd::qcow2::check
