// qcow2 on-disk constants, named as the spec (qemu docs/interop/qcow2.txt)
// and QEMU's block/qcow2.h name them. Limits are QEMU's, so every image QEMU
// accepts is accepted here and nothing larger is ever allocated.
#pragma once

#include <cstdint>

namespace qnbd::qcow2::format {

inline constexpr std::uint32_t QCOW_MAGIC = 0x514649fb;  // "QFI\xfb"
inline constexpr std::uint32_t QCOW_VERSION_MIN = 2;
inline constexpr std::uint32_t QCOW_VERSION_MAX = 3;

inline constexpr std::uint32_t QCOW2_V2_HEADER_LENGTH = 72;
inline constexpr std::uint32_t QCOW2_V3_HEADER_LENGTH = 104;
inline constexpr std::uint32_t QCOW2_COMPRESSION_TYPE_OFFSET = 104;

// Header field offsets (for in-place updates of single fields).
inline constexpr std::uint32_t HDR_REFCOUNT_TABLE_OFFSET = 48;
inline constexpr std::uint32_t HDR_REFCOUNT_TABLE_CLUSTERS = 56;
inline constexpr std::uint32_t HDR_INCOMPATIBLE_FEATURES = 72;
inline constexpr std::uint32_t HDR_COMPATIBLE_FEATURES = 80;
inline constexpr std::uint32_t HDR_AUTOCLEAR_FEATURES = 88;

inline constexpr std::uint32_t MIN_CLUSTER_BITS = 9;
inline constexpr std::uint32_t MAX_CLUSTER_BITS = 21;
inline constexpr std::uint32_t MAX_REFCOUNT_ORDER = 6;
inline constexpr std::uint32_t QCOW_EXTL2_SUBCLUSTERS_PER_CLUSTER = 32;
inline constexpr std::uint32_t MIN_EXTL2_CLUSTER_BITS = 14;  // subcluster >= 512 B

inline constexpr std::uint32_t QCOW_CRYPT_NONE = 0;
inline constexpr std::uint32_t QCOW_CRYPT_AES = 1;
inline constexpr std::uint32_t QCOW_CRYPT_LUKS = 2;

inline constexpr std::uint8_t QCOW2_COMPRESSION_TYPE_ZLIB = 0;
inline constexpr std::uint8_t QCOW2_COMPRESSION_TYPE_ZSTD = 1;

// Incompatible feature bits.
inline constexpr unsigned QCOW2_INCOMPAT_DIRTY_BITNR = 0;
inline constexpr unsigned QCOW2_INCOMPAT_CORRUPT_BITNR = 1;
inline constexpr unsigned QCOW2_INCOMPAT_DATA_FILE_BITNR = 2;
inline constexpr unsigned QCOW2_INCOMPAT_COMPRESSION_BITNR = 3;
inline constexpr unsigned QCOW2_INCOMPAT_EXTL2_BITNR = 4;
inline constexpr std::uint64_t QCOW2_INCOMPAT_DIRTY = 1ull << QCOW2_INCOMPAT_DIRTY_BITNR;
inline constexpr std::uint64_t QCOW2_INCOMPAT_CORRUPT = 1ull << QCOW2_INCOMPAT_CORRUPT_BITNR;
inline constexpr std::uint64_t QCOW2_INCOMPAT_DATA_FILE = 1ull << QCOW2_INCOMPAT_DATA_FILE_BITNR;
inline constexpr std::uint64_t QCOW2_INCOMPAT_COMPRESSION = 1ull
                                                            << QCOW2_INCOMPAT_COMPRESSION_BITNR;
inline constexpr std::uint64_t QCOW2_INCOMPAT_EXTL2 = 1ull << QCOW2_INCOMPAT_EXTL2_BITNR;
inline constexpr std::uint64_t QCOW2_INCOMPAT_MASK = 0x1f;

// Compatible and autoclear feature bits.
inline constexpr std::uint64_t QCOW2_COMPAT_LAZY_REFCOUNTS = 1ull << 0;
inline constexpr std::uint64_t QCOW2_AUTOCLEAR_BITMAPS = 1ull << 0;
inline constexpr std::uint64_t QCOW2_AUTOCLEAR_DATA_FILE_RAW = 1ull << 1;

// Header extension types.
inline constexpr std::uint32_t QCOW2_EXT_MAGIC_END = 0;
inline constexpr std::uint32_t QCOW2_EXT_MAGIC_BACKING_FORMAT = 0xe2792aca;
inline constexpr std::uint32_t QCOW2_EXT_MAGIC_FEATURE_TABLE = 0x6803f857;
inline constexpr std::uint32_t QCOW2_EXT_MAGIC_CRYPTO_HEADER = 0x0537be77;
inline constexpr std::uint32_t QCOW2_EXT_MAGIC_BITMAPS = 0x23852875;
inline constexpr std::uint32_t QCOW2_EXT_MAGIC_DATA_FILE = 0x44415441;

// Table entry masks.
inline constexpr std::uint64_t L1E_OFFSET_MASK = 0x00fffffffffffe00ull;
inline constexpr std::uint64_t L1E_RESERVED_MASK = 0x7f000000000001ffull;
inline constexpr std::uint64_t L2E_OFFSET_MASK = 0x00fffffffffffe00ull;
inline constexpr std::uint64_t L2E_STD_RESERVED_MASK = 0x3f000000000001feull;
inline constexpr std::uint64_t REFT_OFFSET_MASK = 0xfffffffffffffe00ull;
inline constexpr std::uint64_t REFT_RESERVED_MASK = 0x1ffull;
inline constexpr std::uint64_t QCOW_OFLAG_COPIED = 1ull << 63;
inline constexpr std::uint64_t QCOW_OFLAG_COMPRESSED = 1ull << 62;
inline constexpr std::uint64_t QCOW_OFLAG_ZERO = 1ull << 0;
inline constexpr std::uint64_t QCOW_L2_BITMAP_ALL_ALLOC = 0x00000000ffffffffull;
inline constexpr std::uint64_t QCOW_L2_BITMAP_ALL_ZEROES = 0xffffffff00000000ull;

// Limits (QEMU block/qcow2.h).
inline constexpr std::uint64_t QCOW_MAX_L1_SIZE = 0x2000000;       // bytes (32 MiB)
inline constexpr std::uint64_t QCOW_MAX_REFTABLE_SIZE = 0x800000;  // bytes (8 MiB)
inline constexpr std::uint64_t QCOW_MAX_CLUSTER_OFFSET = (1ull << 56) - 1;
inline constexpr std::uint32_t QCOW_MAX_SNAPSHOTS = 65536;
inline constexpr std::uint64_t QCOW_MAX_SNAPSHOTS_SIZE = 1024ull * QCOW_MAX_SNAPSHOTS;
inline constexpr std::uint32_t QCOW_MAX_SNAPSHOT_EXTRA_DATA = 1024;
inline constexpr std::uint32_t QCOW2_MAX_BITMAPS = 65535;
inline constexpr std::uint32_t MAX_BACKING_FILE_NAME = 1023;
inline constexpr std::uint32_t MAX_BACKING_FORMAT_NAME = 15;  // QEMU: len < 16

}  // namespace qnbd::qcow2::format
