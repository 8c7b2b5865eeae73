#include "tools/image_chain.h"

#include "qcow2/format/entries.h"
#include "qcow2/meta/backing.h"

#include <fmt/format.h>

#include <sys/stat.h>

#include <algorithm>

namespace qnbd::img {

using namespace qcow2::format;

namespace {

// qemu's qcow2_detect_metadata_preallocation: more clusters have a refcount
// than the file really occupies.
bool detect_metadata_prealloc(const std::string& path, const qcow2::meta::ImageMeta& m,
                              std::uint64_t used_clusters) {
  struct stat st {};
  if (::stat(path.c_str(), &st) < 0) return false;
  const std::uint64_t real = static_cast<std::uint64_t>(st.st_blocks) * 512 / m.cluster_size();
  const std::uint64_t threshold = std::max(real * 10 / 9, real + 2);
  return used_clusters >= threshold;
}

}  // namespace

ImageChain::ImageChain(qcow2::SyncRunner& run, const std::string& path) : run_(run) {
  qcow2::meta::BackingChain chain;
  std::string next = path, format;
  for (;;) {
    try {
      chain.add(next);
    } catch (const std::exception& e) {
      throw Fatal(e.what());
    }
    open_layer(next, format);
    if (!layers_.back().qcow2 || layers_.back().meta.header.backing_file.empty()) break;
    const auto& h = layers_.back().meta.header;
    try {
      next = qcow2::meta::backing_path(next, h.backing_file);
    } catch (const std::exception& e) {
      throw Fatal(fmt::format("Could not open backing file of '{}': {}", next, e.what()));
    }
    format = h.backing_format;
  }
}

void ImageChain::open_layer(const std::string& path, const std::string& format) {
  Layer l;
  l.path = path;
  l.file = open_file(run_, path, false);
  auto fs = l.file->size();
  if (!fs) throw Fatal(fmt::format("Could not open '{}': {}", path, fs.error().message()));
  l.file_size = *fs;
  l.qcow2 = format.empty() ? is_qcow2(path) : format == "qcow2";
  if (!format.empty() && format != "qcow2" && format != "raw")
    throw Fatal(fmt::format("Could not open '{}': Unknown driver '{}'", path, format));
  if (l.qcow2) {
    try {
      l.meta = run_.run(qcow2::meta::load_image_meta(*l.file, qcow2::meta::LoadPurpose::inspect));
    } catch (const std::exception& e) {
      throw Fatal(fmt::format("Could not open '{}': {}", path, e.what()));
    }
    l.size = l.meta.header.size;
    // Clusters below the end of the file that have a refcount.
    std::uint64_t used = 0;
    const auto& g = l.meta.geo;
    const std::uint64_t end_cluster = (l.file_size + g.cluster_size() - 1) / g.cluster_size();
    for (std::uint64_t i = 0; i < l.meta.reftable.size(); ++i) {
      const std::uint64_t off = reftable_block_offset(l.meta.reftable[i]);
      const std::uint64_t first = i * g.refblock_entries();
      if (!off || !g.cluster_aligned(off) || first >= end_cluster) continue;
      std::vector<std::byte> b(g.cluster_size());
      if (!run_.run(l.file->read_at(off, b))) continue;
      for (std::uint64_t j = 0; j < g.refblock_entries() && first + j < end_cluster; ++j)
        used += get_refcount(b.data(), g.refcount_order(), j) != 0;
    }
    l.metadata_prealloc = detect_metadata_prealloc(path, l.meta, used);
  } else {
    l.size = l.file_size;
  }
  layers_.push_back(std::move(l));
}

BlockStatus ImageChain::status(std::size_t i, std::uint64_t offset, std::uint64_t max) {
  Layer& l = layers_[i];
  max = std::min(max, l.size - offset);
  return l.qcow2 ? qcow2_status(l, offset, max) : raw_status(l, offset, max);
}

BlockStatus ImageChain::raw_status(Layer& l, std::uint64_t offset, std::uint64_t max) {
  BlockStatus st;
  st.allocated = st.offset_valid = true;
  st.offset = offset;
  auto data = l.file->seek_data(offset);
  if (data && *data == offset) {
    auto hole = l.file->seek_hole(offset);
    st.data = true;
    st.length = std::min(max, hole ? *hole - offset : max);
  } else {
    st.zero = true;
    st.length = data ? std::min(max, *data - offset) : max;
  }
  return st;
}

const std::byte* ImageChain::l2_table(Layer& l, std::uint64_t l2_offset) {
  auto it = l.l2_cache.find(l2_offset);
  if (it != l.l2_cache.end()) return it->second.data();
  if (l.l2_cache.size() > 4096) l.l2_cache.clear();
  std::vector<std::byte> t(l.meta.cluster_size());
  if (auto r = run_.run(l.file->read_at(l2_offset, t)); !r)
    throw Fatal(fmt::format("{}: could not read L2 table: {}", l.path, r.error().message()));
  return l.l2_cache.emplace(l2_offset, std::move(t)).first->second.data();
}

// qemu's qcow2_co_block_status for one run of same-type subclusters.
BlockStatus ImageChain::qcow2_status(Layer& l, std::uint64_t offset, std::uint64_t max) {
  const Geometry& g = l.meta.geo;
  const std::uint64_t l1i = g.l1_index(offset);
  const std::uint64_t table_end = (l1i + 1) * g.l2_coverage();
  BlockStatus st;
  const std::uint64_t l2_off = l1i < l.meta.l1.size() ? l1_l2_offset(l.meta.l1[l1i]) : 0;
  if (!l2_off) {
    st.length = std::min(max, table_end - offset);
    return st;
  }
  const std::byte* table = l2_table(l, l2_off);
  auto classify = [&](std::uint64_t off, BlockStatus& s) {
    const L2Entry e = load_l2(g, table, g.l2_index(off));
    const SubclusterType t = subcluster_type(g, e, g.subcluster_index(off));
    s = {};
    if (t == SubclusterType::Invalid) throw Fatal(fmt::format("{}: invalid L2 entry", l.path));
    if (t == SubclusterType::Normal || t == SubclusterType::ZeroAlloc ||
        t == SubclusterType::UnallocatedAlloc) {
      s.offset_valid = true;
      s.offset = l2_host_offset(e) + (off & (g.cluster_size() - 1));
    }
    if (t == SubclusterType::ZeroPlain || t == SubclusterType::ZeroAlloc)
      s.zero = true;
    else if (t == SubclusterType::Normal || t == SubclusterType::Compressed)
      s.data = true;
    s.allocated = s.data || s.zero;
    return t;
  };
  const SubclusterType first = classify(offset, st);
  const std::uint64_t sc = g.subcluster_size();
  std::uint64_t len = std::min(max, ((offset / sc) + 1) * sc - offset);
  // Extend over following subclusters of the same kind (and, for host data,
  // contiguous host offsets) in the same L2 table.
  while (first != SubclusterType::Compressed && len < max && offset + len < table_end) {
    BlockStatus next;
    if (classify(offset + len, next) != first) break;
    if (st.offset_valid && next.offset != st.offset + len) break;
    len = std::min(max, len + sc);
  }
  st.length = len;
  if (l.metadata_prealloc && st.data && st.offset_valid) recurse_into_file(l, st);
  return st;
}

// With metadata preallocation qemu asks the file whether the host range is
// a hole: holes read as zeros.
void ImageChain::recurse_into_file(Layer& l, BlockStatus& st) {
  if (st.offset >= l.file_size) {
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
