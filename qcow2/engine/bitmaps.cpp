#include "qcow2/engine/bitmaps.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <stdexcept>

namespace qnbd::qcow2 {

using namespace format;

void DirtyBitmap::mark(std::uint64_t offset, std::uint64_t length) {
  if (!length || words.empty()) return;
  std::uint64_t first = offset >> entry.granularity_bits;
  const std::uint64_t last =
      std::min((offset + length - 1) >> entry.granularity_bits, words.size() * 64 - 1);
  changed = true;
  for (; first <= last && first % 64; ++first) words[first / 64] |= 1ull << (first % 64);
  for (; first + 63 <= last; first += 64) words[first / 64] = ~0ull;
  for (; first <= last; ++first) words[first / 64] |= 1ull << (first % 64);
}

void DirtyBitmap::fill(bool value, std::uint64_t disk_size) {
  const std::uint64_t bits = bit_count(disk_size);
  words.assign((bits + 63) / 64, value ? ~0ull : 0);
  if (value && bits % 64) words.back() = (1ull << (bits % 64)) - 1;
  changed = true;
}

std::vector<std::pair<std::uint64_t, bool>> DirtyBitmap::runs(std::uint64_t offset,
                                                              std::uint64_t length,
                                                              std::uint64_t disk_size) const {
  std::vector<std::pair<std::uint64_t, bool>> out;
  const std::uint64_t end = std::min(disk_size, offset + std::min(length, disk_size));
  std::uint64_t pos = offset;
  while (pos < end) {
    std::uint64_t bit = pos >> entry.granularity_bits;
    const bool dirty = get(bit);
    // Skip whole words of the same state, then single bits.
    const std::uint64_t same = dirty ? ~0ull : 0;
    std::uint64_t next = bit + 1;
    while ((next << entry.granularity_bits) < end) {
      if (next % 64 == 0 && next / 64 < words.size() && words[next / 64] == same) {
        next += 64;
        continue;
      }
      if (next / 64 >= words.size() || get(next) != dirty) break;
      ++next;
    }
    const std::uint64_t stop = std::min(end, next << entry.granularity_bits);
    out.emplace_back(stop - pos, dirty);
    pos = stop;
  }
  return out;
}

DirtyBitmap* BitmapSet::find(const std::string& name) {
  for (auto& b : list_)
    if (b.entry.name == name) return &b;
  return nullptr;
}

bool BitmapSet::any_changed() const {
  for (const auto& b : list_)
    if (b.changed) return true;
  return false;
}

std::string BitmapSet::add(const std::string& name, unsigned granularity_bits, bool enabled,
                           const Header& h) {
  if (find(name)) return "Bitmap already exists: " + name;
  if (list_.size() >= QCOW2_MAX_BITMAPS)
    return "Maximum number of persistent bitmaps is already reached";
  if (name.empty()) return "Bitmap name must not be empty";
  auto err = bitmap_constraint_error(name, granularity_bits, h.size, h.cluster_size());
  if (!err.empty()) return err;
  DirtyBitmap b;
  b.entry.name = name;
  b.entry.granularity_bits = static_cast<std::uint8_t>(granularity_bits);
  b.entry.flags = enabled ? BME_FLAG_AUTO : 0;
  b.fill(false, h.size);
  list_.push_back(std::move(b));
  directory_changed_ = true;
  return {};
}

void BitmapSet::discard_disk_copy(DirtyBitmap& b, std::uint64_t cluster_size) {
  for (std::uint64_t e : b.table)
    if (e & BME_TABLE_ENTRY_OFFSET_MASK)
      garbage_.emplace_back(e & BME_TABLE_ENTRY_OFFSET_MASK, cluster_size);
  if (b.entry.table_offset)
    garbage_.emplace_back(b.entry.table_offset, std::uint64_t{b.entry.table_size} * 8);
  b.table.clear();
  b.entry.table_offset = 0;
}

bool BitmapSet::remove(const std::string& name, std::uint64_t cluster_size) {
  for (auto it = list_.begin(); it != list_.end(); ++it) {
    if (it->entry.name != name) continue;
    discard_disk_copy(*it, cluster_size);
    list_.erase(it);
    directory_changed_ = true;
    return true;
  }
  return false;
}

namespace {

[[noreturn]] void fail(const std::string& name, const std::string& msg) {
  throw std::runtime_error(name + ": " + msg);
}

boost::asio::awaitable<std::vector<std::byte>> read_bytes(io::File& f, const std::string& name,
                                                          std::uint64_t offset, std::uint64_t n,
                                                          const char* what) {
  std::vector<std::byte> buf(n);
  if (auto r = co_await f.read_at(offset, buf); !r)
    fail(name, std::string("cannot read ") + what + ": " + r.error().message());
  co_return buf;
}

// QEMU's load_bitmap_data: the table must be exactly as long as the disk
// needs; all-ones entries and data clusters fill the bits.
boost::asio::awaitable<void> load_data(io::File& f, const Header& h, const std::string& name,
                                       DirtyBitmap& b) {
  const std::uint64_t cs = h.cluster_size();
  auto raw = co_await read_bytes(f, name, b.entry.table_offset,
                                 std::uint64_t{b.entry.table_size} * 8, "bitmap table");
  try {
    b.table = parse_bitmap_table(raw, cs);
  } catch (const FormatError& e) {
    fail(name, "bitmap '" + b.entry.name + "': " + e.what());
  }
  if (b.table.size() != bitmap_table_entries(h.size, b.entry.granularity_bits, cs))
    fail(name, "Could not read bitmap '" + b.entry.name + "' from image: Invalid argument");
  b.fill(false, h.size);
  b.changed = false;
  auto* bytes = reinterpret_cast<std::byte*>(b.words.data());
  const std::uint64_t total = b.words.size() * 8;
  for (std::uint64_t i = 0; i < b.table.size(); ++i) {
    const std::uint64_t from = i * cs;
    if (from >= total) break;
    const std::uint64_t n = std::min(cs, total - from);
    const std::uint64_t off = b.table[i] & BME_TABLE_ENTRY_OFFSET_MASK;
    if (off) {
      auto data = co_await read_bytes(f, name, off, n, "bitmap data");
      std::memcpy(bytes + from, data.data(), n);
    } else if (b.table[i] & BME_TABLE_ENTRY_FLAG_ALL_ONES) {
      std::memset(bytes + from, 0xff, n);
    }
  }
  static_assert(std::endian::native == std::endian::little, "bitmap words are stored as bytes");
  // Bits past the disk end are not part of the bitmap.
  const std::uint64_t bits = b.bit_count(h.size);
  if (bits % 64) b.words.back() &= (1ull << (bits % 64)) - 1;
}

}  // namespace

boost::asio::awaitable<BitmapSet> BitmapSet::load(io::File& f, const Header& h,
                                                  const std::string& name) {
  BitmapSet set;
  if (!h.bitmaps) co_return set;
  auto dir = co_await read_bytes(f, name, h.bitmaps->directory_offset, h.bitmaps->directory_size,
                                 "bitmap directory");
  std::vector<BitmapEntry> entries;
  try {
    entries = parse_bitmap_directory(dir, h);
  } catch (const FormatError& e) {
    fail(name, e.what());
  }
  for (auto& e : entries) {
    DirtyBitmap b;
    b.entry = std::move(e);
    b.inconsistent = b.entry.in_use();
    if (!b.inconsistent) {
      co_await load_data(f, h, name, b);
    } else {
      // Only to free its clusters if it is removed or cleared; a bad table
      // of a bitmap nobody can use is left alone (its clusters leak).
      auto raw = co_await read_bytes(f, name, b.entry.table_offset,
                                     std::uint64_t{b.entry.table_size} * 8, "bitmap table");
      try {
        b.table = parse_bitmap_table(raw, h.cluster_size());
      } catch (const FormatError&) {
      }
    }
    set.list_.push_back(std::move(b));
  }
  co_return set;
}

}  // namespace qnbd::qcow2
