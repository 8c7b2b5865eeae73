#include "tools/image_chain.h"

#include "backend/raw_backend.h"
#include "qcow2/format/entries.h"
#include "qcow2/meta/image_meta.h"
#include "qcow2/open.h"
#include "qcow2/qcow2_backend.h"

#include <fmt/format.h>

#include <sys/stat.h>

#include <algorithm>

namespace qnbd::img {

using namespace qcow2::format;

namespace {

// qemu's qcow2_detect_metadata_preallocation: more clusters below the end
// of the file have a refcount than the file really occupies.
bool metadata_prealloc(qcow2::SyncRunner& run, const std::string& path, io::File& file) {
  qcow2::meta::ImageMeta m;
  try {
    m = run.run(qcow2::meta::load_image_meta(file, qcow2::meta::LoadPurpose::inspect));
  } catch (const std::exception& e) {
    throw Fatal(fmt::format("Could not open '{}': {}", path, e.what()));
  }
  const Geometry& g = m.geo;
  const std::uint64_t end_cluster = (m.file_size + g.cluster_size() - 1) / g.cluster_size();
  std::uint64_t used = 0;
  for (std::uint64_t i = 0; i < m.reftable.size(); ++i) {
    const std::uint64_t off = reftable_block_offset(m.reftable[i]);
    const std::uint64_t first = i * g.refblock_entries();
    if (!off || !g.cluster_aligned(off) || first >= end_cluster) continue;
    std::vector<std::byte> b(g.cluster_size());
    if (!run.run(file.read_at(off, b))) continue;
    for (std::uint64_t j = 0; j < g.refblock_entries() && first + j < end_cluster; ++j)
      used += get_refcount(b.data(), g.refcount_order(), j) != 0;
  }
  struct stat st {};
  if (::stat(path.c_str(), &st) < 0) return false;
  const std::uint64_t real = static_cast<std::uint64_t>(st.st_blocks) * 512 / g.cluster_size();
  return used >= std::max(real * 10 / 9, real + 2);
}

}  // namespace

ImageChain::ImageChain(qcow2::SyncRunner& run, const std::string& path) : run_(run) {
  std::vector<std::string> paths;  // top first, as the open path names them
  if (is_qcow2(path)) {
    qcow2::OpenOptions o;
    o.read_only = true;
    o.before_use = [&](const std::string& p, bool, bool) { paths.push_back(p); };
    top_ = run_.run(qcow2::open_image(run_.ring(), path, o));
  } else {  // qemu-img probes the format: a file without the magic is raw
    top_ = std::make_unique<RawBackend>(open_file(run_, path, false));
    paths.push_back(path);
  }
  BlockBackend* b = top_.get();
  for (const std::string& p : paths) {
    Layer l;
    l.path = p;
    l.backend = b;
    l.size = b->size();
    b = nullptr;
    if (auto* q = dynamic_cast<qcow2::Qcow2Backend*>(l.backend)) {
      l.image = &q->image();
      b = l.image->backing();
      auto f = open_file(run_, p, false);
      if (metadata_prealloc(run_, p, *f)) l.file = std::move(f);
    }
    layers_.push_back(std::move(l));
  }
}

void ImageChain::close() {
  if (auto r = run_.run(top_->close()); !r)
    throw Fatal(fmt::format("{}: {}", layers_.front().path, r.error().message()));
}

BlockStatus ImageChain::status(std::size_t i, std::uint64_t offset, std::uint64_t max) {
  Layer& l = layers_[i];
  max = std::min(max, l.size - offset);
  return l.image ? qcow2_status(l, offset, max) : raw_status(l, offset, max);
}

BlockStatus ImageChain::raw_status(Layer& l, std::uint64_t offset, std::uint64_t max) {
  auto extents = run_.run(l.backend->block_status(offset, max));
  if (!extents) throw Fatal(fmt::format("{}: {}", l.path, extents.error().message()));
  const Extent& e = extents->front();
  BlockStatus st;
  st.length = std::min(max, e.length);
  st.allocated = st.offset_valid = true;
  st.offset = offset;
  st.data = !e.hole;
  st.zero = e.zero;
  return st;
}

// The run of the engine's mapping that holds `offset`; a new window of
// Image::status_window bytes is mapped when the last one does not.
const qcow2::MapRun& ImageChain::run_at(Layer& l, std::uint64_t offset) {
  const bool inside = !l.runs.empty() && l.runs.front().guest <= offset &&
                      offset < l.runs.back().guest + l.runs.back().length;
  if (!inside) {
    const std::uint64_t n = l.image->status_window(offset, l.size - offset);
    auto runs = run_.run(l.image->map_range(offset, n));
    if (!runs)
      throw Fatal(fmt::format("{}: cannot map guest offset {}: {}", l.path, offset,
                              runs.error().message()));
    l.runs.assign(runs->begin(), runs->end());
  }
  auto after =
      std::upper_bound(l.runs.begin(), l.runs.end(), offset,
                       [](std::uint64_t o, const qcow2::MapRun& r) { return o < r.guest; });
  return *std::prev(after);
}

// As qemu's qcow2_co_block_status: data and compressed clusters are data,
// zero clusters zeros, both allocated here; a host offset wherever the
// entry keeps a host cluster, compressed ones excepted.
BlockStatus ImageChain::qcow2_status(Layer& l, std::uint64_t offset, std::uint64_t max) {
  const qcow2::MapRun& r = run_at(l, offset);
  BlockStatus st;
  st.length = std::min(max, r.guest + r.length - offset);
  st.data = r.kind == qcow2::MapKind::Data || r.kind == qcow2::MapKind::Compressed;
  st.zero = r.kind == qcow2::MapKind::Zero && !r.unallocated;
  st.allocated = st.data || st.zero;
  st.offset_valid = r.host != 0;
  if (st.offset_valid) st.offset = r.host + (offset - r.guest);
  if (l.file && r.kind == qcow2::MapKind::Data) recurse_into_file(l, st);
  return st;
}

// With metadata preallocation qemu asks the file whether the host range is
// a hole: holes read as zeros.
void ImageChain::recurse_into_file(Layer& l, BlockStatus& st) {
  auto size = l.file->size();
  if (size && st.offset >= *size) {
    st.zero = true;
    return;
  }
  auto data = l.file->seek_data(st.offset);
  if (!data) {  // ENXIO: a hole up to the end of the file
    st.zero = true;
    return;
  }
  if (*data > st.offset) {
    st.zero = true;
    st.length = std::min(st.length, *data - st.offset);
    return;
  }
  auto hole = l.file->seek_hole(st.offset);
  if (hole) st.length = std::min(st.length, *hole - st.offset);
}

}  // namespace qnbd::img
