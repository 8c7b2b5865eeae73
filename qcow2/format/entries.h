// Codecs for table entries: L1, L2 (standard and extended), compressed
// cluster descriptors, refcount table and refcount block entries. Pure
// functions over raw 64-bit values or table buffers; no I/O.
#pragma once

#include "qcow2/format/constants.h"
#include "qcow2/format/endian.h"
#include "qcow2/format/geometry.h"

#include <cstddef>
#include <cstdint>

namespace qnbd::qcow2::format {

// ---- L1 -------------------------------------------------------------------

inline std::uint64_t l1_l2_offset(std::uint64_t e) { return e & L1E_OFFSET_MASK; }
inline bool l1_copied(std::uint64_t e) { return (e & QCOW_OFLAG_COPIED) != 0; }
inline bool l1_reserved_bits_set(std::uint64_t e) { return (e & L1E_RESERVED_MASK) != 0; }

// ---- L2 -------------------------------------------------------------------

// One L2 slot: the standard 64-bit entry and, with extended L2, the
// subcluster bitmap (bits 0-31 allocated, bits 32-63 reads-as-zero).
struct L2Entry {
  std::uint64_t entry = 0;
  std::uint64_t bitmap = 0;
  bool operator==(const L2Entry&) const = default;
};

enum class ClusterType { Unallocated, ZeroPlain, ZeroAlloc, Normal, Compressed };

// QEMU's QCow2SubclusterType. Without extended L2 the whole cluster is the
// one subcluster.
enum class SubclusterType {
  UnallocatedPlain,  // no host cluster: backing file or zeros
  UnallocatedAlloc,  // host cluster exists, this subcluster not allocated
  ZeroPlain,         // reads as zeros, no host cluster
  ZeroAlloc,         // reads as zeros, host cluster kept (preallocated)
  Normal,            // data at host offset
  Compressed,
  Invalid,  // inconsistent entry: treat as corruption
};

inline std::uint64_t l2_host_offset(const L2Entry& e) { return e.entry & L2E_OFFSET_MASK; }
inline bool l2_copied(const L2Entry& e) { return (e.entry & QCOW_OFLAG_COPIED) != 0; }
inline bool l2_compressed(const L2Entry& e) { return (e.entry & QCOW_OFLAG_COMPRESSED) != 0; }
// Reserved bits of a standard (non-compressed) entry; bit 0 is the zero flag
// without extended L2 and reserved with it.
inline bool l2_reserved_bits_set(const Geometry& g, const L2Entry& e) {
  if (l2_compressed(e)) return g.extended_l2() && e.bitmap != 0;
  std::uint64_t mask = L2E_STD_RESERVED_MASK | (g.extended_l2() ? QCOW_OFLAG_ZERO : 0);
  return (e.entry & mask) != 0;
}

inline bool sc_alloc(const L2Entry& e, unsigned sc) { return (e.bitmap >> sc) & 1; }
inline bool sc_zero(const L2Entry& e, unsigned sc) { return (e.bitmap >> (sc + 32)) & 1; }
inline std::uint64_t sc_alloc_bit(unsigned sc) { return 1ull << sc; }
inline std::uint64_t sc_zero_bit(unsigned sc) { return 1ull << (sc + 32); }
// Bits [first, first+count) of a 32-bit subcluster mask.
inline std::uint32_t sc_range_mask(unsigned first, unsigned count) {
  if (count >= 32) return 0xffffffffu;
  return ((1u << count) - 1) << first;
}

ClusterType cluster_type(const Geometry& g, const L2Entry& e);
SubclusterType subcluster_type(const Geometry& g, const L2Entry& e, unsigned sc);

// Reads/writes slot `index` of an L2 table buffer (cluster_size bytes).
inline L2Entry load_l2(const Geometry& g, const std::byte* table, std::uint64_t index) {
  const std::byte* p = table + index * g.l2_entry_size();
  L2Entry e{load_be64(p), 0};
  if (g.extended_l2()) e.bitmap = load_be64(p + 8);
  return e;
}
inline void store_l2(const Geometry& g, std::byte* table, std::uint64_t index, const L2Entry& e) {
  std::byte* p = table + index * g.l2_entry_size();
  store_be64(p, e.entry);
  if (g.extended_l2()) store_be64(p + 8, e.bitmap);
}

// ---- Compressed clusters ----------------------------------------------------

struct CompressedDescriptor {
  std::uint64_t host_offset = 0;  // byte offset, not aligned
  std::uint64_t sectors = 0;      // 512-byte sectors touched (additional + 1)
  // Bytes to read: from host_offset to the end of the last sector.
  std::uint64_t size() const { return sectors * 512 - (host_offset & 511); }
};

CompressedDescriptor decode_compressed(const Geometry& g, const L2Entry& e);
// Entry for compressed data of `length` bytes at `host_offset`; false if it
// does not fit the descriptor (offset too high or too many sectors).
bool encode_compressed(const Geometry& g, std::uint64_t host_offset, std::uint64_t length,
                       L2Entry& out);

// ---- Refcount table and blocks ----------------------------------------------

inline std::uint64_t reftable_block_offset(std::uint64_t e) { return e & REFT_OFFSET_MASK; }

// Refcount `index` of a refcount block: widths 1/2/4 bits are packed LSB
// first within bytes, 8..64 bits are big-endian integers.
std::uint64_t get_refcount(const std::byte* block, unsigned refcount_order, std::uint64_t index);
void set_refcount(std::byte* block, unsigned refcount_order, std::uint64_t index,
                  std::uint64_t value);

}  // namespace qnbd::qcow2::format
