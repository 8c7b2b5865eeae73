// Persistent bitmaps on disk while the image is open read-write, in QEMU's
// order (block/qcow2-bitmap.c):
//  - before the first change, the recording bitmaps are marked in use in
//    place, with the autoclear bit dropped around the rewrite so that a
//    torn directory is never trusted. From then on a crash leaves them in
//    use, which every reader reports as inconsistent: never a clean bitmap
//    that misses a write. FLUSH needs nothing more.
//  - at close, each changed bitmap gets new data clusters and a new table,
//    then a new directory; all durable with their refcounts before the
//    header points at the directory; the old copies are freed after that.
#include "qcow2/engine/image.h"

#include "common/co_try.h"
#include "qcow2/format/endian.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>

namespace qnbd::qcow2 {

using namespace format;

task<> Image::write_autoclear(std::uint64_t bits) {
  std::byte b[8];
  store_be64(b, bits);
  QNBD_CO_TRY(co_await file_->write_at(HDR_AUTOCLEAR_FEATURES, b));
  QNBD_CO_TRY(co_await file_->sync());
  header_.autoclear_features = bits;
  co_return result<>{};
}

std::vector<BitmapEntry> Image::bitmap_entries() const {
  std::vector<BitmapEntry> out;
  for (const auto& b : bitmaps_.list()) out.push_back(b.entry);
  return out;
}

task<> Image::mark_bitmaps_in_use() {
  if (!header_.bitmaps || !bitmaps_.any_recording()) co_return result<>{};
  for (auto& b : bitmaps_.list())
    if (b.recording()) b.entry.flags |= BME_FLAG_IN_USE;
  std::vector<std::byte> dir;
  try {
    dir = encode_bitmap_directory(bitmap_entries(), header_);
  } catch (const FormatError& e) {
    spdlog::error("{}: {}", name_, e.what());
    co_return make_error_code(errc::invalid_image);
  }
  if (dir.size() != header_.bitmaps->directory_size) co_return make_error_code(errc::invalid_image);
  const std::uint64_t autoclear = header_.autoclear_features;
  QNBD_CO_TRY(co_await write_autoclear(autoclear & ~QCOW2_AUTOCLEAR_BITMAPS));
  QNBD_CO_TRY(co_await file_->write_at(header_.bitmaps->directory_offset, dir));
  QNBD_CO_TRY(co_await file_->sync());
  QNBD_CO_TRY(co_await write_autoclear(autoclear));
  spdlog::info("{}: recording into persistent bitmaps (marked in use)", name_);
  co_return result<>{};
}

// New data clusters (none for all-zero clusters) and a new table for b.
task<> Image::store_bitmap(DirtyBitmap& b) {
  const std::uint64_t cs = g_.cluster_size();
  const std::uint64_t entries = bitmap_table_entries(size(), b.entry.granularity_bits, cs);
  bitmaps_.discard_disk_copy(b, cs);
  const auto* bytes = reinterpret_cast<const std::byte*>(b.words.data());
  const std::uint64_t total = b.words.size() * 8;
  std::vector<std::byte> table(entries * 8);
  std::vector<std::byte> cluster(cs);
  for (std::uint64_t i = 0; i < entries && i * cs < total; ++i) {
    const std::uint64_t n = std::min(cs, total - i * cs);
    std::memset(cluster.data(), 0, cs);
    std::memcpy(cluster.data(), bytes + i * cs, n);
    if (std::all_of(cluster.begin(), cluster.end(), [](std::byte x) { return x == std::byte{0}; }))
      continue;
    auto off = co_await refcounts_.allocate_contiguous(1);
    if (!off) co_return alloc_error(off.error());
    QNBD_CO_TRY(co_await file_->write_at(*off, cluster));
    store_be64(table.data() + i * 8, *off);
    b.table.resize(entries);
    b.table[i] = *off;
  }
  b.table.resize(entries);
  auto off = co_await refcounts_.allocate_contiguous((table.size() + cs - 1) / cs);
  if (!off) co_return alloc_error(off.error());
  table.resize((table.size() + cs - 1) / cs * cs);
  QNBD_CO_TRY(co_await file_->write_at(*off, table));
  b.entry.table_offset = *off;
  b.entry.table_size = static_cast<std::uint32_t>(entries);
  b.entry.flags &= ~BME_FLAG_IN_USE;
  b.changed = false;
  co_return result<>{};
}

// Points the header at the new directory (or drops the extension when no
// bitmap is left). Cluster 0 is re-read: the refcount table may have moved.
task<> Image::write_bitmaps_header(std::optional<BitmapsExtension> ext) {
  std::vector<std::byte> c0(g_.cluster_size());
  QNBD_CO_TRY(co_await file_->read_at(0, c0));
  try {
    Header h = parse_header(c0);
    std::erase_if(h.unknown_extensions,
                  [](const HeaderExtension& e) { return e.type == QCOW2_EXT_MAGIC_BITMAPS; });
    h.bitmaps = ext;
    if (ext)
      h.autoclear_features |= QCOW2_AUTOCLEAR_BITMAPS;
    else
      h.autoclear_features &= ~QCOW2_AUTOCLEAR_BITMAPS;
    c0 = encode_header(h);
    header_.bitmaps = ext;
    header_.autoclear_features = h.autoclear_features;
  } catch (const FormatError& e) {
    spdlog::error("{}: cannot update the header: {}", name_, e.what());
    co_return make_error_code(errc::invalid_image);
  }
  QNBD_CO_TRY(co_await file_->write_at(0, c0));
  QNBD_CO_TRY(co_await file_->sync());
  co_return result<>{};
}

// Under the metadata lock, after flush_metadata(), at close.
task<> Image::store_bitmaps() {
  bool any = bitmaps_.directory_changed();
  for (auto& b : bitmaps_.list())
    if (!b.inconsistent && (b.changed || b.entry.in_use())) {
      QNBD_CO_TRY(co_await store_bitmap(b));
      any = true;
    }
  if (!any) co_return result<>{};
  const std::uint64_t cs = g_.cluster_size();
  std::optional<BitmapsExtension> ext;
  if (!bitmaps_.list().empty()) {
    std::vector<std::byte> dir;
    try {
      dir = encode_bitmap_directory(bitmap_entries(), header_);
    } catch (const FormatError& e) {
      spdlog::error("{}: {}", name_, e.what());
      co_return make_error_code(errc::invalid_image);
    }
    const std::uint64_t bytes = dir.size();
    auto off = co_await refcounts_.allocate_contiguous((bytes + cs - 1) / cs);
    if (!off) co_return alloc_error(off.error());
    dir.resize((bytes + cs - 1) / cs * cs);
    QNBD_CO_TRY(co_await file_->write_at(*off, dir));
    metadata_.add(*off, bytes);
    ext = BitmapsExtension{static_cast<std::uint32_t>(bitmaps_.list().size()), bytes, *off};
  }
  if (header_.bitmaps)
    bitmaps_.garbage().emplace_back(header_.bitmaps->directory_offset,
                                    header_.bitmaps->directory_size);
  // Data, tables, directory and their refcounts durable before the header
  // points at them (rule 1); then the old copies lose their references.
  QNBD_CO_TRY(co_await refcounts_.write_back());
  QNBD_CO_TRY(co_await sync_file());
  QNBD_CO_TRY(co_await write_bitmaps_header(ext));
  for (auto [off, bytes] : bitmaps_.garbage())
    for (std::uint64_t c = off >> g_.cluster_bits();
         c < (off + bytes + cs - 1) >> g_.cluster_bits(); ++c)
      QNBD_CO_TRY(co_await refcounts_.update(c, -1));
  bitmaps_.garbage().clear();
  co_return result<>{};
}

}  // namespace qnbd::qcow2
