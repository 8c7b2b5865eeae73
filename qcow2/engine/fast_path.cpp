// The request fast path: a guest range inside one cluster whose L2 table is
// in the cache (and checked by the cluster guard) and whose subclusters are
// all allocated data maps to one host range, found without I/O or
// suspension, so the request becomes one file I/O. A write also needs what
// the general path's in-place write needs (write_piece): the cluster ours
// (OFLAG_COPIED in L1 and L2), the guard's refcount check decided from the
// cache, a shared claim on the guest cluster, an image already marked
// modified and caches with room (so nothing is owed after the write).
// Anything else returns false and the request takes the general path,
// which reports errors.
#include "qcow2/engine/image.h"

namespace qnbd::qcow2 {

using namespace format;

const Table* Image::cached_l2(std::uint64_t offset) {
  const std::uint64_t i = g_.l1_index(offset);
  if (i >= l1_.size()) return nullptr;
  const std::uint64_t l2 = l1_l2_offset(l1_[i]);
  if (l2 == 0 || !g_.cluster_aligned(l2) || l1_reserved_bits_set(l1_[i])) return nullptr;
  // The general path checks a table on its first use by a writable image.
  if (!read_only_ && !corrupt_ && !guard_.checked(l2)) return nullptr;
  return l2_cache_.peek(l2);
}

std::optional<std::uint64_t> Image::cached_data_host(std::uint64_t offset, std::uint64_t length) {
  if (length == 0 || g_.cluster_index(offset) != g_.cluster_index(offset + length - 1))
    return std::nullopt;
  const Table* t = cached_l2(offset);
  if (!t) return std::nullopt;
  const L2Entry e = load_l2(g_, t->data.data(), g_.l2_index(offset));
  const std::uint64_t end = offset + length;
  for (std::uint64_t p = offset; p < end; p = (p / g_.subcluster_size() + 1) * g_.subcluster_size())
    if (subcluster_type(g_, e, g_.subcluster_index(p)) != SubclusterType::Normal)
      return std::nullopt;
  const std::uint64_t host = l2_host_offset(e);
  if (host == 0 || !g_.cluster_aligned(host) || l2_reserved_bits_set(g_, e)) return std::nullopt;
  return host + g_.offset_in_cluster(offset);
}

Image::FastHold* Image::take_hold(io::Completion* outer) {
  if (fast_holds_.empty()) {
    auto h = std::make_unique<FastHold>();
    h->image = this;
    h->complete = &Image::fast_complete;
    fast_holds_.push_back(std::move(h));
  }
  FastHold* h = fast_holds_.back().release();
  fast_holds_.pop_back();
  h->outer = outer;
  ++active_ops_;
  ++ops_started_;
  return h;
}

void Image::give_back(FastHold* h) {
  h->claim.reset();
  h->epoch.reset();
  --active_ops_;
  fast_holds_.emplace_back(h);
}

void Image::fast_complete(io::Completion* c, int res) {
  auto* h = static_cast<FastHold*>(c);
  io::Completion* outer = h->outer;
  h->image->give_back(h);
  outer->complete(outer, res);
}

bool Image::start_read(std::uint64_t offset, std::span<std::byte> buf, io::Completion* c) {
  const auto host = cached_data_host(offset, buf.size());
  if (!host) return false;
  FastHold* h = take_hold(c);
  h->epoch.emplace(read_epochs_.enter());
  if (file_->start_read(*host, buf, h, nullptr)) return true;
  give_back(h);
  return false;
}

bool Image::start_write(std::uint64_t offset, std::span<const std::byte> buf, io::Completion* c) {
  if (read_only_ || corrupt_ || !modified_ || refcounts_.cache().needs_room() ||
      l2_cache_.needs_room())
    return false;
  const std::uint64_t cluster = g_.cluster_index(offset);
  if (buf.empty() || cluster != g_.cluster_index(offset + buf.size() - 1)) return false;
  const Table* t = cached_l2(offset);  // checks the L1 index too
  if (!t || !l1_copied(l1_[g_.l1_index(offset)])) return false;
  const L2Entry e = load_l2(g_, t->data.data(), g_.l2_index(offset));
  const std::uint64_t host = in_place_host(g_, e, offset, offset + buf.size());
  if (!host || !guard_.rewrite_data_passes_now(host)) return false;
  auto claim = inflight_.try_claim(cluster, cluster, false);
  if (!claim) return false;
  bitmaps_.record(offset, buf.size());
  FastHold* h = take_hold(c);
  h->claim.emplace(std::move(*claim));
  if (file_->start_write(host + g_.offset_in_cluster(offset), buf, h, nullptr)) return true;
  give_back(h);
  return false;
}

}  // namespace qnbd::qcow2
