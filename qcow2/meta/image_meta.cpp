#include "qcow2/meta/image_meta.h"

#include "qcow2/format/endian.h"
#include "qcow2/meta/tables.h"

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

namespace qnbd::qcow2::meta {

using namespace format;

namespace {

boost::asio::awaitable<std::vector<std::byte>> read_bytes(io::File& file, std::uint64_t offset,
                                                          std::uint64_t n, const char* what) {
  std::vector<std::byte> buf(n);
  if (auto r = co_await file.read_at(offset, buf); !r)
    throw std::runtime_error(fmt::format("could not read {}: {}", what, r.error().message()));
  co_return buf;
}

std::uint64_t file_size_of(io::File& file) {
  auto size = file.size();
  if (!size) throw std::runtime_error("could not get the file size: " + size.error().message());
  return *size;
}

// Cluster 0, or the whole file if it is shorter.
boost::asio::awaitable<std::vector<std::byte>> read_cluster0(io::File& file,
                                                             std::uint64_t file_size) {
  auto probe =
      co_await read_bytes(file, 0, std::min<std::uint64_t>(file_size, kHeaderProbeSize), "header");
  const std::uint64_t cs = probe_cluster_size(probe);
  co_return co_await read_bytes(file, 0, std::min(file_size, cs), "header");
}

Header parse_cluster0(std::vector<std::byte>& c0, LoadPurpose purpose) {
  const bool no_reftable = purpose == LoadPurpose::check && c0.size() >= 60 &&
                           load_be32(c0.data() + HDR_REFCOUNT_TABLE_CLUSTERS) == 0;
  if (no_reftable)  // let the codec validate everything else
    store_be32(c0.data() + HDR_REFCOUNT_TABLE_CLUSTERS, 1);
  Header h = parse_header(c0);
  if (no_reftable) h.refcount_table_clusters = 0;
  return h;
}

void refuse_unsupported(const Header& h) {
  if ((h.incompatible_features & QCOW2_INCOMPAT_DATA_FILE) || h.data_file)
    throw FormatError(
        "external data files are not supported (incompatible feature " +
        h.describe_feature(FeatureName::Incompatible, QCOW2_INCOMPAT_DATA_FILE_BITNR) + ")");
}

// The table is read in growing pieces (entries are usually small, but may
// carry 64 KiB strings), never beyond the file or QEMU's 64 MiB cap.
boost::asio::awaitable<void> load_snapshots(io::File& file, ImageMeta& m, LoadPurpose purpose) {
  const Header& h = m.header;
  if (h.nb_snapshots == 0) co_return;
  if (h.snapshots_offset >= m.file_size)
    throw FormatError("snapshot table lies beyond the end of the file");
  const std::uint64_t avail = std::min(m.file_size - h.snapshots_offset, QCOW_MAX_SNAPSHOTS_SIZE);
  const auto l1_check =
      purpose == LoadPurpose::check ? SnapshotL1Check::lenient : SnapshotL1Check::strict;
  std::uint64_t want = std::min<std::uint64_t>(avail, std::uint64_t{h.nb_snapshots} * 4096);
  for (;;) {
    auto raw = co_await read_bytes(file, h.snapshots_offset, want, "snapshot table");
    try {
      m.snapshots = parse_snapshot_table(raw, h.nb_snapshots, h, l1_check);
      break;
    } catch (const FormatError&) {
      if (want >= avail) throw;
      want = std::min(avail, want * 4);
    }
  }
  m.snapshots_size = encode_snapshot_table(m.snapshots).size();
  if (purpose != LoadPurpose::serve) co_return;
  for (const Snapshot& s : m.snapshots) {
    const std::uint64_t bytes = std::uint64_t{s.l1_size} * 8;
    if (s.l1_table_offset > m.file_size || bytes > m.file_size - s.l1_table_offset)
      throw FormatError("snapshot '" + s.name + "': L1 table lies beyond the end of the file");
  }
}

}  // namespace

boost::asio::awaitable<Header> load_header(io::File& file) {
  auto c0 = co_await read_cluster0(file, file_size_of(file));
  co_return parse_header(c0);
}

boost::asio::awaitable<ImageMeta> load_image_meta(io::File& file, LoadPurpose purpose) {
  ImageMeta m;
  m.file_size = file_size_of(file);
  auto c0 = co_await read_cluster0(file, m.file_size);
  m.header = parse_cluster0(c0, purpose);
  m.geo = m.header.geometry();
  const Header& h = m.header;
  if (purpose == LoadPurpose::serve) validate_layout(h, m.file_size);
  refuse_unsupported(h);
  co_await load_snapshots(file, m, purpose);
  m.l1 = co_await read_u64_table(file, h.l1_table_offset, h.l1_size, "L1 table");
  m.reftable = co_await read_u64_table(
      file, h.refcount_table_offset,
      std::uint64_t{h.refcount_table_clusters} * m.cluster_size() / 8, "refcount table");
  co_return m;
}

std::vector<std::pair<std::uint64_t, std::uint64_t>> other_metadata(const ImageMeta& m) {
  std::vector<std::pair<std::uint64_t, std::uint64_t>> out;
  for (const Snapshot& s : m.snapshots)
    out.emplace_back(s.l1_table_offset, std::uint64_t{s.l1_size} * 8);
  if (m.header.nb_snapshots) out.emplace_back(m.header.snapshots_offset, m.snapshots_size);
  if (m.header.bitmaps)
    out.emplace_back(m.header.bitmaps->directory_offset, m.header.bitmaps->directory_size);
  return out;
}

}  // namespace qnbd::qcow2::meta
