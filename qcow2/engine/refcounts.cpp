#include "qcow2/engine/refcounts.h"

#include "qcow2/format/constants.h"
#include "qcow2/format/endian.h"
#include "qcow2/format/entries.h"

#include <spdlog/spdlog.h>

#include <algorithm>

namespace qnbd::qcow2 {

using namespace format;

Refcounts::Refcounts(io::File& file, const Geometry& g, std::uint64_t reftable_offset,
                     std::uint32_t reftable_clusters, std::vector<std::uint64_t> reftable,
                     std::size_t cache_tables, MetadataMap& metadata)
    : file_(file),
      g_(g),
      reftable_offset_(reftable_offset),
      reftable_clusters_(reftable_clusters),
      reftable_(std::move(reftable)),
      cache_(file, g.cluster_size(), cache_tables),
      metadata_(metadata) {
  // Unknown size: nothing counts as fresh.
  const auto size = file_.size();
  high_water_ = size ? (*size + g_.cluster_size() - 1) >> g_.cluster_bits() : max_clusters();
  metadata_.add(reftable_offset_, std::uint64_t{reftable_clusters_} << g_.cluster_bits());
  for (std::uint64_t e : reftable_)
    if (reftable_block_offset(e)) metadata_.add(reftable_block_offset(e), g_.cluster_size());
}

std::uint64_t Refcounts::max_clusters() const {
  return (QCOW_MAX_CLUSTER_OFFSET + 1) >> g_.cluster_bits();
}

task<std::shared_ptr<Table>> Refcounts::block_for(std::uint64_t cluster, bool create, Avoid avoid) {
  const std::uint64_t ri = g_.reftable_index(cluster);
  if (create) {
    if (auto r = co_await ensure_block(ri, avoid); !r) co_return r.error();
  } else if (ri >= reftable_.size() || reftable_block_offset(reftable_[ri]) == 0) {
    co_return std::shared_ptr<Table>{};  // no block: every refcount here is 0
  }
  const std::uint64_t off = reftable_block_offset(reftable_[ri]);
  if (off % g_.cluster_size()) {
    spdlog::error("qcow2: refcount block offset {:#x} is not cluster aligned", off);
    co_return make_error_code(errc::corrupt_image);
  }
  co_return co_await cache_.get(off);
}

task<std::uint64_t> Refcounts::get(std::uint64_t cluster) {
  auto b = co_await block_for(cluster, false, {});
  if (!b) co_return b.error();
  if (!*b) co_return std::uint64_t{0};
  co_return get_refcount((*b)->data.data(), g_.refcount_order(), g_.refblock_index(cluster));
}

std::optional<std::uint64_t> Refcounts::peek(std::uint64_t cluster) {
  const std::uint64_t ri = g_.reftable_index(cluster);
  if (ri >= reftable_.size() || reftable_block_offset(reftable_[ri]) == 0) return 0;
  const std::uint64_t off = reftable_block_offset(reftable_[ri]);
  const Table* b = off % g_.cluster_size() ? nullptr : cache_.peek(off);
  if (!b) return std::nullopt;
  return get_refcount(b->data.data(), g_.refcount_order(), g_.refblock_index(cluster));
}

task<> Refcounts::set(std::uint64_t cluster, std::uint64_t value, Avoid avoid) {
  auto b = co_await block_for(cluster, true, avoid);
  if (!b) co_return b.error();
  const std::uint64_t i = g_.refblock_index(cluster);
  set_refcount((*b)->data.data(), g_.refcount_order(), i, value);
  const std::size_t byte = static_cast<std::size_t>((i << g_.refcount_order()) / 8);
  cache_.mark_dirty(**b, byte, byte + std::max<std::size_t>(1, (1u << g_.refcount_order()) / 8));
  if (value) high_water_ = std::max(high_water_, cluster + 1);
  co_return result<>{};
}

task<> Refcounts::update(std::uint64_t cluster, std::int64_t delta) {
  auto cur = co_await get(cluster);
  if (!cur) co_return cur.error();
  const std::uint64_t v = *cur;
  if (delta < 0 && v < static_cast<std::uint64_t>(-delta)) {
    spdlog::error("qcow2: refcount of cluster {} would drop below zero", cluster);
    co_return make_error_code(errc::corrupt_image);
  }
  if (delta > 0 && g_.refcount_max() - v < static_cast<std::uint64_t>(delta)) {
    spdlog::error("qcow2: refcount of cluster {} would overflow", cluster);
    co_return make_error_code(errc::corrupt_image);
  }
  const std::uint64_t nv = v + static_cast<std::uint64_t>(delta);
  if (nv == 0 && cluster < free_index_) free_index_ = cluster;
  co_return co_await set(cluster, nv, {});
}

// Makes sure refcount block `ri` exists. A new block goes to the first
// cluster of its own range not in `avoid` (so it counts itself), else to
// the next free cluster after it.
task<> Refcounts::ensure_block(std::uint64_t ri, Avoid avoid) {
  if (ri >= reftable_.size())
    if (auto r = co_await grow_table(ri + 1, avoid); !r) co_return r;
  if (reftable_block_offset(reftable_[ri]) != 0) co_return result<>{};
  auto c = co_await find_free(ri * g_.refblock_entries(), 1, avoid);
  if (!c) co_return c.error();
  auto t = cache_.create(*c << g_.cluster_bits());
  metadata_.add(*c << g_.cluster_bits(), g_.cluster_size());
  reftable_[ri] = *c << g_.cluster_bits();
  reftable_dirty_ = true;
  if (g_.reftable_index(*c) == ri) {
    set_refcount(t->data.data(), g_.refcount_order(), g_.refblock_index(*c), 1);
    high_water_ = std::max(high_water_, *c + 1);
    co_return result<>{};
  }
  co_return co_await set(*c, 1, avoid);
}

// First run of n free clusters at or after `from` that does not meet `avoid`.
task<std::uint64_t> Refcounts::find_free(std::uint64_t from, std::uint64_t n, Avoid avoid) {
  std::uint64_t start = std::max<std::uint64_t>(from, 1);  // never cluster 0 (header)
  std::uint64_t c = start;
  while (c - start < n) {
    if (c >= max_clusters()) co_return make_error_code(errc::no_space);
    bool is_free = !avoid.contains(c);
    if (is_free) {
      auto rc = co_await get(c);
      if (!rc) co_return rc.error();
      is_free = *rc == 0;
      if (is_free && metadata_.contains_cluster(c)) {
        spdlog::error("qcow2: cluster {} holds metadata but its refcount is 0", c);
        co_return make_error_code(errc::corrupt_image);
      }
    }
    ++c;
    if (!is_free) start = c;
  }
  co_return start;
}

task<HostRuns> Refcounts::allocate(std::uint64_t n) {
  HostRuns runs;
  while (n) {
    auto c = co_await find_free(free_index_, 1, {});
    if (!c) co_return c.error();
    const bool fresh = *c >= high_water_;
    // Setting the refcount may place a new refcount block on *c itself.
    if (auto r = co_await set(*c, 1, {{*c, 1}, {}}); !r) co_return r.error();
    free_index_ = *c + 1;
    const std::uint64_t off = *c << g_.cluster_bits();
    if (!runs.empty() && runs.back().fresh == fresh &&
        runs.back().offset + (runs.back().clusters << g_.cluster_bits()) == off)
      ++runs.back().clusters;
    else
      runs.push_back({off, 1, fresh});
    --n;
  }
  co_return runs;
}

task<std::uint64_t> Refcounts::allocate_contiguous(std::uint64_t n) {
  auto start = co_await find_free(free_index_, n, {});
  if (!start) co_return start.error();
  const Avoid mine{{*start, n}, {}};
  for (std::uint64_t c = *start; c < *start + n; ++c)
    if (auto r = co_await set(c, 1, mine); !r) co_return r.error();
  co_return *start << g_.cluster_bits();
}

task<bool> Refcounts::allocate_at(std::uint64_t c) {
  // result<bool> would take an error_code as a bool.
  auto failed = [](error_code e) { return result<bool>(boost::system::in_place_error, e); };
  auto rc = co_await get(c);
  if (!rc) co_return failed(rc.error());
  if (*rc != 0 || c == 0 || metadata_.contains_cluster(c)) co_return false;
  if (auto r = co_await set(c, 1, {{c, 1}, {}}); !r) co_return failed(r.error());
  co_return true;
}

task<std::vector<bool>> Refcounts::in_use(std::uint64_t clusters) {
  std::vector<bool> out(clusters);
  for (std::uint64_t first = 0; first < clusters; first += g_.refblock_entries()) {
    auto b = co_await block_for(first, false, {});
    if (!b) co_return b.error();
    if (!*b) continue;
    const std::uint64_t n = std::min(clusters - first, g_.refblock_entries());
    for (std::uint64_t i = 0; i < n; ++i)
      out[first + i] = get_refcount((*b)->data.data(), g_.refcount_order(), i) != 0;
  }
  co_return out;
}

void Refcounts::defer_free_bytes(std::uint64_t host_offset, std::uint64_t bytes) {
  if (bytes) deferred_.push_back({host_offset, bytes});
}

void Refcounts::defer_free_data_of(const format::L2Entry& e) {
  if (format::l2_compressed(e)) {
    const format::CompressedDescriptor d = format::decode_compressed(g_, e);
    defer_free_bytes(d.host_offset & ~511ull, d.sectors * 512);
  } else if (const std::uint64_t host = format::l2_host_offset(e)) {
    defer_free_cluster(host);
  }
}

// A bigger table goes into free space; its own clusters are counted through
// the (in-memory) new table, which becomes current now and durable at the
// next write_back (table, sync, header, sync).
task<> Refcounts::grow_table(std::uint64_t min_entries, Avoid avoid) {
  const std::uint64_t per_cluster = g_.cluster_size() / 8;
  std::uint64_t entries = std::max<std::uint64_t>(min_entries, reftable_.size() * 2);
  entries = (entries + per_cluster - 1) / per_cluster * per_cluster;
  if (entries * 8 > QCOW_MAX_REFTABLE_SIZE) co_return make_error_code(errc::no_space);
  const std::uint64_t clusters = entries / per_cluster;
  const Range old{reftable_offset_ >> g_.cluster_bits(), reftable_clusters_};
  reftable_.resize(entries, 0);
  auto start = co_await find_free(free_index_, clusters, avoid);
  if (!start) co_return start.error();
  const Avoid mine{{*start, clusters}, avoid.a};
  for (std::uint64_t c = *start; c < *start + clusters; ++c)
    if (auto r = co_await set(c, 1, mine); !r) co_return r;
  spdlog::debug("qcow2: refcount table grows to {} clusters at {:#x}", clusters,
                *start << g_.cluster_bits());
  reftable_offset_ = *start << g_.cluster_bits();
  reftable_clusters_ = static_cast<std::uint32_t>(clusters);
  metadata_.add(reftable_offset_, clusters << g_.cluster_bits());
  reftable_dirty_ = header_dirty_ = true;
  old_tables_.push_back(old);
  co_return result<>{};
}

task<> Refcounts::write_back() {
  if (auto r = co_await cache_.write_dirty(); !r) co_return r;
  if (auto r = co_await file_.sync(); !r) co_return r;
  if (reftable_dirty_) {
    std::vector<std::byte> buf(std::uint64_t{reftable_clusters_} << g_.cluster_bits());
    for (std::size_t i = 0; i < reftable_.size() && i * 8 < buf.size(); ++i)
      store_be64(buf.data() + i * 8, reftable_[i]);
    if (auto r = co_await file_.write_at(reftable_offset_, buf); !r) co_return r;
    if (auto r = co_await file_.sync(); !r) co_return r;
    reftable_dirty_ = false;
  }
  if (header_dirty_) {
    std::byte h[12];
    store_be64(h, reftable_offset_);
    store_be32(h + 8, reftable_clusters_);
    if (auto r = co_await file_.write_at(HDR_REFCOUNT_TABLE_OFFSET, h); !r) co_return r;
    if (auto r = co_await file_.sync(); !r) co_return r;
    header_dirty_ = false;
    // Nothing durable points at the old tables any more.
    for (const Range& t : old_tables_) {
      metadata_.remove(t.first << g_.cluster_bits(), t.count << g_.cluster_bits());
      for (std::uint64_t c = t.first; c < t.first + t.count; ++c)
        if (auto r = co_await update(c, -1); !r) co_return r;
    }
    old_tables_.clear();
  }
  co_return result<>{};
}

task<> Refcounts::apply_deferred() {
  auto frees = std::move(deferred_);
  deferred_.clear();
  for (const Range& f : frees) {
    const std::uint64_t first = f.first >> g_.cluster_bits();
    const std::uint64_t last = (f.first + f.count - 1) >> g_.cluster_bits();
    for (std::uint64_t c = first; c <= last; ++c) {
      if (auto r = co_await update(c, -1); !r) co_return r;
      auto rc = co_await get(c);
      if (rc && *rc == 0) {
        metadata_.remove(c << g_.cluster_bits(), g_.cluster_size());
        // Freed space goes back to the filesystem; advisory.
        (void)co_await file_.punch_hole(c << g_.cluster_bits(), g_.cluster_size());
      }
    }
  }
  co_return result<>{};
}

}  // namespace qnbd::qcow2
