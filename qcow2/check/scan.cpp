// Expected refcounts from every reference in the image (qemu's
// calculate_refcounts and check_refcounts_l1/l2), with qemu's findings and
// messages. One addition: with Fix::errors, a data or compressed cluster (or
// an L2 table) that lies wholly beyond the end of the file, which reads as
// zeros, is turned into an entry that reads as zeros too, so the repaired
// image is consistent and reads exactly what it read before.
#include "qcow2/check/checker.h"
#include "qcow2/format/bitmaps.h"

namespace qnbd::qcow2::check {

using namespace format;

namespace {
// Bounds the memory of remembered references beyond EOF (16 bytes each).
constexpr std::size_t kMaxPastEof = std::size_t{1} << 20;
}  // namespace

result<> Checker::refresh_file_size() {
  auto s = file_.size();
  if (!s) return s.error();
  meta_.file_size = *s;
  return {};
}

bool Checker::beyond_eof(std::uint64_t offset, std::uint64_t size) const {
  // The last cluster may be partly allocated, so a reference may reach less
  // than one cluster past the end.
  const std::uint64_t end = offset + size;
  return end < offset || (end > meta_.file_size && end - meta_.file_size >= cs());
}

void Checker::inc_refcounts(std::uint64_t offset, std::uint64_t size) {
  if (size == 0) return;
  if (beyond_eof(offset, size)) {
    say("ERROR: counting reference for region exceeding the end of the file by one cluster or "
        "more: offset 0x{:x} size 0x{:x}",
        offset, size);
    ++res_.corruptions;
    const std::uint64_t lo = offset >> geo().cluster_bits();
    const std::uint64_t hi = offset + size < offset ? ~0ull >> geo().cluster_bits()
                                                    : (offset + size - 1) >> geo().cluster_bits();
    if (!past_eof_.empty() && past_eof_.back().first <= lo && lo <= past_eof_.back().second + 1)
      past_eof_.back().second = std::max(past_eof_.back().second, hi);
    else if (past_eof_.size() < kMaxPastEof)
      past_eof_.emplace_back(lo, hi);
    else
      past_eof_overflow_ = true;
    return;
  }
  const std::uint64_t first = offset >> geo().cluster_bits();
  const std::uint64_t last = (offset + size - 1) >> geo().cluster_bits();
  for (std::uint64_t k = first; k <= last; ++k) {
    if (imrt_.increment(k)) continue;
    say("ERROR: overflow cluster offset=0x{:x}", k << geo().cluster_bits());
    say("Use qemu-img amend to increase the refcount entry width or qemu-img convert to create "
        "a clean copy if the image cannot be opened for writing");
    ++res_.corruptions;
  }
}

task<> Checker::calculate_refcounts(Fix fix, bool& rebuild) {
  const Header& h = meta_.header;
  inc_refcounts(0, cs());
  QNBD_CO_TRY(co_await check_l1(h.l1_table_offset, h.l1_size, true, fix));
  for (const auto& sn : meta_.snapshots) {
    if (!geo().cluster_aligned(sn.l1_table_offset)) {
      say("ERROR snapshot {} ({}) l1_offset={:#x}: L1 table is not cluster aligned; snapshot "
          "table entry corrupted",
          sn.id, sn.name, sn.l1_table_offset);
      ++res_.corruptions;
      continue;
    }
    if (sn.l1_size > QCOW_MAX_L1_SIZE / 8) {
      say("ERROR snapshot {} ({}) l1_size={:#x}: L1 table is too large; snapshot table entry "
          "corrupted",
          sn.id, sn.name, sn.l1_size);
      ++res_.corruptions;
      continue;
    }
    QNBD_CO_TRY(co_await check_l1(sn.l1_table_offset, sn.l1_size, false, fix));
  }
  inc_refcounts(h.snapshots_offset, meta_.snapshots_size);
  inc_refcounts(h.refcount_table_offset, meta_.reftable.size() * 8);
  if (h.crypto_header) inc_refcounts(h.crypto_header->offset, h.crypto_header->length);
  QNBD_CO_TRY(co_await check_bitmaps());
  co_return co_await check_refblocks(fix, rebuild);
}

task<> Checker::check_l1(std::uint64_t l1_offset, std::uint32_t l1_size, bool active, Fix fix) {
  if (l1_size == 0) co_return result<>{};
  inc_refcounts(l1_offset, std::uint64_t{l1_size} * 8);
  std::vector<std::uint64_t> l1;
  if (active) {
    l1 = meta_.l1;
  } else {
    std::vector<std::byte> raw(std::uint64_t{l1_size} * 8);
    QNBD_CO_TRY(co_await file_.read_at(l1_offset, raw));
    l1.resize(l1_size);
    for (std::uint64_t i = 0; i < l1_size; ++i) l1[i] = load_be64(raw.data() + i * 8);
  }
  for (std::uint64_t i = 0; i < l1.size(); ++i) {
    if (!l1[i]) continue;
    if (l1_reserved_bits_set(l1[i])) {
      say("ERROR found L1 entry with reserved bits set: {:x}", l1[i]);
      ++res_.corruptions;
    }
    const std::uint64_t l2_offset = l1_l2_offset(l1[i]);
    if (l2_offset == 0) continue;
    if (fixes(fix, Fix::errors) && beyond_eof(l2_offset, cs())) {
      // The table reads as zeros (all unallocated); so does an empty L1 slot.
      say("Repairing l2_offset={:x}: L2 table lies beyond the end of the file; L1 entry "
          "cleared",
          l2_offset);
      QNBD_CO_TRY(co_await meta::write_u64(file_, l1_offset + i * 8, 0));
      if (active) meta_.l1[i] = 0;
      ++res_.corruptions_fixed;
      continue;
    }
    inc_refcounts(l2_offset, cs());
    if (!geo().cluster_aligned(l2_offset)) {
      say("ERROR l2_offset={:x}: Table is not cluster aligned; L1 entry corrupted", l2_offset);
      ++res_.corruptions;
    }
    QNBD_CO_TRY(co_await check_l2(l2_offset, active, fix));
  }
  co_return result<>{};
}

task<> Checker::check_l2(std::uint64_t l2_offset, bool active, Fix fix) {
  std::vector<std::byte> table(cs());
  if (auto r = co_await file_.read_at(l2_offset, table); !r) {
    say("ERROR: I/O error in check_refcounts_l2");
    ++res_.check_errors;
    co_return r.error();
  }
  std::uint64_t next_contiguous = 0;
  for (std::uint64_t i = 0; i < geo().l2_entries(); ++i)
    if (check_l2_entry(table, i, active, fix, next_contiguous))
      QNBD_CO_TRY(co_await zero_l2_entry(table, l2_offset, i));
  co_return result<>{};
}

// Only v2 images with a backing file cannot say "reads as zeros" without a
// host cluster (an unallocated entry would show the backing file).
bool Checker::can_zero_entries() const {
  return geo().extended_l2() || meta_.header.version >= 3 || meta_.header.backing_file.empty();
}

task<> Checker::zero_l2_entry(std::vector<std::byte>& table, std::uint64_t l2_offset,
                              std::uint64_t i) {
  const L2Entry e = load_l2(geo(), table.data(), i);
  L2Entry z;
  if (geo().extended_l2())
    z.bitmap = l2_compressed(e) ? QCOW_L2_BITMAP_ALL_ZEROES
                                : ((e.bitmap | (e.bitmap << 32)) & QCOW_L2_BITMAP_ALL_ZEROES);
  else if (meta_.header.version >= 3)
    z.entry = QCOW_OFLAG_ZERO;
  store_l2(geo(), table.data(), i, z);
  const std::uint64_t at = i * geo().l2_entry_size();
  if (auto r = co_await file_.write_at(
          l2_offset + at, std::span<const std::byte>(table.data() + at, geo().l2_entry_size()));
      !r) {
    say("ERROR: Failed to overwrite L2 table entry: {}", r.error().message());
    ++res_.check_errors;
    co_return r.error();
  }
  co_return result<>{};
}

bool Checker::check_l2_entry(const std::vector<std::byte>& table, std::uint64_t i, bool active,
                             Fix fix, std::uint64_t& next_contiguous) {
  L2Entry e = load_l2(geo(), table.data(), i);
  const ClusterType type = cluster_type(geo(), e);
  if (type != ClusterType::Compressed && (e.entry & L2E_STD_RESERVED_MASK)) {
    say("ERROR found l2 entry with reserved bits set: {:x}", e.entry);
    ++res_.corruptions;
  }
  const bool repair = fixes(fix, Fix::errors) && can_zero_entries();
  switch (type) {
    case ClusterType::Compressed: {
      if (l2_copied(e)) {
        say("ERROR: coffset=0x{:x}: copied flag must never be set for compressed clusters",
            e.entry & geo().cluster_offset_mask());
        e.entry &= ~QCOW_OFLAG_COPIED;
        ++res_.corruptions;
      }
      if (e.bitmap) {
        say("ERROR compressed cluster {} with non-zero subcluster allocation bitmap, "
            "entry=0x{:x}",
            i, e.entry);
        ++res_.corruptions;
        return false;
      }
      const auto d = decode_compressed(geo(), e);
      if (repair && beyond_eof(d.host_offset, d.size())) {
        say("Repairing coffset=0x{:x}: compressed cluster lies beyond the end of the file; "
            "L2 entry now reads as zeros",
            d.host_offset);
        ++res_.corruptions_fixed;
        return true;
      }
      inc_refcounts(d.host_offset, d.size());
      if (active) {
        ++res_.allocated_clusters;
        ++res_.compressed_clusters;
        ++res_.fragmented_clusters;  // sub-sector placement: always fragmented
      }
      return false;
    }
    case ClusterType::ZeroAlloc:
    case ClusterType::Normal: {
      const std::uint64_t offset = l2_host_offset(e);
      if ((e.bitmap >> 32) & e.bitmap) {
        ++res_.corruptions;
        say("ERROR offset={:x}: Allocated cluster has corrupted subcluster allocation bitmap",
            offset);
      }
      if (!geo().cluster_aligned(offset)) {
        ++res_.corruptions;
        const bool contains_data = geo().extended_l2() ? (e.bitmap & QCOW_L2_BITMAP_ALL_ALLOC) != 0
                                                       : !(e.entry & QCOW_OFLAG_ZERO);
        if (!contains_data) {
          say("{} offset={:x}: Preallocated cluster is not properly aligned; L2 entry corrupted.",
              fixes(fix, Fix::errors) ? "Repairing" : "ERROR", offset);
          if (repair) {
            --res_.corruptions;
            ++res_.corruptions_fixed;
            return true;
          }
        } else {
          say("ERROR offset={:x}: Data cluster is not properly aligned; L2 entry corrupted.",
              offset);
        }
      } else if (repair && beyond_eof(offset, cs())) {
        say("Repairing offset={:x}: cluster lies beyond the end of the file; L2 entry now "
            "reads as zeros",
            offset);
        ++res_.corruptions_fixed;
        return true;
      }
      if (active) {
        ++res_.allocated_clusters;
        if (next_contiguous && offset != next_contiguous) ++res_.fragmented_clusters;
        next_contiguous = offset + cs();
      }
      inc_refcounts(offset, cs());
      return false;
    }
    case ClusterType::ZeroPlain:
      return false;
    case ClusterType::Unallocated:
      if (e.bitmap & QCOW_L2_BITMAP_ALL_ALLOC) {
        ++res_.corruptions;
        say("ERROR: Unallocated cluster has non-zero subcluster allocation map");
      }
      return false;
  }
  return false;
}

// As QEMU's qcow2_check_bitmaps_refcounts: the directory, each table and
// each data cluster hold one reference; a directory or table entry that
// breaks the spec is a corruption.
task<> Checker::check_bitmaps() {
  const auto& b = meta_.header.bitmaps;
  if (!b || !(meta_.header.autoclear_features & QCOW2_AUTOCLEAR_BITMAPS)) co_return result<>{};
  inc_refcounts(b->directory_offset, b->directory_size);
  if (b->directory_size > QCOW2_MAX_BITMAP_DIRECTORY_SIZE ||
      beyond_eof(b->directory_offset, b->directory_size)) {
    ++res_.corruptions;
    co_return result<>{};
  }
  std::vector<std::byte> dir(b->directory_size);
  QNBD_CO_TRY(co_await file_.read_at(b->directory_offset, dir));
  std::vector<BitmapEntry> entries;
  try {
    entries = parse_bitmap_directory(dir, meta_.header);
  } catch (const FormatError& e) {
    say("ERROR bitmap directory: {}", e.what());
    ++res_.corruptions;
    co_return result<>{};
  }
  for (const BitmapEntry& e : entries) {
    const std::uint64_t bytes = std::uint64_t{e.table_size} * 8;
    inc_refcounts(e.table_offset, bytes);
    if (beyond_eof(e.table_offset, bytes)) {
      ++res_.corruptions;
      continue;
    }
    std::vector<std::byte> raw(bytes);
    QNBD_CO_TRY(co_await file_.read_at(e.table_offset, raw));
    for (std::uint32_t j = 0; j < e.table_size; ++j) {
      const std::uint64_t entry = load_be64(raw.data() + j * 8ull);
      if (!bitmap_table_entry_valid(entry, cs())) {
        ++res_.corruptions;
        continue;
      }
      if (entry & BME_TABLE_ENTRY_OFFSET_MASK)
        inc_refcounts(entry & BME_TABLE_ENTRY_OFFSET_MASK, cs());
    }
  }
  co_return result<>{};
}

task<> Checker::check_refblocks(Fix fix, bool& rebuild) {
  for (std::uint64_t i = 0; i < meta_.reftable.size(); ++i) {
    const std::uint64_t offset = reftable_block_offset(meta_.reftable[i]);
    const std::uint64_t cluster = offset >> geo().cluster_bits();
    if (meta_.reftable[i] & REFT_RESERVED_MASK) {
      say("ERROR refcount table entry {} has reserved bits set", i);
      ++res_.corruptions;
      rebuild = true;
      continue;
    }
    if (!geo().cluster_aligned(offset)) {
      say("ERROR refcount block {} is not cluster aligned; refcount table entry corrupted", i);
      ++res_.corruptions;
      rebuild = true;
      continue;
    }
    if (cluster >= imrt_.size()) {
      ++res_.corruptions;
      const bool repair = fixes(fix, Fix::errors);
      say("{} refcount block {} is outside image", repair ? "Repairing" : "ERROR", i);
      if (!repair) continue;
      // Grow the file so the block exists (it then reads as zeros).
      if (offset > (1ull << 62) || !file_.truncate(offset + cs()) || !refresh_file_size()) {
        rebuild = true;
        say("ERROR could not resize image: {}", "Invalid argument");
        continue;
      }
      imrt_.resize((meta_.file_size + cs() - 1) / cs());
      --res_.corruptions;
      ++res_.corruptions_fixed;
      inc_refcounts(offset, cs());
      continue;
    }
    if (offset == 0) continue;
    inc_refcounts(offset, cs());
    if (imrt_.get(cluster) != 1) {
      say("ERROR refcount block {} refcount={}", i, imrt_.get(cluster));
      ++res_.corruptions;
      rebuild = true;
    }
  }
  co_return result<>{};
}

}  // namespace qnbd::qcow2::check
