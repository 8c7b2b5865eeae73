// OFLAG_COPIED must be set exactly when a cluster's refcount is 1, in the
// active L1 table and its L2 tables (qemu's check_oflag_copied). Runs after
// the refcounts were fixed, so it compares against the repaired values.
#include "qcow2/check/checker.h"

namespace qnbd::qcow2::check {

using namespace format;

const char* Checker::overlaps_metadata(std::uint64_t offset, std::uint64_t size) const {
  auto hit = [&](std::uint64_t o, std::uint64_t s) {
    return s && offset < o + s && o < offset + size;
  };
  const Header& h = meta_.header;
  if (hit(0, cs())) return "qcow2_header";
  if (hit(h.l1_table_offset, std::uint64_t{h.l1_size} * 8)) return "active L1 table";
  if (hit(h.refcount_table_offset, meta_.reftable.size() * 8)) return "refcount table";
  if (hit(h.snapshots_offset, meta_.snapshots_size)) return "snapshot table";
  for (const auto& sn : meta_.snapshots)
    if (hit(sn.l1_table_offset, std::uint64_t{sn.l1_size} * 8)) return "inactive L1 table";
  for (std::uint64_t e : meta_.reftable)
    if (hit(reftable_block_offset(e), reftable_block_offset(e) ? cs() : 0)) return "refcount block";
  return nullptr;
}

task<> Checker::check_oflag_copied(Fix fix) {
  bool repair = false;
  if (fixes(fix, Fix::errors))
    repair = true;
  else if (fixes(fix, Fix::leaks))  // only if the refcounts are known to be right
    repair = !res_.check_errors && !res_.corruptions && !res_.leaks;

  std::vector<std::byte> table(cs());
  for (std::uint64_t i = 0; i < meta_.l1.size(); ++i) {
    const std::uint64_t l1e = meta_.l1[i];
    const std::uint64_t l2_offset = l1_l2_offset(l1e);
    if (!l2_offset) continue;
    auto rc = co_await disk_.get(l2_offset >> geo().cluster_bits());
    if (!rc) continue;  // already reported by compare_refcounts
    if ((*rc == 1) != l1_copied(l1e)) {
      ++res_.corruptions;
      say("{} OFLAG_COPIED L2 cluster: l1_index={} l1_entry={:x} refcount={}",
          repair ? "Repairing" : "ERROR", i, l1e, *rc);
      if (repair) {
        meta_.l1[i] = *rc == 1 ? l1e | QCOW_OFLAG_COPIED : l1e & ~QCOW_OFLAG_COPIED;
        if (auto w =
                co_await meta::write_u64(file_, meta_.header.l1_table_offset + i * 8, meta_.l1[i]);
            !w) {
          ++res_.check_errors;
          co_return w.error();
        }
        --res_.corruptions;
        ++res_.corruptions_fixed;
      }
    }
    if (auto r = co_await file_.read_at(l2_offset, table); !r) {
      say("ERROR: Could not read L2 table: {}", r.error().message());
      ++res_.check_errors;
      co_return r.error();
    }
    std::int64_t dirty = 0;
    for (std::uint64_t j = 0; j < geo().l2_entries(); ++j) {
      const L2Entry e = load_l2(geo(), table.data(), j);
      const ClusterType t = cluster_type(geo(), e);
      if (t != ClusterType::Normal && t != ClusterType::ZeroAlloc) continue;
      const std::uint64_t host_cluster = l2_host_offset(e) >> geo().cluster_bits();
      result<std::uint64_t> drc = std::uint64_t{0};
      if (auto c = disk_.cached(host_cluster))
        drc = *c;
      else
        drc = co_await disk_.get(host_cluster);
      if (!drc) continue;
      if ((*drc == 1) == l2_copied(e)) continue;
      ++res_.corruptions;
      say("{} OFLAG_COPIED data cluster: l2_entry={:x} refcount={}", repair ? "Repairing" : "ERROR",
          e.entry, *drc);
      if (repair) {
        L2Entry f = e;
        f.entry = *drc == 1 ? e.entry | QCOW_OFLAG_COPIED : e.entry & ~QCOW_OFLAG_COPIED;
        store_l2(geo(), table.data(), j, f);
        ++dirty;
      }
    }
    if (dirty == 0) continue;
    if (const char* section = overlaps_metadata(l2_offset, cs())) {
      QNBD_CO_TRY(co_await signal_corruption(
          fmt::format("Preventing invalid write on metadata (overlaps with {})", section)));
      say("ERROR: Could not write L2 table; metadata overlap check failed: {}",
          "Input/output error");
      ++res_.check_errors;
      co_return errno_error(EIO);
    }
    if (auto w = co_await file_.write_at(l2_offset, table); !w) {
      say("ERROR: Could not write L2 table: {}", w.error().message());
      ++res_.check_errors;
      co_return w.error();
    }
    res_.corruptions -= dirty;
    res_.corruptions_fixed += dirty;
  }
  co_return result<>{};
}

}  // namespace qnbd::qcow2::check
