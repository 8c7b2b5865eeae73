#include "qcow2/engine/cow_plan.h"

#include "qcow2/engine/coro_sync.h"

#include <algorithm>
#include <cstring>

namespace qnbd::qcow2 {

using namespace format;

namespace {

// Reads whose gap is at most this are merged into one (QEMU merges COW reads
// up to 16 KiB apart; one cluster or 64 KiB is still cheaper than two I/Os).
constexpr std::uint64_t kMergeGap = 64 * 1024;

bool entry_valid(const Geometry& g, const L2Entry& e) {
  if (!l2_compressed(e) && (l2_reserved_bits_set(g, e) || !g.cluster_aligned(l2_host_offset(e))))
    return false;
  if (l2_compressed(e) && g.extended_l2() && e.bitmap) return false;
  for (unsigned sc = 0; sc < g.subclusters_per_cluster(); ++sc)
    if (subcluster_type(g, e, sc) == SubclusterType::Invalid) return false;
  return true;
}

std::uint64_t subcluster_mask(const Geometry& g, std::uint64_t from, std::uint64_t to) {
  const unsigned a = static_cast<unsigned>(from >> g.subcluster_bits());
  const unsigned b = static_cast<unsigned>((to - 1) >> g.subcluster_bits());
  return sc_range_mask(a, b - a + 1);
}

}  // namespace

CowPlan::CowPlan(const Geometry& g, std::uint64_t offset, std::uint64_t length)
    : g_(g),
      offset_(offset),
      end_(offset + length),
      first_(g.cluster_index(offset)),
      last_(g.cluster_index(offset + length - 1)) {}

bool CowPlan::add_cluster(const L2Entry& e) {
  if (!entry_valid(g_, e)) return false;
  ClusterPlan p;
  p.guest = (first_ + clusters_.size()) << g_.cluster_bits();
  p.old_entry = e;
  const std::uint64_t cs = g_.cluster_size();
  const std::uint64_t ws = std::max(offset_, p.guest) - p.guest;
  const std::uint64_t we = std::min(end_, p.guest + cs) - p.guest;
  const std::uint64_t old_host = l2_host_offset(e);
  const bool compressed = l2_compressed(e);
  p.keep = old_host && l2_copied(e) && !compressed;
  p.host = p.keep ? old_host : 0;
  // Subcluster-aligned span of what the write touches.
  const std::uint64_t scs = g_.subcluster_size();
  const std::uint64_t touched_start = ws / scs * scs;
  const std::uint64_t touched_end = (we + scs - 1) / scs * scs;
  bool all_normal = p.keep;
  for (std::uint64_t o = touched_start; all_normal && o < touched_end; o += scs)
    all_normal = subcluster_type(g_, e, g_.subcluster_index(p.guest + o)) == SubclusterType::Normal;
  p.changes_metadata = true;
  if (all_normal) {
    p.span_start = ws;  // plain in-place write
    p.span_end = we;
    p.changes_metadata = false;
  } else if (compressed) {
    p.span_start = 0;
    p.span_end = cs;
    p.free_old_compressed = true;
  } else {
    p.span_start = touched_start;
    p.span_end = touched_end;
    if (!p.keep && old_host) {
      // Moving a shared cluster: everything allocated in it comes along.
      p.free_old_cluster = true;
      const std::uint32_t alloc = g_.extended_l2() ? static_cast<std::uint32_t>(e.bitmap) : 1u;
      if (cluster_type(g_, e) == ClusterType::Normal && alloc) {
        const unsigned lo = static_cast<unsigned>(__builtin_ctz(alloc));
        const unsigned hi = 31u - static_cast<unsigned>(__builtin_clz(alloc));
        p.span_start = std::min<std::uint64_t>(p.span_start, lo * scs);
        p.span_end = std::max<std::uint64_t>(p.span_end, (hi + 1) * scs);
        if (!g_.extended_l2()) p.span_start = 0, p.span_end = cs;
      }
    }
  }
  clusters_.push_back(p);
  return true;
}

std::uint64_t CowPlan::new_clusters() const {
  return static_cast<std::uint64_t>(
      std::count_if(clusters_.begin(), clusters_.end(), [](auto& p) { return !p.keep; }));
}

void CowPlan::assign_hosts(std::span<const HostRun> runs) {
  std::size_t run = 0;
  std::uint64_t k = 0;
  for (ClusterPlan& p : clusters_) {
    if (!p.keep) {
      p.host = runs[run].offset + (k << g_.cluster_bits());
      p.fresh = runs[run].fresh;
      if (++k == runs[run].clusters) ++run, k = 0;
    }
    if (!p.changes_metadata) continue;
    p.new_entry.entry = p.host | QCOW_OFLAG_COPIED;
    if (g_.extended_l2()) {
      const std::uint64_t mask = subcluster_mask(g_, p.span_start, p.span_end);
      const bool had_data = !l2_compressed(p.old_entry) && l2_host_offset(p.old_entry);
      const std::uint64_t alloc = (had_data ? p.old_entry.bitmap & QCOW_L2_BITMAP_ALL_ALLOC : 0);
      const std::uint64_t zero = (p.old_entry.bitmap >> 32) & ~mask;
      p.new_entry.bitmap = alloc | mask | (zero << 32);
    }
  }
}

void CowPlan::skip_blank_fill(const std::function<bool(const ClusterPlan&)>& reads_zero) {
  for (ClusterPlan& p : clusters_) {
    if (p.keep || !p.fresh || !p.changes_metadata || !reads_zero(p)) continue;
    p.blank = true;
    p.span_start = std::max(offset_, p.guest) - p.guest;
    p.span_end = std::min(end_, p.guest + g_.cluster_size()) - p.guest;
  }
}

std::uint64_t CowPlan::hull_start() const {
  return clusters_.front().guest + clusters_.front().span_start;
}
std::uint64_t CowPlan::hull_end() const {
  return clusters_.back().guest + clusters_.back().span_end;
}

task<> CowPlan::fill(ReadFn read, io::BufferCache& buffers) {
  const std::uint64_t hs = hull_start(), he = hull_end();
  const std::uint64_t head = offset_ - hs, tail = he - end_;
  if (!head && !tail) co_return result<>{};  // blank clusters, or whole ones
  if (head && tail && end_ - offset_ <= std::max(kMergeGap, g_.cluster_size())) {
    fill_ = buffers.take(he - hs);
    const std::span<std::byte> all = fill_.span();
    if (auto r = co_await read(hs, all); !r) co_return r;
    head_ = all.first(head);
    tail_ = all.last(tail);
    co_return result<>{};
  }
  // Separate blocks so that each read and each piece of the write starts
  // aligned (head and tail are whole blocks when the request is).
  const std::uint64_t head_cap =
      (head + io::kDirectAlign - 1) / io::kDirectAlign * io::kDirectAlign;
  fill_ = buffers.take(head_cap + tail);
  head_ = fill_.span().first(head);
  tail_ = fill_.span().subspan(head_cap, tail);
  Tasks reads;
  if (head) reads.push_back(read(hs, head_));
  if (tail) reads.push_back(read(end_, tail_));
  co_return co_await run_parallel(std::move(reads));
}

Tasks CowPlan::writes(io::File& file, std::span<const std::byte> data) {
  const std::uint64_t hs = hull_start();
  auto add_part = [&](auto& v, std::uint64_t from, std::uint64_t to) {
    // [from, to) in guest space, cut along head | data | tail.
    auto piece = [&](std::uint64_t a, std::uint64_t b, const std::byte* base,
                     std::uint64_t origin) {
      const std::uint64_t s = std::max(a, from), e = std::min(b, to);
      if (s < e) v.push_back({const_cast<std::byte*>(base + (s - origin)), e - s});
    };
    piece(hs, offset_, head_.data(), hs);
    piece(offset_, end_, data.data(), offset_);
    piece(end_, end_ + tail_.size(), tail_.data(), end_);
  };
  Tasks io;
  iovs_.reserve(clusters_.size());
  for (std::size_t i = 0; i < clusters_.size();) {
    const ClusterPlan& a = clusters_[i];
    std::size_t j = i;
    while (j + 1 < clusters_.size() && clusters_[j].span_end == g_.cluster_size() &&
           clusters_[j + 1].span_start == 0 &&
           clusters_[j + 1].host == clusters_[j].host + g_.cluster_size())
      ++j;
    const ClusterPlan& b = clusters_[j];
    add_part(iovs_.emplace_back(), a.guest + a.span_start, b.guest + b.span_end);
    io.push_back(file.writev_at(a.host + a.span_start, iovs_.back()));
    i = j + 1;
  }
  return io;
}

}  // namespace qnbd::qcow2
