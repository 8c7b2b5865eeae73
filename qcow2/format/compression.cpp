#include "qcow2/format/compression.h"

#include "qcow2/format/constants.h"

#include <zlib.h>
#include <zstd.h>

namespace qnbd::qcow2::format {
namespace {

constexpr int kDeflateWindowBits = -12;  // raw deflate, 4 KiB window (QEMU)

bool inflate_raw(std::span<const std::byte> in, std::span<std::byte> out) {
  z_stream s{};
  if (inflateInit2(&s, kDeflateWindowBits) != Z_OK) return false;
  s.next_in = reinterpret_cast<Bytef*>(const_cast<std::byte*>(in.data()));
  s.avail_in = static_cast<uInt>(in.size());
  s.next_out = reinterpret_cast<Bytef*>(out.data());
  s.avail_out = static_cast<uInt>(out.size());
  const int r = inflate(&s, Z_FINISH);
  const bool ok = (r == Z_STREAM_END || r == Z_BUF_ERROR || r == Z_OK) && s.avail_out == 0;
  inflateEnd(&s);
  return ok;
}

bool unzstd(std::span<const std::byte> in, std::span<std::byte> out) {
  ZSTD_DStream* d = ZSTD_createDStream();
  if (!d) return false;
  ZSTD_inBuffer ib{in.data(), in.size(), 0};
  ZSTD_outBuffer ob{out.data(), out.size(), 0};
  bool ok = true;
  while (ob.pos < ob.size) {
    const std::size_t in_before = ib.pos, out_before = ob.pos;
    const std::size_t r = ZSTD_decompressStream(d, &ob, &ib);
    if (ZSTD_isError(r)) {
      ok = false;
      break;
    }
    if (ob.pos == ob.size) break;
    // Frame finished before a full cluster, or no progress: truncated input.
    if (r == 0 || (ib.pos == in_before && ob.pos == out_before)) {
      ok = false;
      break;
    }
  }
  ZSTD_freeDStream(d);
  return ok;
}

std::size_t deflate_raw(std::span<const std::byte> in, std::span<std::byte> out) {
  z_stream s{};
  if (deflateInit2(&s, Z_DEFAULT_COMPRESSION, Z_DEFLATED, kDeflateWindowBits, 9,
                   Z_DEFAULT_STRATEGY) != Z_OK)
    return 0;
  s.next_in = reinterpret_cast<Bytef*>(const_cast<std::byte*>(in.data()));
  s.avail_in = static_cast<uInt>(in.size());
  s.next_out = reinterpret_cast<Bytef*>(out.data());
  s.avail_out = static_cast<uInt>(out.size());
  const int r = deflate(&s, Z_FINISH);
  const std::size_t n = r == Z_STREAM_END ? out.size() - s.avail_out : 0;
  deflateEnd(&s);
  return n;
}

std::size_t zstd_compress(std::span<const std::byte> in, std::span<std::byte> out) {
  const std::size_t r = ZSTD_compress(out.data(), out.size(), in.data(), in.size(), 1);
  return ZSTD_isError(r) ? 0 : r;
}

}  // namespace

bool decompress_cluster(std::uint8_t type, std::span<const std::byte> in,
                        std::span<std::byte> out) {
  if (type == QCOW2_COMPRESSION_TYPE_ZLIB) return inflate_raw(in, out);
  if (type == QCOW2_COMPRESSION_TYPE_ZSTD) return unzstd(in, out);
  return false;
}

std::size_t compress_cluster(std::uint8_t type, std::span<const std::byte> in,
                             std::span<std::byte> out) {
  if (type == QCOW2_COMPRESSION_TYPE_ZLIB) return deflate_raw(in, out);
  if (type == QCOW2_COMPRESSION_TYPE_ZSTD) return zstd_compress(in, out);
  return 0;
}

}  // namespace qnbd::qcow2::format
