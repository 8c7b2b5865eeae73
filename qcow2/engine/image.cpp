// Image state, and the ordered metadata write-back that every FLUSH, FUA and
// close goes through (see the crash rules in image.h).
#include "qcow2/engine/image.h"

#include "common/co_try.h"
#include "qcow2/format/endian.h"

#include <spdlog/spdlog.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>

#include <algorithm>
#include <chrono>
#include <utility>

namespace qnbd::qcow2 {

using namespace format;

Image::Image(std::unique_ptr<io::File> file, Header header, std::vector<std::uint64_t> l1,
             std::vector<std::uint64_t> reftable, std::unique_ptr<BlockBackend> backing,
             ImageConfig cfg)
    : file_(std::move(file)),
      header_(std::move(header)),
      g_(header_.geometry()),
      growth_(*file_, cfg.name, header_.size, g_.cluster_size()),
      fill_buffers_(g_.cluster_size()),
      l1_(std::move(l1)),
      backing_(std::move(backing)),
      backing_size_(backing_ ? backing_->size() : 0),
      l2_cache_(*file_, g_.cluster_size(), cfg.l2_cache_tables),
      metadata_(g_.cluster_bits()),
      refcounts_(*file_, g_, header_.refcount_table_offset, header_.refcount_table_clusters,
                 std::move(reftable), cfg.refcount_cache_tables, metadata_),
      guard_(refcounts_, metadata_, g_, [this](const std::string& why) { return corrupt(why); }),
      bitmaps_(std::move(cfg.bitmaps)),
      name_(std::move(cfg.name)),
      read_only_(cfg.read_only),
      lazy_(cfg.lazy_refcounts),
      writeback_interval_(cfg.writeback_interval) {
  metadata_.add(0, g_.cluster_size());
  metadata_.add(header_.l1_table_offset, std::uint64_t{header_.l1_size} * 8);
  for (std::uint64_t e : l1_)
    if (l1_l2_offset(e)) metadata_.add(l1_l2_offset(e), g_.cluster_size());
  for (auto [off, bytes] : cfg.other_metadata) metadata_.add(off, bytes);
}

result<> Image::check_writable() const {
  if (read_only_) return make_error_code(errc::read_only);
  if (corrupt_) return make_error_code(errc::corrupt_image);
  return {};
}

// Before the first change: autoclear bits we do not maintain (any but the
// bitmaps bit of an image whose bitmaps we loaded) are cleared durably, as
// the spec requires of a writer; recording bitmaps are marked in use.
task<> Image::mark_modified() {
  if (modified_) co_return result<>{};
  auto guard = co_await meta_.lock();
  if (modified_) co_return result<>{};
  const std::uint64_t kept = header_.bitmaps ? QCOW2_AUTOCLEAR_BITMAPS : 0;
  if (header_.version >= 3 && (header_.autoclear_features & ~kept)) {
    spdlog::info("{}: clearing autoclear feature bits {:#x}", name_,
                 header_.autoclear_features & ~kept);
    QNBD_CO_TRY(co_await write_autoclear(header_.autoclear_features & kept));
  }
  QNBD_CO_TRY(co_await mark_bitmaps_in_use());
  if (lazy_) {
    // Durable before the first refcount update we defer; the sync also
    // makes the current file size durable (blank clusters rely on it).
    growth_.refresh();
    if (!(header_.incompatible_features & QCOW2_INCOMPAT_DIRTY)) {
      if (auto r =
              co_await write_incompatible(header_.incompatible_features | QCOW2_INCOMPAT_DIRTY);
          !r)
        co_return r;
      spdlog::info("{}: dirty-bit mode (lazy refcounts)", name_);
    } else if (auto r = co_await sync_file(); !r) {
      co_return r;
    }
  }
  modified_ = true;
  if (writeback_interval_ > 0) {
    auto ex = co_await boost::asio::this_coro::executor;
    writeback_timer_ = std::make_unique<boost::asio::steady_timer>(ex);
    boost::asio::co_spawn(ex, writeback_loop(this, alive_), boost::asio::detached);
  }
  co_return result<>{};
}

Image::~Image() {
  *alive_ = false;  // the write-back loop may still be parked on its timer
}

bool Image::has_dirty_metadata() const {
  return l2_cache_.dirty_count() || !l1_dirty_.empty() || refcounts_.dirty() ||
         refcounts_.has_deferred();
}

// Dirty metadata does not wait for a FLUSH forever: after an idle interval it
// is written back (same ordered sequence), which also applies deferred frees.
boost::asio::awaitable<void> Image::writeback_loop(Image* self, std::shared_ptr<bool> alive) {
  while (*alive) {
    auto& t = *self->writeback_timer_;
    t.expires_after(std::chrono::duration_cast<std::chrono::steady_clock::duration>(
        std::chrono::duration<double>(self->writeback_interval_)));
    co_await t.async_wait(boost::asio::as_tuple(boost::asio::use_awaitable));
    if (!*alive) co_return;
    if (self->has_dirty_metadata())
      if (auto r = co_await self->flush(); !r)
        spdlog::warn("{}: background metadata write-back failed: {}", self->name_,
                     r.error().message());
  }
}

// Keeps the number of dirty tables bounded by writing back early. Refcount
// blocks may be written at any time (an early increment is at worst a leak;
// decrements wait for stage 4); in dirty-bit mode this is the only write of
// them before close.
task<> Image::after_update() {
  if (refcounts_.cache().needs_room()) {
    auto guard = co_await meta_.lock();
    if (refcounts_.cache().needs_room())
      if (auto r = co_await refcounts_.write_back(); !r) co_return r;
  }
  if (!l2_cache_.needs_room()) co_return result<>{};
  co_return co_await flush();
}

task<> Image::flush() {
  if (read_only_) co_return result<>{};
  const std::uint64_t mine = ++flush_requested_;
  auto guard = co_await meta_.lock();
  if (flush_completed_ >= mine) co_return result<>{};  // a later sequence covered us
  const std::uint64_t covers = flush_requested_;
  auto r = co_await flush_metadata();
  if (r) flush_completed_ = std::max(flush_completed_, covers);
  co_return r;
}

task<> Image::write_incompatible(std::uint64_t bits) {
  std::byte b[8];
  store_be64(b, bits);
  if (auto r = co_await file_->write_at(HDR_INCOMPATIBLE_FEATURES, b); !r) co_return r;
  if (auto r = co_await sync_file(); !r) co_return r;
  header_.incompatible_features = bits;
  co_return result<>{};
}

// A flush that is alone syncs on the event-loop thread (see ActiveOp).
task<> Image::sync_file() { return growth_.sync(active_ops_ <= 1); }

void Image::rollback_failed(const result<>& r, const char* what) const {
  if (!r)
    spdlog::warn(
        "{}: {} after a failed operation failed too ({}): the clusters leak until "
        "`qnbd-img check -r leaks`",
        name_, what, r.error().message());
}

task<> Image::flush_metadata() {
  ++metadata_flushes_;
  if (corrupt_ && !corrupt_on_disk_ && header_.version >= 3) {
    // As QEMU: the image stays marked until `qemu-img check -r all`.
    if (auto r =
            co_await write_incompatible(header_.incompatible_features | QCOW2_INCOMPAT_CORRUPT);
        !r)
      co_return r;
    corrupt_on_disk_ = true;
  }
  const bool l2_dirty = l2_cache_.dirty_count() > 0;
  const bool l1_dirty = !l1_dirty_.empty();
  bool synced = false;
  if (lazy_ && (l2_dirty || l1_dirty)) {
    // Stage 1, dirty-bit mode: only the data must precede the tables, and
    // not even that when all of it went to blank clusters (see image.h).
    const bool barrier = std::exchange(needs_barrier_, false);
    if (barrier) {
      if (auto r = co_await sync_file(); !r) {
        needs_barrier_ = true;
        co_return r;
      }
      synced = true;
    }
  } else if (!lazy_ && (refcounts_.dirty() || l2_dirty || l1_dirty)) {
    // Stage 1: data and refcounts durable before any L2/L1 points at them.
    if (auto r = co_await refcounts_.write_back(); !r) co_return r;
    synced = true;
  }
  if (l2_dirty) {  // stage 2
    if (auto r = co_await l2_cache_.write_dirty(); !r) co_return r;
    if (auto r = co_await sync_file(); !r) co_return r;
    synced = true;
  }
  if (l1_dirty) {  // stage 3: each run of dirty entries in one write
    auto it = l1_dirty_.begin();
    while (it != l1_dirty_.end()) {
      const std::uint64_t first = *it;
      std::uint64_t last = first;
      while (++it != l1_dirty_.end() && *it == last + 1) last = *it;
      std::vector<std::byte> buf((last - first + 1) * 8);
      for (std::uint64_t i = first; i <= last; ++i)
        store_be64(buf.data() + (i - first) * 8, l1_[i]);
      if (auto r = co_await file_->write_at(header_.l1_table_offset + first * 8, buf); !r)
        co_return r;
    }
    if (auto r = co_await sync_file(); !r) co_return r;
    l1_dirty_.clear();
    synced = true;
  }
  // Stage 4: references dropped above are durable; now the refcounts fall.
  if (refcounts_.has_deferred())
    if (auto r = co_await refcounts_.apply_deferred(); !r) co_return r;
  if (!synced)
    if (auto r = co_await sync_file(); !r) co_return r;
  growth_.flushed();
  co_return result<>{};
}

task<> Image::close() {
  *alive_ = false;
  if (writeback_timer_) writeback_timer_->cancel();
  if (read_only_) co_return result<>{};
  auto guard = co_await meta_.lock();
  if (auto r = co_await flush_metadata(); !r) co_return r;
  QNBD_CO_TRY(co_await store_bitmaps());
  // Frees applied in stage 4 dirtied refcount blocks: write them too (in
  // dirty-bit mode: all deferred refcounts), then the image is clean.
  if (refcounts_.dirty())
    if (auto r = co_await refcounts_.write_back(); !r) co_return r;
  if (auto r = growth_.trim_tail(refcounts_.used_end()); !r)
    spdlog::warn("{}: cannot trim the space grown ahead: {}", name_, r.error().message());
  if (lazy_ && (header_.incompatible_features & QCOW2_INCOMPAT_DIRTY) && !corrupt_)
    if (auto r = co_await write_incompatible(header_.incompatible_features & ~QCOW2_INCOMPAT_DIRTY);
        !r)
      co_return r;
  co_return result<>{};
}

}  // namespace qnbd::qcow2
