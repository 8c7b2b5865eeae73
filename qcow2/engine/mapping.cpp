// Guest → host mapping from the L1/L2 tables: runs of subclusters of one
// kind, merged while the host side stays contiguous. Entries are validated
// here, at use, because images are untrusted.
#include "common/co_try.h"
#include "qcow2/engine/image.h"

#include <spdlog/spdlog.h>

namespace qnbd::qcow2 {

using namespace format;

error_code Image::corrupt(const std::string& what) {
  if (!corrupt_) spdlog::error("{}: corrupt image: {}; further writes refused", name_, what);
  corrupt_ = true;
  return make_error_code(errc::corrupt_image);
}

task<std::shared_ptr<Table>> Image::l2_table_for(std::uint64_t guest) {
  const std::uint64_t i = g_.l1_index(guest);
  if (i >= l1_.size()) co_return corrupt("guest offset beyond the L1 table");
  const std::uint64_t e = l1_[i];
  const std::uint64_t off = l1_l2_offset(e);
  if (off == 0) co_return std::shared_ptr<Table>{};
  if (!g_.cluster_aligned(off) || l1_reserved_bits_set(e))
    co_return corrupt(fmt::format("L1 entry {} is invalid ({:#x})", i, e));
  auto t = co_await l2_cache_.get(off);
  if (t && !read_only_ && !corrupt_)
    QNBD_CO_TRY(co_await guard_.first_use(**t, i * g_.l2_coverage()));
  co_return t;
}

// Kind of subcluster `sc` of entry `e`; `host` gets the host offset of the
// start of the cluster for Data, and for the zero and unallocated
// subclusters of a cluster that keeps its host cluster (ZeroAlloc,
// UnallocatedAlloc, which qemu reports with an offset too), else 0.
result<MapKind> Image::classify(const L2Entry& e, unsigned sc, std::uint64_t& host) const {
  const SubclusterType type = subcluster_type(g_, e, sc);
  if (type == SubclusterType::ZeroAlloc || type == SubclusterType::UnallocatedAlloc)
    host = g_.cluster_aligned(l2_host_offset(e)) ? l2_host_offset(e) : 0;
  switch (type) {
    case SubclusterType::UnallocatedPlain:
    case SubclusterType::UnallocatedAlloc:
      return backing_ ? MapKind::Backing : MapKind::Zero;
    case SubclusterType::ZeroPlain:
    case SubclusterType::ZeroAlloc:
      return MapKind::Zero;
    case SubclusterType::Compressed:
      return MapKind::Compressed;
    case SubclusterType::Normal:
      host = l2_host_offset(e);
      if (!g_.cluster_aligned(host) || l2_reserved_bits_set(g_, e))
        return make_error_code(errc::corrupt_image);
      return MapKind::Data;
    case SubclusterType::Invalid:
      break;
  }
  return make_error_code(errc::corrupt_image);
}

task<MapRuns> Image::map_range(std::uint64_t offset, std::uint64_t length) {
  MapRuns runs;
  auto add = [&](MapRun r) {
    if (!runs.empty()) {
      MapRun& p = runs.back();
      const bool same_host = p.host && r.host ? p.host + p.length == r.host : p.host == r.host;
      const bool contiguous = p.kind == r.kind && p.guest + p.length == r.guest && same_host &&
                              r.kind != MapKind::Compressed && p.unallocated == r.unallocated;
      const bool same_compressed = r.kind == MapKind::Compressed && p.kind == r.kind &&
                                   p.entry == r.entry && p.guest + p.length == r.guest &&
                                   g_.cluster_index(p.guest) == g_.cluster_index(r.guest);
      if (contiguous || same_compressed) {
        p.length += r.length;
        return;
      }
    }
    runs.push_back(r);
  };
  const std::uint64_t end = offset + length;
  std::uint64_t pos = offset;
  while (pos < end) {
    const std::uint64_t piece_end = g_.l2_piece_end(pos, end);
    auto table = co_await l2_table_for(pos);
    if (!table) co_return table.error();
    if (!*table) {
      add({pos, piece_end - pos, backing_ ? MapKind::Backing : MapKind::Zero, 0, {}, !backing_});
      pos = piece_end;
      continue;
    }
    while (pos < piece_end) {
      const L2Entry e = load_l2(g_, (*table)->data.data(), g_.l2_index(pos));
      const unsigned sc = g_.subcluster_index(pos);
      const std::uint64_t sc_end =
          std::min(piece_end, (pos / g_.subcluster_size() + 1) * g_.subcluster_size());
      std::uint64_t host = 0;
      auto kind = classify(e, sc, host);
      if (!kind)
        co_return corrupt(fmt::format("invalid L2 entry {:#x}/{:#x} for guest offset {:#x}",
                                      e.entry, e.bitmap, pos));
      const SubclusterType type = subcluster_type(g_, e, sc);
      const bool unallocated = !backing_ && (type == SubclusterType::UnallocatedPlain ||
                                             type == SubclusterType::UnallocatedAlloc);
      add({pos, sc_end - pos, *kind, host ? host + g_.offset_in_cluster(pos) : 0, e, unallocated});
      pos = sc_end;
    }
  }
  co_return runs;
}

}  // namespace qnbd::qcow2
