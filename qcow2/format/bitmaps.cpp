#include "qcow2/format/bitmaps.h"

#include "qcow2/format/endian.h"

#include <fmt/format.h>

#include <cstring>

namespace qnbd::qcow2::format {
namespace {

[[noreturn]] void fail(const std::string& msg) { throw FormatError(msg); }

std::uint64_t entry_size(std::size_t name_size, std::uint64_t extra) {
  return (BME_DIR_ENTRY_FIXED_SIZE + name_size + extra + 7) & ~7ull;
}

std::uint64_t div_round_up(std::uint64_t a, std::uint64_t b) { return a / b + (a % b != 0); }

// QEMU's check_dir_entry: a bitmap that is not in use must cover the disk.
bool entry_valid(const BitmapEntry& e, const Header& h) {
  if (e.table_size == 0 || e.table_offset == 0 || e.table_offset % h.cluster_size() ||
      e.table_size > BME_MAX_TABLE_SIZE || e.granularity_bits > BME_MAX_GRANULARITY_BITS ||
      e.granularity_bits < BME_MIN_GRANULARITY_BITS || (e.flags & BME_RESERVED_FLAGS) ||
      e.name.size() > BME_MAX_NAME_SIZE || e.type != BT_DIRTY_TRACKING_BITMAP)
    return false;
  const std::uint64_t phys = std::uint64_t{e.table_size} * h.cluster_size();
  if (phys > BME_MAX_PHYS_SIZE) return false;
  return e.in_use() || h.size <= ((phys * 8) << e.granularity_bits);
}

}  // namespace

std::uint64_t bitmap_table_entries(std::uint64_t disk_size, unsigned granularity_bits,
                                   std::uint64_t cluster_size) {
  const std::uint64_t bits = div_round_up(disk_size, 1ull << granularity_bits);
  return div_round_up(div_round_up(bits, 8), cluster_size);
}

std::string bitmap_constraint_error(const std::string& name, unsigned granularity_bits,
                                    std::uint64_t disk_size, std::uint64_t cluster_size) {
  if (granularity_bits > BME_MAX_GRANULARITY_BITS)
    return fmt::format("Granularity exceeds maximum ({} bytes)", 1ull << BME_MAX_GRANULARITY_BITS);
  if (granularity_bits < BME_MIN_GRANULARITY_BITS)
    return fmt::format("Granularity is under minimum ({} bytes)", 1ull << BME_MIN_GRANULARITY_BITS);
  const std::uint64_t bytes = div_round_up(div_round_up(disk_size, 1ull << granularity_bits), 8);
  if (bytes > BME_MAX_PHYS_SIZE || bytes > std::uint64_t{BME_MAX_TABLE_SIZE} * cluster_size)
    return "Too much space will be occupied by the bitmap. Use larger granularity";
  if (name.size() > BME_MAX_NAME_SIZE)
    return fmt::format("Name length exceeds maximum ({} characters)", BME_MAX_NAME_SIZE);
  return {};
}

std::vector<BitmapEntry> parse_bitmap_directory(std::span<const std::byte> dir, const Header& h) {
  if (!h.bitmaps) return {};
  if (dir.empty()) fail("Requested bitmap directory size is zero");
  if (dir.size() > QCOW2_MAX_BITMAP_DIRECTORY_SIZE)
    fail("Requested bitmap directory size is too big");
  std::vector<BitmapEntry> out;
  std::uint64_t pos = 0;
  while (pos < dir.size()) {
    if (dir.size() - pos < BME_DIR_ENTRY_FIXED_SIZE) fail("Broken bitmap directory");
    if (out.size() >= h.bitmaps->nb_bitmaps)
      fail("More bitmaps found than specified in header extension");
    const std::byte* p = dir.data() + pos;
    BitmapEntry e;
    e.table_offset = load_be64(p);
    e.table_size = load_be32(p + 8);
    e.flags = load_be32(p + 12);
    e.type = std::to_integer<std::uint8_t>(p[16]);
    e.granularity_bits = std::to_integer<std::uint8_t>(p[17]);
    const std::uint16_t name_size = load_be16(p + 18);
    const std::uint32_t extra = load_be32(p + 20);
    const std::uint64_t size = entry_size(name_size, extra);
    if (size > dir.size() - pos) fail("Broken bitmap directory");
    if (extra != 0) fail("Bitmap extra data is not supported");
    e.name.assign(reinterpret_cast<const char*>(p + BME_DIR_ENTRY_FIXED_SIZE), name_size);
    if (!entry_valid(e, h))
      fail(fmt::format("Bitmap '{}' doesn't satisfy the constraints", e.name));
    out.push_back(std::move(e));
    pos += size;
  }
  if (out.size() != h.bitmaps->nb_bitmaps)
    fail("Less bitmaps found than specified in header extension");
  return out;
}

std::vector<std::byte> encode_bitmap_directory(const std::vector<BitmapEntry>& entries,
                                               const Header& h) {
  std::uint64_t total = 0;
  for (const auto& e : entries) total += entry_size(e.name.size(), 0);
  if (entries.empty() || entries.size() > QCOW2_MAX_BITMAPS ||
      total > QCOW2_MAX_BITMAP_DIRECTORY_SIZE)
    fail("invalid bitmap directory size");
  std::vector<std::byte> out(total);
  std::uint64_t pos = 0;
  for (const auto& e : entries) {
    if (!entry_valid(e, h))
      fail(fmt::format("Bitmap '{}' doesn't satisfy the constraints", e.name));
    std::byte* p = out.data() + pos;
    store_be64(p, e.table_offset);
    store_be32(p + 8, e.table_size);
    store_be32(p + 12, e.flags);
    p[16] = std::byte{e.type};
    p[17] = std::byte{e.granularity_bits};
    store_be16(p + 18, static_cast<std::uint16_t>(e.name.size()));
    std::memcpy(p + BME_DIR_ENTRY_FIXED_SIZE, e.name.data(), e.name.size());
    pos += entry_size(e.name.size(), 0);
  }
  return out;
}

bool bitmap_table_entry_valid(std::uint64_t entry, std::uint64_t cluster_size) {
  if (entry & BME_TABLE_ENTRY_RESERVED_MASK) return false;
  const std::uint64_t offset = entry & BME_TABLE_ENTRY_OFFSET_MASK;
  return offset == 0 || (!(entry & BME_TABLE_ENTRY_FLAG_ALL_ONES) && offset % cluster_size == 0);
}

std::vector<std::uint64_t> parse_bitmap_table(std::span<const std::byte> raw,
                                              std::uint64_t cluster_size) {
  std::vector<std::uint64_t> t(raw.size() / 8);
  for (std::size_t i = 0; i < t.size(); ++i) {
    t[i] = load_be64(raw.data() + i * 8);
    if (!bitmap_table_entry_valid(t[i], cluster_size))
      fail(fmt::format("invalid bitmap table entry {} ({:#x})", i, t[i]));
  }
  return t;
}

}  // namespace qnbd::qcow2::format
