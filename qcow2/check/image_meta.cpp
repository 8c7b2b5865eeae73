#include "qcow2/check/image_meta.h"

#include "qcow2/format/snapshot.h"

#include "qcow2/format/endian.h"

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

namespace qnbd::qcow2::check {
namespace {

std::runtime_error io_failure(const char* what, const error_code& ec) {
  return std::runtime_error(fmt::format("could not read {}: {}", what, ec.message()));
}

}  // namespace

boost::asio::awaitable<std::vector<std::uint64_t>> read_u64_table(io::File& file,
                                                                  std::uint64_t offset,
                                                                  std::uint64_t count) {
  std::vector<std::byte> raw(count * 8);
  if (auto r = co_await file.read_at(offset, raw); !r) throw io_failure("table", r.error());
  std::vector<std::uint64_t> out(count);
  for (std::uint64_t i = 0; i < count; ++i) out[i] = format::load_be64(raw.data() + i * 8);
  co_return out;
}

boost::asio::awaitable<void> load_snapshots(io::File& file, ImageMeta& m, bool for_check) {
  m.snapshots.clear();
  m.snapshots_size = 0;
  const auto& h = m.header;
  if (h.nb_snapshots == 0) co_return;
  // Each entry is at most 40 + 1024 extra + two 64 KiB strings + padding;
  // QEMU caps the whole table at 64 MiB. Never read beyond the file.
  const std::uint64_t max_entry = 40 + format::QCOW_MAX_SNAPSHOT_EXTRA_DATA + 2 * 65535 + 7;
  std::uint64_t len = std::min<std::uint64_t>(std::uint64_t{h.nb_snapshots} * max_entry,
                                              format::QCOW_MAX_SNAPSHOTS_SIZE);
  if (h.snapshots_offset >= m.file_size)
    throw format::FormatError("snapshot table lies beyond the end of the file");
  len = std::min(len, m.file_size - h.snapshots_offset);
  std::vector<std::byte> raw(len);
  if (auto r = co_await file.read_at(h.snapshots_offset, raw); !r)
    throw io_failure("snapshot table", r.error());
  m.snapshots = format::parse_snapshot_table(
      raw, h.nb_snapshots, h,
      for_check ? format::SnapshotL1Check::lenient : format::SnapshotL1Check::strict);
  m.snapshots_size = format::encode_snapshot_table(m.snapshots).size();
}

boost::asio::awaitable<ImageMeta> load_image_meta(io::File& file, bool for_check) {
  ImageMeta m;
  auto size = file.size();
  if (!size) throw std::runtime_error("could not get the file size: " + size.error().message());
  m.file_size = *size;
  std::vector<std::byte> probe(format::kHeaderProbeSize);
  if (auto r = co_await file.read_at(0, probe); !r) throw io_failure("header", r.error());
  if (m.file_size < format::QCOW2_V2_HEADER_LENGTH)
    throw format::FormatError("file too short for a qcow2 header");
  std::vector<std::byte> cluster0(format::probe_cluster_size(probe));
  if (auto r = co_await file.read_at(0, cluster0); !r) throw io_failure("header", r.error());
  const bool no_reftable =
      for_check && cluster0.size() >= 60 &&
      format::load_be32(cluster0.data() + format::HDR_REFCOUNT_TABLE_CLUSTERS) == 0;
  if (no_reftable)  // let the codec validate everything else
    format::store_be32(cluster0.data() + format::HDR_REFCOUNT_TABLE_CLUSTERS, 1);
  m.header = format::parse_header(cluster0);
  if (no_reftable) m.header.refcount_table_clusters = 0;
  m.geo = m.header.geometry();
  const auto& h = m.header;
  if (h.data_file) throw format::FormatError("images with an external data file are not supported");
  m.l1 = co_await read_u64_table(file, h.l1_table_offset, h.l1_size);
  m.reftable =
      co_await read_u64_table(file, h.refcount_table_offset,
                              std::uint64_t{h.refcount_table_clusters} * m.cluster_size() / 8);
  co_await load_snapshots(file, m, for_check);
  co_return m;
}

task<> write_u64(io::File& file, std::uint64_t offset, std::uint64_t value) {
  std::byte b[8];
  format::store_be64(b, value);
  co_return co_await file.write_at(offset, b);
}

}  // namespace qnbd::qcow2::check
