// Persistent dirty bitmaps in memory: loaded at open, marked by every write,
// write-zeroes and trim while enabled, and stored back at close
// (bitmap_store.cpp). A bitmap found in use at open was left by a writer
// that did not close cleanly: its data is unknown, so it is kept on disk as
// it is (inconsistent), never recorded into, exported or stored.
//
// Bit i of a bitmap covers guest bytes [i << granularity_bits, ...); on disk
// bit i is bit i % 8 of byte i / 8 (QEMU's serialization), which on a
// little-endian host is the layout of `words` itself.
#pragma once

#include "common/task.h"
#include "io/file.h"
#include "qcow2/format/bitmaps.h"

#include <cstdint>
#include <string>
#include <vector>

namespace qnbd::qcow2 {

struct DirtyBitmap {
  format::BitmapEntry entry;         // as last stored on disk
  std::vector<std::uint64_t> table;  // its bitmap table on disk
  std::vector<std::uint64_t> words;  // the bits (empty if inconsistent)
  bool inconsistent = false;
  bool changed = false;  // differs from the disk copy: stored at close

  std::uint64_t bit_count(std::uint64_t disk_size) const {
    return (disk_size + entry.granularity() - 1) >> entry.granularity_bits;
  }
  bool recording() const { return entry.enabled() && !inconsistent; }
  bool get(std::uint64_t bit) const { return (words[bit / 64] >> (bit % 64)) & 1; }
  // Marks every granule [offset, offset+length) touches.
  void mark(std::uint64_t offset, std::uint64_t length);
  void fill(bool value, std::uint64_t disk_size);
  // Runs of equal state from `offset`, covering at most `length` bytes
  // (clipped to the disk): {length, dirty}.
  std::vector<std::pair<std::uint64_t, bool>> runs(std::uint64_t offset, std::uint64_t length,
                                                   std::uint64_t disk_size) const;
};

class BitmapSet {
 public:
  // Everything in the image's bitmap directory; throws std::runtime_error
  // ("NAME: Bitmap 'x' doesn't satisfy the constraints") on a bad directory
  // or table, as QEMU refuses to open such an image.
  static boost::asio::awaitable<BitmapSet> load(io::File& file, const format::Header& h,
                                                const std::string& name);

  std::vector<DirtyBitmap>& list() { return list_; }
  const std::vector<DirtyBitmap>& list() const { return list_; }
  DirtyBitmap* find(const std::string& name);
  bool any_recording() const {
    for (const auto& b : list_)
      if (b.recording()) return true;
    return false;
  }
  bool any_changed() const;

  // Changes of the directory (qnbd-img bitmap), stored at close. add returns
  // QEMU's error text, empty on success.
  std::string add(const std::string& name, unsigned granularity_bits, bool enabled,
                  const format::Header& h);
  bool remove(const std::string& name, std::uint64_t cluster_size);
  bool directory_changed() const { return directory_changed_; }
  void set_directory_changed() { directory_changed_ = true; }
  // Host ranges {offset, bytes} that stop being used once the next store's
  // header is durable: replaced tables and data, removed bitmaps.
  std::vector<std::pair<std::uint64_t, std::uint64_t>>& garbage() { return garbage_; }
  // The clusters of b's table and data on disk.
  void discard_disk_copy(DirtyBitmap& b, std::uint64_t cluster_size);

  // The request path: marks the enabled bitmaps (a loop over a few words).
  // Callers have made the in-use flags durable first (Image::mark_modified).
  void record(std::uint64_t offset, std::uint64_t length) {
    for (auto& b : list_)
      if (b.recording()) b.mark(offset, length);
  }

 private:
  std::vector<DirtyBitmap> list_;
  bool directory_changed_ = false;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> garbage_;
};

}  // namespace qnbd::qcow2
