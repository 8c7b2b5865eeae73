// The state of one check run and its steps, split over files by job:
// scan.cpp (expected refcounts from every reference), compare.cpp (against
// the on-disk refcounts), rebuild.cpp (a new refcount structure),
// oflag_copied.cpp (COPIED flags), checker.cpp (the order qemu runs them in).
// Internal to qcow2/check.
#pragma once

#include "qcow2/check/check.h"
#include "common/co_try.h"
#include "qcow2/check/disk_refcounts.h"
#include "qcow2/meta/image_meta.h"
#include "qcow2/meta/tables.h"
#include "qcow2/check/refcount_array.h"
#include "qcow2/format/entries.h"

#include <fmt/format.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace qnbd::qcow2::check {

class Checker {
 public:
  Checker(io::File& file, meta::ImageMeta& meta, const CheckOptions& opts, CheckResult& res)
      : file_(file), meta_(meta), opts_(opts), res_(res), imrt_(meta.geo), disk_(file, meta) {}

  // qemu's qcow2_check_refcounts: calculate, compare, rebuild or fix,
  // OFLAG_COPIED. Errors that stop the check are returned; findings go
  // into the result.
  task<> run();

 private:
  // scan.cpp
  task<> calculate_refcounts(Fix fix, bool& rebuild);
  void inc_refcounts(std::uint64_t offset, std::uint64_t size);
  bool beyond_eof(std::uint64_t offset, std::uint64_t size) const;
  task<> check_l1(std::uint64_t l1_offset, std::uint32_t l1_size, bool active, Fix fix);
  task<> check_l2(std::uint64_t l2_offset, bool active, Fix fix);
  // Counts and checks one entry without I/O; true if it must be rewritten
  // to read as zeros (a repair the caller writes).
  bool check_l2_entry(const std::vector<std::byte>& table, std::uint64_t i, bool active, Fix fix,
                      std::uint64_t& next_contiguous);
  bool can_zero_entries() const;
  task<> check_bitmaps();
  task<> check_refblocks(Fix fix, bool& rebuild);
  // Rewrites L2 entry i to read as zeros without a host cluster.
  task<> zero_l2_entry(std::vector<std::byte>& table, std::uint64_t l2_offset, std::uint64_t i);

  // compare.cpp
  task<> compare_refcounts(Fix fix, bool& rebuild, std::uint64_t& highest);
  // rebuild.cpp
  task<> rebuild_refcount_structure();
  task<> write_refblocks(std::uint64_t first, std::uint64_t end,
                         std::vector<std::uint64_t>& reftable, bool& grown);
  // Counts the clusters referenced beyond the end of the file in the
  // in-memory table (those near enough to fit), so the rebuild allocates
  // around them; the rest are checked before each write.
  result<> reserve_past_eof();
  // Fails if [offset, offset + size) holds a cluster referenced beyond the
  // end of the file that reserve_past_eof could not count.
  result<> refuse_far_overlap(std::uint64_t offset, std::uint64_t size);
  // oflag_copied.cpp
  task<> check_oflag_copied(Fix fix);
  // The metadata section a write would overlap (qemu's names), or nullptr.
  const char* overlaps_metadata(std::uint64_t offset, std::uint64_t size) const;

  result<> refresh_file_size();
  // qemu's qcow2_signal_corruption for an unusable refcount block: reported
  // once; a repairing check also sets the corrupt bit (cleared again if the
  // repair succeeds).
  task<> signal_bad_refblock(std::uint64_t cluster);
  task<> signal_corruption(const std::string& what);
  bool corruption_signalled_ = false;
  template <class... A>
  void say(fmt::format_string<A...> f, A&&... a) {
    ++lines_;
    if (opts_.log && (opts_.max_log_lines == 0 || lines_ <= opts_.max_log_lines))
      opts_.log(fmt::format(f, std::forward<A>(a)...));
  }

  const format::Geometry& geo() const { return meta_.geo; }
  std::uint64_t cs() const { return meta_.geo.cluster_size(); }

  io::File& file_;
  meta::ImageMeta& meta_;
  const CheckOptions& opts_;
  CheckResult& res_;
  RefcountArray imrt_;
  DiskRefcounts disk_;
  std::uint64_t lines_ = 0;
  // Clusters referenced beyond the end of the file, [first, last], in the
  // order found. qemu (and so the comparison) does not count them, but they
  // hold someone's metadata once the file grows: a rebuild must not place
  // its refcount structure there (it did, over an L1 and an L2 table).
  std::vector<std::pair<std::uint64_t, std::uint64_t>> past_eof_;
  bool past_eof_overflow_ = false;  // too many to remember: no rebuild
  // The part of past_eof_ too far out to count in imrt_, sorted, merged.
  std::vector<std::pair<std::uint64_t, std::uint64_t>> far_past_eof_;
};

}  // namespace qnbd::qcow2::check
