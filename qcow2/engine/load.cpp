#include "qcow2/engine/load.h"

#include "qcow2/format/endian.h"
#include "qcow2/format/snapshot.h"

#include <spdlog/spdlog.h>

#include <stdexcept>

namespace qnbd::qcow2 {

using namespace format;

namespace {

[[noreturn]] void fail(const LoadOptions& o, const std::string& msg) {
  throw std::runtime_error(o.name + ": " + msg);
}

boost::asio::awaitable<std::vector<std::byte>> read_exact(io::File& f, const LoadOptions& o,
                                                          std::uint64_t offset, std::uint64_t n,
                                                          const char* what) {
  std::vector<std::byte> buf(n);
  if (auto r = co_await f.read_at(offset, buf); !r)
    fail(o, std::string("cannot read ") + what + ": " + r.error().message());
  co_return buf;
}

boost::asio::awaitable<std::vector<std::uint64_t>> read_table(io::File& f, const LoadOptions& o,
                                                              std::uint64_t offset,
                                                              std::uint64_t entries,
                                                              const char* what) {
  auto raw = co_await read_exact(f, o, offset, entries * 8, what);
  std::vector<std::uint64_t> t(entries);
  for (std::uint64_t i = 0; i < entries; ++i) t[i] = load_be64(raw.data() + i * 8);
  co_return t;
}

// Snapshots are only validated here (their tables must lie in the file);
// the engine never writes through a snapshot's L1 table.
using Ranges = std::vector<std::pair<std::uint64_t, std::uint64_t>>;

boost::asio::awaitable<Ranges> check_snapshots(io::File& f, const LoadOptions& o, const Header& h,
                                               std::uint64_t file_size) {
  Ranges out;
  if (!h.nb_snapshots) co_return out;
  const std::uint64_t avail = std::min(file_size - h.snapshots_offset, QCOW_MAX_SNAPSHOTS_SIZE);
  std::uint64_t want = std::min<std::uint64_t>(avail, std::uint64_t{h.nb_snapshots} * 4096);
  for (;;) {
    auto raw = co_await read_exact(f, o, h.snapshots_offset, want, "snapshot table");
    try {
      const auto snaps = parse_snapshot_table(raw, h.nb_snapshots, h);
      for (const Snapshot& s : snaps) {
        const std::uint64_t bytes = std::uint64_t{s.l1_size} * 8;
        if (s.l1_table_offset > file_size || bytes > file_size - s.l1_table_offset)
          fail(o, "snapshot '" + s.name + "': L1 table lies beyond the end of the file");
        out.emplace_back(s.l1_table_offset, bytes);
      }
      out.emplace_back(h.snapshots_offset, encode_snapshot_table(snaps).size());
      co_return out;
    } catch (const FormatError& e) {
      if (want >= avail) fail(o, e.what());
      want = std::min(avail, want * 4);
    }
  }
}

void apply_feature_policy(const LoadOptions& o, const Header& h, bool& read_only) {
  if (h.incompatible_features & QCOW2_INCOMPAT_DATA_FILE)
    fail(o, "external data files are not supported (incompatible feature " +
                h.describe_feature(FeatureName::Incompatible, QCOW2_INCOMPAT_DATA_FILE_BITNR) +
                ")");
  if ((h.incompatible_features & QCOW2_INCOMPAT_CORRUPT) && !read_only) {
    spdlog::warn("{}: image is marked corrupt; serving it read-only", o.name);
    read_only = true;
  }
  if ((h.incompatible_features & QCOW2_INCOMPAT_DIRTY) && !read_only) {
    // Refcounts may be stale (lazy refcounts after a crash) until repaired.
    spdlog::warn(
        "{}: image is dirty (refcounts need repair: qemu-img check -r all); "
        "serving it read-only",
        o.name);
    read_only = true;
  }
}

std::size_t cache_tables(std::uint64_t bytes, std::uint64_t fallback, std::uint64_t cs) {
  const std::uint64_t n = bytes ? bytes / cs : fallback;
  return static_cast<std::size_t>(std::max<std::uint64_t>(n, 2));
}

}  // namespace

boost::asio::awaitable<std::unique_ptr<Image>> load_image(std::unique_ptr<io::File> file,
                                                          const LoadOptions& o,
                                                          BackingResolver* backing) {
  auto fsize = file->size();
  if (!fsize) fail(o, "cannot stat: " + fsize.error().message());
  const std::uint64_t file_size = *fsize;
  Header h;
  try {
    auto probe = co_await read_exact(
        *file, o, 0, std::min<std::uint64_t>(file_size, kHeaderProbeSize), "header");
    const std::uint64_t cs = probe_cluster_size(probe);
    auto c0 = co_await read_exact(*file, o, 0, std::min(file_size, cs), "header");
    h = parse_header(c0);
    validate_layout(h, file_size);
  } catch (const FormatError& e) {
    fail(o, e.what());
  }
  bool read_only = o.read_only || file->read_only();
  apply_feature_policy(o, h, read_only);
  auto other_metadata = co_await check_snapshots(*file, o, h, file_size);
  if (h.bitmaps)
    other_metadata.emplace_back(h.bitmaps->directory_offset, h.bitmaps->directory_size);
  auto l1 = co_await read_table(*file, o, h.l1_table_offset, h.l1_size, "L1 table");
  auto reftable = co_await read_table(
      *file, o, h.refcount_table_offset,
      std::uint64_t{h.refcount_table_clusters} * h.cluster_size() / 8, "refcount table");
  std::unique_ptr<BlockBackend> back;
  if (!h.backing_file.empty()) {
    if (!backing) fail(o, "has a backing file, but backing files cannot be opened here");
    back = co_await backing->open(h.backing_file, h.backing_format);
  }
  const Geometry g = h.geometry();
  ImageConfig cfg;
  cfg.name = o.name;
  cfg.read_only = read_only;
  cfg.writeback_interval = o.writeback_interval;
  cfg.lazy_refcounts = !read_only && h.version >= 3 &&
                       (o.lazy_refcounts || (h.compatible_features & QCOW2_COMPAT_LAZY_REFCOUNTS));
  cfg.other_metadata = std::move(other_metadata);
  cfg.bitmaps = co_await BitmapSet::load(*file, h, o.name);
  const std::uint64_t cover = g.l1_entries_for(h.size);  // tables to map the whole disk
  cfg.l2_cache_tables = cache_tables(
      o.l2_cache_size, std::clamp<std::uint64_t>(cover, 16, (32ull << 20) / g.cluster_size()),
      g.cluster_size());
  cfg.refcount_cache_tables =
      cache_tables(o.refcount_cache_size,
                   std::max<std::uint64_t>(16, (1ull << 20) / g.cluster_size()), g.cluster_size());
  co_return std::make_unique<Image>(std::move(file), std::move(h), std::move(l1),
                                    std::move(reftable), std::move(back), std::move(cfg));
}

}  // namespace qnbd::qcow2
