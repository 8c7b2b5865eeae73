// The bitmaps extension (docs/interop/qcow2.txt "Bitmaps extension"): the
// bitmap directory (variable-length entries: 24-byte fixed part, extra data,
// name, padded to 8) and bitmap tables (one entry per cluster of bitmap
// data). Decoding enforces every rule QEMU's block/qcow2-bitmap.c enforces,
// with its messages, so an image QEMU refuses is refused here too.
#pragma once

#include "qcow2/format/header.h"

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace qnbd::qcow2::format {

// Directory entry flags (QEMU's BME_FLAG_*; bit 2, extra_data_compatible, is
// reserved for QEMU since it supports no extra data).
inline constexpr std::uint32_t BME_FLAG_IN_USE = 1u << 0;
inline constexpr std::uint32_t BME_FLAG_AUTO = 1u << 1;
inline constexpr std::uint32_t BME_RESERVED_FLAGS = 0xfffffffcu;
inline constexpr std::uint8_t BT_DIRTY_TRACKING_BITMAP = 1;

inline constexpr std::uint32_t BME_MAX_TABLE_SIZE = 0x8000000;  // entries
inline constexpr std::uint64_t BME_MAX_PHYS_SIZE = 0x20000000;  // bytes of bitmap data
inline constexpr unsigned BME_MIN_GRANULARITY_BITS = 9;
inline constexpr unsigned BME_MAX_GRANULARITY_BITS = 31;
inline constexpr std::size_t BME_MAX_NAME_SIZE = 1023;
inline constexpr std::uint64_t QCOW2_MAX_BITMAP_DIRECTORY_SIZE = 64ull << 20;
inline constexpr std::size_t BME_DIR_ENTRY_FIXED_SIZE = 24;

// Bitmap table entries: bits 9-55 the data cluster; with offset 0, bit 0
// says the cluster reads as all ones instead of all zeros.
inline constexpr std::uint64_t BME_TABLE_ENTRY_RESERVED_MASK = 0xff000000000001feull;
inline constexpr std::uint64_t BME_TABLE_ENTRY_OFFSET_MASK = 0x00fffffffffffe00ull;
inline constexpr std::uint64_t BME_TABLE_ENTRY_FLAG_ALL_ONES = 1ull << 0;

struct BitmapEntry {
  std::uint64_t table_offset = 0;
  std::uint32_t table_size = 0;  // entries
  std::uint32_t flags = 0;
  std::uint8_t type = BT_DIRTY_TRACKING_BITMAP;
  std::uint8_t granularity_bits = 16;
  std::string name;

  bool in_use() const { return flags & BME_FLAG_IN_USE; }
  bool enabled() const { return flags & BME_FLAG_AUTO; }
  std::uint64_t granularity() const { return 1ull << granularity_bits; }
};

// Bitmap table entries needed for a disk of `disk_size` bytes (bits of
// 2^granularity_bits bytes, packed 8 per byte, one cluster per entry).
std::uint64_t bitmap_table_entries(std::uint64_t disk_size, unsigned granularity_bits,
                                   std::uint64_t cluster_size);

// The constraints QEMU puts on a new bitmap ("Granularity is under minimum
// (512 bytes)", ...); an empty string if it may be created.
std::string bitmap_constraint_error(const std::string& name, unsigned granularity_bits,
                                    std::uint64_t disk_size, std::uint64_t cluster_size);

// Decodes the directory the extension in `h` describes (`dir` holds its
// directory_size bytes). Throws FormatError: "Broken bitmap directory",
// "Bitmap 'x' doesn't satisfy the constraints", ...
std::vector<BitmapEntry> parse_bitmap_directory(std::span<const std::byte> dir, const Header& h);

// Encodes entries (extra data is never written). Throws FormatError when the
// result breaks a limit.
std::vector<std::byte> encode_bitmap_directory(const std::vector<BitmapEntry>& entries,
                                               const Header& h);

// Decodes a bitmap table (big-endian entries). Throws FormatError on an
// entry with reserved bits, an unaligned offset, or all-ones with an offset.
std::vector<std::uint64_t> parse_bitmap_table(std::span<const std::byte> raw,
                                              std::uint64_t cluster_size);
// Whether one table entry is valid (for the checker, which counts rather
// than throws).
bool bitmap_table_entry_valid(std::uint64_t entry, std::uint64_t cluster_size);

}  // namespace qnbd::qcow2::format
