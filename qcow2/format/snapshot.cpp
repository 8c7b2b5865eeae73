#include "qcow2/format/snapshot.h"

#include "qcow2/format/endian.h"

#include <fmt/format.h>

namespace qnbd::qcow2::format {
namespace {

std::size_t align8(std::size_t n) { return (n + 7) & ~std::size_t{7}; }

[[noreturn]] void fail(std::uint32_t i, const char* what) {
  throw FormatError(fmt::format("snapshot {}: {}", i, what));
}

}  // namespace

std::vector<Snapshot> parse_snapshot_table(std::span<const std::byte> t, std::uint32_t count,
                                           const Header& h, SnapshotL1Check l1) {
  std::vector<Snapshot> out;
  std::size_t pos = 0;
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
    if (l1 == SnapshotL1Check::strict) {
      if (s.l1_size > QCOW_MAX_L1_SIZE / 8) fail(i, "snapshot L1 table too large");
      if (s.l1_table_offset % h.cluster_size() || s.l1_table_offset > QCOW_MAX_CLUSTER_OFFSET)
        fail(i, "snapshot L1 table offset invalid");
    }
    out.push_back(std::move(s));
    pos += align8(len);
    if (pos > t.size()) pos = t.size();
  }
  return out;
}

std::vector<std::byte> encode_snapshot_table(const std::vector<Snapshot>& snaps) {
  std::vector<std::byte> out;
  for (const auto& s : snaps) {
    const std::size_t len = 40 + s.extra_data.size() + s.id.size() + s.name.size();
    const std::size_t start = out.size();
    out.resize(start + align8(len));
    std::byte* p = out.data() + start;
    store_be64(p, s.l1_table_offset);
    store_be32(p + 8, s.l1_size);
    store_be16(p + 12, static_cast<std::uint16_t>(s.id.size()));
    store_be16(p + 14, static_cast<std::uint16_t>(s.name.size()));
    store_be32(p + 16, s.date_sec);
    store_be32(p + 20, s.date_nsec);
    store_be64(p + 24, s.vm_clock_nsec);
    store_be32(p + 32,
               static_cast<std::uint32_t>(std::min<std::uint64_t>(s.vm_state_size, 0xffffffffu)));
    store_be32(p + 36, static_cast<std::uint32_t>(s.extra_data.size()));
    std::copy(s.extra_data.begin(), s.extra_data.end(), p + 40);
    std::copy(reinterpret_cast<const std::byte*>(s.id.data()),
              reinterpret_cast<const std::byte*>(s.id.data()) + s.id.size(),
              p + 40 + s.extra_data.size());
    std::copy(reinterpret_cast<const std::byte*>(s.name.data()),
              reinterpret_cast<const std::byte*>(s.name.data()) + s.name.size(),
              p + 40 + s.extra_data.size() + s.id.size());
  }
  return out;
}

}  // namespace qnbd::qcow2::format
