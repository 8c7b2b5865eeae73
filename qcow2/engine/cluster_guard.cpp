#include "qcow2/engine/cluster_guard.h"

#include "common/co_try.h"

#include <fmt/format.h>

#include <algorithm>
#include <limits>

namespace qnbd::qcow2 {

using namespace format;

namespace {
constexpr std::uint64_t kAny = std::numeric_limits<std::uint64_t>::max();
}

task<> ClusterGuard::expect_refcount(std::uint64_t host, std::uint64_t lo, std::uint64_t hi,
                                     const What& what) {
  auto rc = co_await refcounts_.get(g_.cluster_index(host));
  if (!rc) co_return rc.error();
  if (*rc >= lo && *rc <= hi) co_return result<>{};
  co_return corrupt_(fmt::format("host cluster {:#x} ({}) has refcount {}", host, what(), *rc));
}

task<> ClusterGuard::referenced_data(std::uint64_t host, const What& what) {
  if (metadata_.contains_cluster(g_.cluster_index(host)))
    co_return corrupt_(fmt::format("host cluster {:#x} ({}) holds metadata", host, what()));
  co_return co_await expect_refcount(host, 1, kAny, what);
}

task<> ClusterGuard::rewrite_data(std::uint64_t host, std::uint64_t guest) {
  if (metadata_.contains_cluster(g_.cluster_index(host)))
    co_return corrupt_(fmt::format(
        "data write to host cluster {:#x} (guest offset {:#x}) would overwrite metadata", host,
        guest));
  co_return co_await expect_refcount(host, 1, 1, [guest] {
    return fmt::format("OFLAG_COPIED data of guest offset {:#x}, written in place", guest);
  });
}

task<> ClusterGuard::rewrite_table(std::uint64_t host) {
  co_return co_await expect_refcount(
      host, 1, 1, [] { return std::string("L2 table with OFLAG_COPIED, updated in place"); });
}

std::vector<std::uint64_t> ClusterGuard::data_clusters(const L2Entry& e) const {
  std::vector<std::uint64_t> out;
  if (l2_compressed(e)) {
    const CompressedDescriptor d = decode_compressed(g_, e);
    const std::uint64_t first = d.host_offset & ~511ull, end = first + d.sectors * 512;
    for (std::uint64_t c = g_.cluster_start(first); c < end; c += g_.cluster_size())
      out.push_back(c);
  } else if (const std::uint64_t host = l2_host_offset(e);
             host && g_.cluster_aligned(host) && !l2_reserved_bits_set(g_, e)) {
    out.push_back(host);
  }
  return out;
}

task<> ClusterGuard::unlink_data(const L2Entry& e, std::uint64_t guest) {
  const What what = [guest] {
    return fmt::format("data of guest offset {:#x}, about to be freed", guest);
  };
  for (std::uint64_t c : data_clusters(e)) QNBD_CO_TRY(co_await referenced_data(c, what));
  co_return result<>{};
}

task<> ClusterGuard::unlink_table(std::uint64_t host) {
  co_return co_await expect_refcount(
      host, 1, kAny, [] { return std::string("shared L2 table, about to be replaced by a copy"); });
}

void ClusterGuard::given_out(std::span<const HostRun> runs) {
  for (const HostRun& r : runs) {
    if (r.fresh) {
      fresh_from_ = std::min(fresh_from_, g_.cluster_index(r.offset));
      continue;
    }
    for (std::uint64_t k = 0; k < r.clusters; ++k)
      given_out_.insert(g_.cluster_index(r.offset) + k);
  }
}

task<> ClusterGuard::first_use(const Table& t, std::uint64_t guest_base) {
  // One walk per table: requests that find it under way wait for it (at QD32
  // every request for a new table came here while the first walked, and each
  // walked all its entries again), then pass if it did, or walk themselves.
  while (checking_.count(t.offset)) co_await walked_.wait();
  if (checked_tables_.count(t.offset)) co_return result<>{};
  checking_.insert(t.offset);
  auto r = co_await walk_table(t, guest_base);
  checking_.erase(t.offset);
  if (r) checked_tables_.insert(t.offset);
  walked_.notify_all();
  co_return r;
}

task<> ClusterGuard::walk_table(const Table& t, std::uint64_t guest_base) {
  for (std::uint64_t i = 0; i < g_.l2_entries(); ++i) {
    const L2Entry e = load_l2(g_, t.data.data(), i);
    if (!e.entry) continue;
    const std::uint64_t guest = guest_base + (i << g_.cluster_bits());
    for (std::uint64_t c : data_clusters(e)) {
      const What what = [guest, &t] {
        return fmt::format("data of guest offset {:#x} in L2 table {:#x}", guest, t.offset);
      };
      if (given_out_.count(g_.cluster_index(c)) || g_.cluster_index(c) >= fresh_from_)
        co_return corrupt_(fmt::format(
            "host cluster {:#x} ({}) had refcount 0 and was given out to other data", c, what()));
      QNBD_CO_TRY(co_await referenced_data(c, what));
      refcounts_.note_used(g_.cluster_index(c));
    }
  }
  co_return result<>{};
}

}  // namespace qnbd::qcow2
