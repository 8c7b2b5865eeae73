// A new refcount structure from the in-memory refcounts (qemu's
// rebuild_refcount_structure): refcount blocks and a refcount table are
// placed in clusters nothing references, written, made durable, and only
// then the header is switched to them. The old structure becomes leaked
// clusters, which the caller frees afterwards.
//
// "Nothing references" includes references beyond the end of the file,
// which the comparison ignores as qemu does: qemu's overlap check refuses a
// rebuild that would write over its L1 table or refcount table; here those
// clusters are counted before allocating, so the structure goes around them.
#include "qcow2/check/checker.h"

#include <algorithm>

namespace qnbd::qcow2::check {

result<> Checker::reserve_past_eof() {
  far_past_eof_.clear();
  if (past_eof_overflow_) {
    say("ERROR too many references beyond the end of the file to rebuild the refcount "
        "structure safely");
    res_.failure =
        "cannot rebuild the refcount structure: too many references beyond the end "
        "of the file";
    return errno_error(EFBIG);
  }
  // Count what lies where the rebuild may allocate: the free clusters
  // inside the table and past its end about one refcount block per
  // refblock_entries clusters plus the table. Farther references keep
  // being corruptions (as in qemu) and are checked before every write, so
  // a rebuild that gets there fails instead of overwriting them.
  const std::uint64_t limit = imrt_.size() + imrt_.size() / 32 + 4096;
  auto ranges = past_eof_;
  std::sort(ranges.begin(), ranges.end());
  for (auto [lo, hi] : ranges) {
    for (std::uint64_t k = lo; k <= std::min(hi, limit - 1); ++k)
      (void)imrt_.increment(k);  // saturated is still non-zero: not free
    if (hi < limit) continue;
    lo = std::max(lo, limit);
    if (!far_past_eof_.empty() && lo <= far_past_eof_.back().second + 1)
      far_past_eof_.back().second = std::max(far_past_eof_.back().second, hi);
    else
      far_past_eof_.emplace_back(lo, hi);
  }
  return {};
}

result<> Checker::refuse_far_overlap(std::uint64_t offset, std::uint64_t size) {
  const std::uint64_t lo = offset >> geo().cluster_bits();
  const std::uint64_t hi = (offset + size - 1) >> geo().cluster_bits();
  // The first range that ends at or after lo.
  auto it = std::lower_bound(far_past_eof_.begin(), far_past_eof_.end(), lo,
                             [](const auto& r, std::uint64_t c) { return r.second < c; });
  if (it == far_past_eof_.end() || it->first > hi) return {};
  say("ERROR rebuilding the refcount structure would overwrite cluster {} referenced beyond "
      "the end of the file",
      std::max(lo, it->first));
  res_.failure =
      "cannot rebuild the refcount structure without overwriting metadata beyond "
      "the end of the file";
  return errno_error(EIO);
}

// Writes the refcount blocks for clusters [first, end) that hold any
// non-zero refcount, allocating the blocks themselves in the in-memory
// table. Returns whether `reftable` had to grow.
task<> Checker::write_refblocks(std::uint64_t first, std::uint64_t end,
                                std::vector<std::uint64_t>& reftable, bool& grown) {
  std::uint64_t first_free = 0;
  grown = false;
  std::vector<std::byte> block(cs());
  const std::uint64_t per_block = geo().refblock_entries();
  for (std::uint64_t cluster = first; cluster < end; ++cluster) {
    if (imrt_.get(cluster) == 0) continue;
    const std::uint64_t index = cluster / per_block;
    const std::uint64_t block_start = index * per_block;
    std::uint64_t offset;
    if (index < reftable.size() && reftable[index]) {
      offset = reftable[index];
    } else {
      // Never place a block inside a range whose refblock is already written.
      first_free = std::max(first_free, block_start);
      const std::uint64_t c = imrt_.allocate(1, first_free);
      offset = c * cs();
      if (c >= end) end = c + 1;  // the block holding this one's refcount must be written
      if (index >= reftable.size()) {
        const std::uint64_t bytes = ((index + 1) * 8 + cs() - 1) / cs() * cs();
        reftable.resize(bytes / 8, 0);
        grown = true;
      }
      reftable[index] = offset;
    }
    imrt_.encode_block(index, block);
    QNBD_CO_TRY(refuse_far_overlap(offset, cs()));
    QNBD_CO_TRY(co_await file_.write_at(offset, block));
    cluster = block_start + per_block - 1;
  }
  co_return result<>{};
}

task<> Checker::rebuild_refcount_structure() {
  QNBD_CO_TRY(reserve_past_eof());
  std::vector<std::uint64_t> reftable;
  bool grown = false;
  QNBD_CO_TRY(co_await write_refblocks(0, imrt_.size(), reftable, grown));
  std::uint64_t reftable_offset = 0;
  std::uint64_t reftable_clusters = 0;
  // Placing the table changes refcounts, which may need another refcount
  // block, which may grow the table: repeat until it fits.
  do {
    reftable_clusters = (reftable.size() * 8 + cs() - 1) / cs();
    std::uint64_t first_free = 0;
    const std::uint64_t c = imrt_.allocate(reftable_clusters, first_free);
    reftable_offset = c * cs();
    QNBD_CO_TRY(co_await write_refblocks(c, c + reftable_clusters, reftable, grown));
  } while (grown);

  if (reftable_clusters > format::QCOW_MAX_REFTABLE_SIZE / cs() + 1) co_return errno_error(EFBIG);
  std::vector<std::byte> raw(reftable_clusters * cs());
  for (std::uint64_t i = 0; i < reftable.size(); ++i)
    format::store_be64(raw.data() + i * 8, reftable[i]);
  QNBD_CO_TRY(refuse_far_overlap(reftable_offset, raw.size()));
  QNBD_CO_TRY(co_await file_.write_at(reftable_offset, raw));
  // The new structure is durable before the header points at it.
  QNBD_CO_TRY(co_await file_.sync());
  std::byte hdr[12];
  format::store_be64(hdr, reftable_offset);
  format::store_be32(hdr + 8, static_cast<std::uint32_t>(reftable_clusters));
  QNBD_CO_TRY(co_await file_.write_at(format::HDR_REFCOUNT_TABLE_OFFSET, hdr));
  QNBD_CO_TRY(co_await file_.sync());

  meta_.header.refcount_table_offset = reftable_offset;
  meta_.header.refcount_table_clusters = static_cast<std::uint32_t>(reftable_clusters);
  reftable.resize(reftable_clusters * cs() / 8, 0);
  meta_.reftable = std::move(reftable);
  disk_.reset();
  co_return refresh_file_size();
}

}  // namespace qnbd::qcow2::check
