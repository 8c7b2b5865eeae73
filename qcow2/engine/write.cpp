// Guest writes. A piece (the part of a request inside one L2 table) whose
// clusters are all ours (COPIED, allocated where written) is written in
// place, host-contiguous extents in parallel. Otherwise the piece is an
// allocating write: new clusters for what is unallocated, zero, compressed or
// shared; the untouched part of every (sub)cluster that becomes ours is
// filled with what it reads as now (backing file, old shared or compressed
// data, zeros) using ONE read of old data (none when it reads as zeros) and
// ONE write of old + new data together per host-contiguous extent. The L2
// entries are linked only after that data is written (rule 1).
#include "common/co_try.h"
#include "qcow2/engine/cow_plan.h"
#include "qcow2/engine/image.h"

#include <boost/container/small_vector.hpp>
#include <spdlog/spdlog.h>

namespace qnbd::qcow2 {

using namespace format;

task<> Image::write(std::uint64_t offset, std::span<const std::byte> buf, bool fua) {
  if (auto r = check_writable(); !r) co_return r;
  if (auto r = co_await mark_modified(); !r) co_return r;
  bitmaps_.record(offset, buf.size());
  std::uint64_t pos = offset;
  const std::uint64_t end = offset + buf.size();
  while (pos < end) {
    const std::uint64_t piece_end = g_.l2_piece_end(pos, end);
    auto r = co_await write_piece(pos, buf.subspan(pos - offset, piece_end - pos));
    if (!r) co_return r;
    pos = piece_end;
  }
  if (auto r = co_await after_update(); !r) co_return r;
  if (fua) co_return co_await flush();
  co_return result<>{};
}

std::uint64_t in_place_host(const Geometry& g, const L2Entry& e, std::uint64_t from,
                            std::uint64_t to) {
  if (!l2_copied(e) || l2_compressed(e) || l2_reserved_bits_set(g, e)) return 0;
  const std::uint64_t host = l2_host_offset(e);
  if (host == 0 || !g.cluster_aligned(host)) return 0;
  for (std::uint64_t p = from; p < to; p = (p / g.subcluster_size() + 1) * g.subcluster_size())
    if (subcluster_type(g, e, g.subcluster_index(p)) != SubclusterType::Normal) return 0;
  return host;
}

task<> Image::write_piece(std::uint64_t offset, std::span<const std::byte> buf) {
  const std::uint64_t c0 = g_.cluster_index(offset);
  const std::uint64_t c1 = g_.cluster_index(offset + buf.size() - 1);
  for (;;) {
    auto table = co_await l2_table_for(offset);
    if (!table) co_return table.error();
    const std::uint64_t l1e = l1_[g_.l1_index(offset)];
    if (*table && l1_l2_offset(l1e) != (*table)->offset) continue;  // L1 changed meanwhile
    // Inline: a piece is one or two clusters almost always (no allocation).
    boost::container::small_vector<std::uint64_t, 4> hosts;
    bool in_place = *table && l1_copied(l1e);
    for (std::uint64_t c = c0; in_place && c <= c1; ++c) {
      const std::uint64_t from = std::max(offset, c << g_.cluster_bits());
      const std::uint64_t to = std::min(offset + buf.size(), (c + 1) << g_.cluster_bits());
      const L2Entry e = load_l2(g_, (*table)->data.data(), g_.l2_index(from));
      const std::uint64_t host = in_place_host(g_, e, from, to);
      if (!host) in_place = false;
      hosts.push_back(host);
    }
    auto claim = inflight_.try_claim(c0, c1, !in_place);
    if (!claim) {
      co_await inflight_.changed();
      continue;
    }
    if (in_place)
      for (std::uint64_t c = c0; c <= c1; ++c)
        QNBD_CO_TRY(co_await guard_.rewrite_data(hosts[c - c0], c << g_.cluster_bits()));
    if (in_place) co_return co_await write_in_place(offset, buf, hosts);
    co_return co_await write_allocating(offset, buf);
  }
}

task<> Image::write_in_place(std::uint64_t offset, std::span<const std::byte> buf,
                             std::span<const std::uint64_t> hosts) {
  Tasks io;
  std::uint64_t pos = offset;
  const std::uint64_t end = offset + buf.size();
  std::size_t i = 0;
  while (pos < end) {
    // Extend the extent while the next cluster follows on the host.
    const std::uint64_t host = hosts[i] + g_.offset_in_cluster(pos);
    std::uint64_t stop = std::min(end, g_.cluster_start(pos) + g_.cluster_size());
    while (stop < end && hosts[i + 1] == hosts[i] + g_.cluster_size()) {
      ++i;
      stop = std::min(end, stop + g_.cluster_size());
    }
    ++i;
    io.push_back(file_->write_at(host, buf.subspan(pos - offset, stop - pos)));
    pos = stop;
  }
  co_return co_await run_parallel(std::move(io));
}

task<std::shared_ptr<Table>> Image::writable_l2(std::uint64_t guest) {
  const std::uint64_t i = g_.l1_index(guest);
  const std::uint64_t e = l1_[i];
  const std::uint64_t old = l1_l2_offset(e);
  if (old && l1_copied(e)) {
    QNBD_CO_TRY(co_await guard_.rewrite_table(old));
    co_return co_await l2_table_for(guest);
  }
  if (old) QNBD_CO_TRY(co_await guard_.unlink_table(old));
  auto runs = co_await refcounts_.allocate(1);
  if (!runs) co_return alloc_error(runs.error());
  guard_.given_out(*runs);
  const std::uint64_t fresh = runs->front().offset;
  auto t = l2_cache_.create(fresh);
  guard_.table_is_ours(fresh);
  metadata_.add(fresh, g_.cluster_size());
  if (old) {
    // Shared with a snapshot: our own copy; the old table loses a reference
    // once the L1 entry pointing at the copy is durable.
    auto src = co_await l2_table_for(guest);
    if (!src) {
      l2_cache_.drop(fresh);
      rollback_failed(co_await refcounts_.update(g_.cluster_index(fresh), -1),
                      "giving back a new L2 table's cluster");
      co_return src.error();
    }
    t->data = (*src)->data;
    refcounts_.defer_free_cluster(old);
  }
  l1_[i] = fresh | QCOW_OFLAG_COPIED;
  l1_dirty_.insert(i);
  co_return t;
}

task<> Image::write_allocating(std::uint64_t offset, std::span<const std::byte> buf) {
  // Phase 1, under the lock: plan every cluster and allocate new ones.
  auto guard = co_await meta_.lock();
  auto table = co_await writable_l2(offset);
  if (!table) co_return table.error();
  CowPlan plan(g_, offset, buf.size());
  for (std::uint64_t c = plan.first_cluster(); c <= plan.last_cluster(); ++c) {
    const L2Entry e = load_l2(g_, (*table)->data.data(), g_.l2_index(c << g_.cluster_bits()));
    if (!plan.add_cluster(e)) co_return corrupt(fmt::format("invalid L2 entry {:#x}", e.entry));
  }
  for (const ClusterPlan& p : plan.clusters()) {
    if (p.keep) QNBD_CO_TRY(co_await guard_.rewrite_data(p.host, p.guest));
    if (p.free_old_cluster || p.free_old_compressed)
      QNBD_CO_TRY(co_await guard_.unlink_data(p.old_entry, p.guest));
  }
  auto runs = co_await refcounts_.allocate(plan.new_clusters());
  if (!runs) co_return alloc_error(runs.error());
  guard_.given_out(*runs);
  plan.assign_hosts(*runs);
  plan.skip_blank_fill(
      [this](const ClusterPlan& p) { return reads_as_zero(p.old_entry, p.guest); });
  QNBD_CO_TRY(co_await growth_.prepare_ahead(refcounts_.used_end(), plan.new_clusters()));
  guard.unlock();

  // Phase 2, no lock: one read of what the filled parts read as now, one
  // write of old + new data per host extent.
  auto r = co_await plan.fill(
      [this](std::uint64_t off, std::span<std::byte> b) { return read(off, b); }, fill_buffers_);
  if (r) r = co_await run_parallel(plan.writes(*file_, buf));

  // Phase 3, under the lock: link the L2 entries (or give the clusters back).
  auto relock = co_await meta_.lock();
  if (!r) {
    result<> back;
    for (const HostRun& h : *runs)
      for (std::uint64_t k = 0; back && k < h.clusters; ++k)
        back = co_await refcounts_.update(g_.cluster_index(h.offset) + k, -1);
    rollback_failed(back, "giving back the clusters of a failed write");
    co_return r;
  }
  auto linked = co_await l2_table_for(offset);
  if (!linked) co_return linked.error();
  if (!*linked) co_return corrupt("L2 table vanished during a write");
  std::uint64_t lo = UINT64_MAX, hi = 0;  // guest clusters whose entries changed
  for (const ClusterPlan& p : plan.clusters()) {
    if (!p.changes_metadata) continue;
    if (!p.blank || !growth_.durable(p.host + g_.cluster_size())) needs_barrier_ = true;
    const std::uint64_t idx = g_.l2_index(p.guest);
    store_l2(g_, (*linked)->data.data(), idx, p.new_entry);
    lo = std::min(lo, g_.cluster_index(p.guest));
    hi = std::max(hi, g_.cluster_index(p.guest));
    if (p.free_old_compressed || p.free_old_cluster) refcounts_.defer_free_data_of(p.old_entry);
  }
  if (lo <= hi) mark_l2_dirty(**linked, lo, hi);
  co_return result<>{};
}

// Backing data past the backing file's end reads as zeros.
bool Image::reads_as_zero(const L2Entry& e, std::uint64_t guest) const {
  for (unsigned sc = 0; sc < g_.subclusters_per_cluster(); ++sc) {
    std::uint64_t host = 0;
    const auto kind = classify(e, sc, host);
    if (!kind || !(*kind == MapKind::Zero || (*kind == MapKind::Backing && guest >= backing_size_)))
      return false;
  }
  return true;
}

task<> Image::write_zero_data(std::uint64_t offset, std::uint64_t length) {
  static constexpr std::size_t kChunk = 1 << 20;
  const std::vector<std::byte> zeros(std::min<std::uint64_t>(length, kChunk));
  while (length) {
    const std::uint64_t n = std::min<std::uint64_t>(length, zeros.size());
    if (auto r = co_await write(offset, std::span(zeros.data(), n), false); !r) co_return r;
    offset += n;
    length -= n;
  }
  co_return result<>{};
}

}  // namespace qnbd::qcow2
