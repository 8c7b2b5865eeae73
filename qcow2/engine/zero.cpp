// WRITE_ZEROES and TRIM. Whole (sub)clusters change only L2 entries: the
// zero flag (v3) or the subcluster zero bits (extended L2), keeping the host
// cluster unless the client allows unmapping. Partial (sub)clusters, and v2
// images that have no zero flag, get zero data through the write path.
// TRIM frees whole clusters; the freed refcounts and the hole punch happen
// after the L2 change is durable (rule 2).
#include "qcow2/engine/image.h"

namespace qnbd::qcow2 {

using namespace format;

namespace {

bool all_zero(std::span<const MapRun> runs) {
  return std::all_of(runs.begin(), runs.end(), [](auto& r) { return r.kind == MapKind::Zero; });
}

}  // namespace

task<> Image::write_zeroes(std::uint64_t offset, std::uint64_t length, bool may_trim, bool fast,
                           bool fua) {
  if (auto r = check_writable(); !r) co_return r;
  if (auto r = co_await mark_modified(); !r) co_return r;
  bitmaps_.record(offset, length);
  const std::uint64_t gran = g_.subcluster_size();
  const std::uint64_t end = offset + length;
  std::uint64_t mid_start = (offset + gran - 1) / gran * gran;
  std::uint64_t mid_end = end == size() ? (end + gran - 1) / gran * gran : end / gran * gran;
  // v2 has no zero flag: only unmapping (no backing file) avoids zero data.
  const bool metadata_only = header_.version >= 3 || (!backing_ && may_trim);
  if (!metadata_only || mid_start >= mid_end) mid_start = mid_end = end;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> edges;
  if (mid_start == mid_end) {
    edges.emplace_back(offset, end);
  } else {
    edges.emplace_back(offset, mid_start);
    edges.emplace_back(mid_end, end);
  }
  // Partial (sub)clusters need zero data unless they already read as zeros.
  for (auto [a, b] : edges) {
    if (a >= b) continue;
    auto runs = co_await map_range(a, b - a);
    if (!runs) co_return runs.error();
    if (all_zero(*runs)) continue;
    if (fast) co_return make_error_code(errc::fast_zero_unsupported);
    if (auto r = co_await write_zero_data(a, b - a); !r) co_return r;
  }
  for (std::uint64_t pos = mid_start; pos < mid_end;) {
    const std::uint64_t piece_end = g_.l2_piece_end(pos, mid_end);
    if (auto r = co_await zero_piece(pos, piece_end - pos, may_trim); !r) co_return r;
    pos = piece_end;
  }
  if (auto r = co_await after_update(); !r) co_return r;
  if (fua) co_return co_await flush();
  co_return result<>{};
}

namespace {

// New entry for a cluster whose subclusters [a, b) become zero.
L2Entry zeroed_entry(const Geometry& g, const L2Entry& e, std::uint64_t a, std::uint64_t b,
                     bool unmap, bool have_backing, bool zero_flag, bool& free_old) {
  const std::uint64_t host = l2_host_offset(e);
  const bool compressed = l2_compressed(e);
  const bool whole = a == 0 && b == g.cluster_size();
  free_old = false;
  if (!zero_flag) {  // v2, no backing file, unmap allowed: unallocated reads zeros
    free_old = compressed || host;
    return {0, 0};
  }
  if (!g.extended_l2()) {
    if (!compressed && host && !unmap) return {e.entry | QCOW_OFLAG_ZERO, 0};
    free_old = compressed || host;
    // Unallocated without a backing file already reads as zeros.
    if (!free_old && !have_backing && !(e.entry & QCOW_OFLAG_ZERO)) return e;
    return {QCOW_OFLAG_ZERO, 0};
  }
  if (whole && (unmap || compressed || !host)) {
    free_old = compressed || host;
    return {0, QCOW_L2_BITMAP_ALL_ZEROES};
  }
  const unsigned sa = static_cast<unsigned>(a >> g.subcluster_bits());
  const unsigned sb = static_cast<unsigned>((b - 1) >> g.subcluster_bits());
  const std::uint64_t mask = sc_range_mask(sa, sb - sa + 1);
  return {e.entry, (e.bitmap & ~mask) | (mask << 32)};
}

}  // namespace

// [offset, offset+length) is (sub)cluster aligned and inside one L2 table.
task<> Image::zero_piece(std::uint64_t offset, std::uint64_t length, bool unmap) {
  const std::uint64_t c0 = g_.cluster_index(offset);
  const std::uint64_t c1 = g_.cluster_index(offset + length - 1);
  std::optional<Inflight::Guard> claim(co_await inflight_.claim(c0, c1, true));
  auto guard = co_await meta_.lock();
  if (!backing_ && l1_l2_offset(l1_[g_.l1_index(offset)]) == 0) co_return result<>{};
  std::vector<std::pair<std::uint64_t, std::uint64_t>> partial_compressed;
  auto table = co_await writable_l2(offset);
  if (!table) co_return table.error();
  result<> checked;
  std::uint64_t c = c0;
  for (; c <= c1; ++c) {
    const std::uint64_t cstart = c << g_.cluster_bits();
    const std::uint64_t a = std::max(offset, cstart) - cstart;
    const std::uint64_t b = std::min(offset + length, cstart + g_.cluster_size()) - cstart;
    const std::uint64_t idx = g_.l2_index(cstart);
    const L2Entry e = load_l2(g_, (*table)->data.data(), idx);
    if (l2_compressed(e) && (a != 0 || b != g_.cluster_size())) {
      partial_compressed.emplace_back(cstart + a, b - a);  // needs real zero data
      continue;
    }
    bool free_old = false;
    const L2Entry n =
        zeroed_entry(g_, e, a, b, unmap, backing_ != nullptr, header_.version >= 3, free_old);
    if (free_old && !(checked = co_await guard_.unlink_data(e, cstart))) break;
    store_l2(g_, (*table)->data.data(), idx, n);
    if (free_old) refcounts_.defer_free_data_of(e);
  }
  // Entries changed before a refused one are kept (their frees are deferred).
  if (c > c0) mark_l2_dirty(**table, c0, c - 1);
  if (!checked) co_return checked;
  guard.unlock();
  claim.reset();
  for (auto [off, len] : partial_compressed)
    if (auto r = co_await write_zero_data(off, len); !r) co_return r;
  co_return result<>{};
}

task<> Image::trim(std::uint64_t offset, std::uint64_t length, bool fua) {
  if (auto r = check_writable(); !r) co_return r;
  // v2 has no zero flag: over a backing file a freed cluster would show the
  // backing data, so (like QEMU) TRIM does nothing there.
  if (header_.version < 3 && backing_) co_return result<>{};
  if (auto r = co_await mark_modified(); !r) co_return r;
  bitmaps_.record(offset, length);
  const std::uint64_t end = offset + length;
  const std::uint64_t start = g_.round_up_cluster(offset);
  const std::uint64_t stop = end == size() ? g_.round_up_cluster(end) : g_.cluster_start(end);
  for (std::uint64_t pos = start; pos < stop;) {
    const std::uint64_t piece_end = g_.l2_piece_end(pos, stop);
    if (auto r = co_await discard_piece(pos, piece_end - pos); !r) co_return r;
    pos = piece_end;
  }
  if (auto r = co_await after_update(); !r) co_return r;
  if (fua) co_return co_await flush();
  co_return result<>{};
}

task<> Image::discard_piece(std::uint64_t offset, std::uint64_t length) {
  const std::uint64_t c0 = g_.cluster_index(offset);
  const std::uint64_t c1 = g_.cluster_index(offset + length - 1);
  auto claim = co_await inflight_.claim(c0, c1, true);
  auto guard = co_await meta_.lock();
  const std::uint64_t l1e = l1_[g_.l1_index(offset)];
  if (l1_l2_offset(l1e) == 0 && !backing_) co_return result<>{};
  auto table = co_await writable_l2(offset);
  if (!table) co_return table.error();
  // Over a backing file the discarded range must not show backing data.
  const L2Entry empty = g_.extended_l2() ? L2Entry{0, backing_ ? QCOW_L2_BITMAP_ALL_ZEROES : 0}
                                         : L2Entry{backing_ ? QCOW_OFLAG_ZERO : 0, 0};
  result<> checked;
  std::uint64_t c = c0;
  for (; c <= c1; ++c) {
    const std::uint64_t idx = g_.l2_index(c << g_.cluster_bits());
    const L2Entry e = load_l2(g_, (*table)->data.data(), idx);
    if ((l2_compressed(e) || l2_host_offset(e)) &&
        !(checked = co_await guard_.unlink_data(e, c << g_.cluster_bits())))
      break;
    refcounts_.defer_free_data_of(e);
    store_l2(g_, (*table)->data.data(), idx, empty);
  }
  if (c > c0) mark_l2_dirty(**table, c0, c - 1);
  co_return checked;
}

}  // namespace qnbd::qcow2
