// Compressed cluster codecs: raw deflate (zlib, windowBits -12, exactly as
// QEMU writes it) and zstd. The stored size is only known to the sector, so
// decompression stops once a full cluster is produced and ignores trailing
// bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace qnbd::qcow2::format {

// Fills `out` (one cluster) from compressed `in`; false if the data is not a
// valid stream of the given compression type or is too short.
bool decompress_cluster(std::uint8_t compression_type, std::span<const std::byte> in,
                        std::span<std::byte> out);

// Compresses one cluster into `out`; returns the compressed length, or 0 if
// it does not fit (QEMU then stores the cluster uncompressed).
std::size_t compress_cluster(std::uint8_t compression_type, std::span<const std::byte> in,
                             std::span<std::byte> out);

}  // namespace qnbd::qcow2::format
