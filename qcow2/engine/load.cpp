#include "qcow2/engine/load.h"

#include "qcow2/meta/image_meta.h"

#include <spdlog/spdlog.h>

#include <stdexcept>

namespace qnbd::qcow2 {

using namespace format;

namespace {

[[noreturn]] void fail(const LoadOptions& o, const std::string& msg) {
  throw std::runtime_error(o.name + ": " + msg);
}

void apply_feature_policy(const LoadOptions& o, const Header& h, bool& read_only) {
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
  meta::ImageMeta m;
  try {
    m = co_await meta::load_image_meta(*file, meta::LoadPurpose::serve);
  } catch (const std::exception& e) {
    fail(o, e.what());
  }
  bool read_only = o.read_only || file->read_only();
  const Header& h = m.header;
  apply_feature_policy(o, h, read_only);
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
  cfg.other_metadata = meta::other_metadata(m);
  cfg.bitmaps = co_await BitmapSet::load(*file, h, o.name);
  const std::uint64_t cover = g.l1_entries_for(h.size);  // tables to map the whole disk
  cfg.l2_cache_tables = cache_tables(
      o.l2_cache_size, std::clamp<std::uint64_t>(cover, 16, (32ull << 20) / g.cluster_size()),
      g.cluster_size());
  cfg.refcount_cache_tables =
      cache_tables(o.refcount_cache_size,
                   std::max<std::uint64_t>(16, (1ull << 20) / g.cluster_size()), g.cluster_size());
  co_return std::make_unique<Image>(std::move(file), std::move(m.header), std::move(m.l1),
                                    std::move(m.reftable), std::move(back), std::move(cfg));
}

}  // namespace qnbd::qcow2
