// One open qcow2 image: header, active L1 table, L2 and refcount caches, the
// backing image, and the request operations. The BlockBackend adapter
// (qcow2_backend.h) forwards to it.
//
// Concurrency (one io_context): reads take no lock; they copy what the L2
// tables say and do I/O outside any lock. Requests that change mappings
// claim their guest clusters (Inflight), take the metadata lock only to
// allocate and to link L2 entries, and do data I/O with the lock released.
// flush_metadata() holds the lock for its whole ordered sequence.
//
// In dirty-bit mode stage 1 is only the data sync; refcounts reach the disk
// at close, before the dirty bit is cleared (DESIGN rule 3). Stage 1 is
// skipped when every L2 entry linked since the last flush points at a blank
// cluster (see CowPlan) inside the durable file size: such a cluster reads
// as zeros, its old contents, until its data lands, so the L2 entry may
// reach the disk first and one sync per FLUSH suffices. io::FileGrowth
// grows the file ahead of allocation to keep new clusters inside the
// durable size (and writes zeros ahead for flush-heavy clients; those
// clusters still read as zeros, so they stay blank).
//
// Crash ordering (DESIGN rules 1-2), enforced by flush_metadata():
//   1. data written and refcount blocks (then refcount table, header) durable
//   2. then dirty L2 tables, sync
//   3. then dirty L1 entries, sync
//   4. then frees deferred by L2/L1 changes are applied (refcount--), so a
//      cluster is reused only after nothing durable references it.
#pragma once

#include "backend/block_backend.h"
#include "io/buffer_cache.h"
#include "io/file.h"
#include "io/file_growth.h"
#include "qcow2/engine/bitmaps.h"
#include "qcow2/engine/cluster_guard.h"
#include "qcow2/engine/coro_sync.h"
#include "qcow2/engine/inflight.h"
#include "qcow2/engine/overlap.h"
#include "qcow2/engine/read_epochs.h"
#include "qcow2/engine/refcounts.h"
#include "qcow2/engine/table_cache.h"
#include "qcow2/format/entries.h"
#include "qcow2/format/header.h"

#include <boost/container/small_vector.hpp>

#include <memory>
#include <set>
#include <span>
#include <string>
#include <vector>

namespace qnbd::qcow2 {

// What a guest range currently reads as.
enum class MapKind { Data, Zero, Backing, Compressed };
struct MapRun {
  std::uint64_t guest;
  std::uint64_t length;
  MapKind kind;
  std::uint64_t host = 0;    // Data, and Zero/Backing keeping a host cluster: host of `guest`
  format::L2Entry entry{};   // Compressed: the L2 entry
  bool unallocated = false;  // Zero: allocated in no layer (no backing file)
};
// A request inside one cluster or two maps to one or two runs, held inline.
using MapRuns = boost::container::small_vector<MapRun, 2>;

// Host offset of the cluster of entry `e` if guest bytes [from, to) of it
// may be written in place (ours: OFLAG_COPIED, allocated data), else 0.
std::uint64_t in_place_host(const format::Geometry& g, const format::L2Entry& e, std::uint64_t from,
                            std::uint64_t to);

struct ImageConfig {
  std::string name;  // for log messages
  bool read_only = false;
  std::size_t l2_cache_tables = 16;
  std::size_t refcount_cache_tables = 16;
  double writeback_interval = 5.0;  // seconds; 0 = only on FLUSH/FUA/close
  // Dirty-bit mode (lazy refcounts): the dirty bit is set durably before the
  // first change; refcount blocks are then written only at close, after
  // which the bit is cleared. A crash leaves a dirty image that is repaired
  // on the next open.
  bool lazy_refcounts = false;
  // Metadata the loader found besides L1/L2/refcounts: snapshot table and
  // snapshot L1 tables, bitmap directory ({offset, bytes}).
  std::vector<std::pair<std::uint64_t, std::uint64_t>> other_metadata;
  // The persistent bitmaps (bitmaps.h).
  BitmapSet bitmaps;
};

class Image {
 public:
  Image(std::unique_ptr<io::File> file, format::Header header, std::vector<std::uint64_t> l1,
        std::vector<std::uint64_t> reftable, std::unique_ptr<BlockBackend> backing,
        ImageConfig cfg);

  std::uint64_t size() const { return header_.size; }
  bool read_only() const { return read_only_; }
  const format::Header& header() const { return header_; }
  const format::Geometry& geometry() const { return g_; }

  task<> read(std::uint64_t offset, std::span<std::byte> buf);
  task<> write(std::uint64_t offset, std::span<const std::byte> buf, bool fua);
  task<> write_zeroes(std::uint64_t offset, std::uint64_t length, bool may_trim, bool fast,
                      bool fua);
  task<> trim(std::uint64_t offset, std::uint64_t length, bool fua);
  task<> flush();
  task<std::vector<Extent>> block_status(std::uint64_t offset, std::uint64_t length);
  // The bytes from `offset` one status request covers, at most `length` (block_status.cpp).
  std::uint64_t status_window(std::uint64_t offset, std::uint64_t length) const;
  BlockBackend* backing() { return backing_.get(); }  // null: no backing file
  // qemu:allocation-depth runs (allocation_depth.cpp).
  task<std::vector<StatusRun>> allocation_depth(std::uint64_t offset, std::uint64_t length);
  task<> close();
  // The request fast path (BlockBackend::start_read/start_write): a range
  // inside one data cluster whose L2 table is cached (fast_path.cpp).
  bool start_read(std::uint64_t offset, std::span<std::byte> buf, io::Completion* c);
  bool start_write(std::uint64_t offset, std::span<const std::byte> buf, io::Completion* c);

  // Client operations in progress (Qcow2Backend counts them). A flush that
  // is alone syncs on the event-loop thread: nothing else waits for the
  // loop, and that saves the kernel worker round trip of an io_uring fsync
  // (measured at QD1 with a FLUSH per write: 4.5k -> 6.1k writes/s).
  class ActiveOp {
   public:
    explicit ActiveOp(Image& i) : img_(i) {
      ++img_.active_ops_;
      ++img_.ops_started_;
    }
    ~ActiveOp() { --img_.active_ops_; }
    ActiveOp(const ActiveOp&) = delete;
    ActiveOp& operator=(const ActiveOp&) = delete;

   private:
    Image& img_;
  };

  // Tables held by the metadata caches (for tests and statistics).
  struct CacheUse {
    std::size_t l2_tables, l2_dirty, refcount_tables, refcount_dirty;
  };
  CacheUse cache_use() const {
    return {l2_cache_.size(), l2_cache_.dirty_count(), refcounts_.cache().size(),
            refcounts_.cache().dirty_count()};
  }

  // For the metrics endpoint (Qcow2Backend::stats).
  BackendStats stats() const {
    BackendStats s = file_stats(*file_);
    s.metadata_flushes = metadata_flushes_;
    s.l2_cache = l2_cache_.stats();
    s.refcount_cache = refcounts_.cache().stats();
    return s;
  }

  // Mapping of [offset, offset+length), merged into runs (exposed for tests).
  task<MapRuns> map_range(std::uint64_t offset, std::uint64_t length);

  // Persistent bitmaps: recorded while serving, stored at close. Changes
  // through bitmaps() (qnbd-img bitmap) are stored at close too.
  BitmapSet& bitmaps() { return bitmaps_; }
  const BitmapSet& bitmaps() const { return bitmaps_; }

 private:
  friend class Writer;
  friend class Defragmenter;
  // ---- mapping (mapping.cpp)
  task<std::shared_ptr<Table>> l2_table_for(std::uint64_t guest);  // null if none
  result<MapKind> classify(const format::L2Entry& e, unsigned sc, std::uint64_t& host) const;
  error_code corrupt(const std::string& what);
  // An allocation that would have given out metadata.
  error_code alloc_error(const error_code& e) {
    return e == errc::corrupt_image ? corrupt("allocation would overwrite metadata") : e;
  }
  // The L2 entries of guest clusters c0..c1 (one table) changed.
  void mark_l2_dirty(Table& t, std::uint64_t c0, std::uint64_t c1) {
    l2_cache_.mark_dirty(t, g_.l2_index(c0 << g_.cluster_bits()) * g_.l2_entry_size(),
                         (g_.l2_index(c1 << g_.cluster_bits()) + 1) * g_.l2_entry_size());
  }
  // Whether a cluster with entry `e` at `guest` reads as zeros throughout.
  bool reads_as_zero(const format::L2Entry& e, std::uint64_t guest) const;
  // A rollback (giving back clusters allocated for an operation that failed)
  // failed too: those clusters leak until a repair. Logged here; the caller
  // returns the operation's own error.
  void rollback_failed(const result<>& r, const char* what) const;

  // ---- the fast path (fast_path.cpp)
  // A fast I/O in flight: counted as an active operation, holding its claim.
  struct FastHold : io::Completion {
    Image* image = nullptr;
    io::Completion* outer = nullptr;
    std::optional<Inflight::Guard> claim;    // writes
    std::optional<ReadEpochs::Guard> epoch;  // reads: the defragmenter frees after them
  };
  const Table* cached_l2(std::uint64_t offset);
  std::optional<std::uint64_t> cached_data_host(std::uint64_t offset, std::uint64_t length);
  FastHold* take_hold(io::Completion* outer);
  void give_back(FastHold* h);
  static void fast_complete(io::Completion* c, int res);
  std::vector<std::unique_ptr<FastHold>> fast_holds_;

  // ---- reads (read.cpp)
  task<> read_runs(std::span<const MapRun> runs, std::uint64_t base, std::span<std::byte> buf);
  task<> read_backing(std::uint64_t guest, std::span<std::byte> buf);
  task<> read_compressed(format::L2Entry e, std::uint64_t guest, std::span<std::byte> buf);

  // ---- writes (write.cpp)
  task<> write_piece(std::uint64_t offset, std::span<const std::byte> buf);
  task<> write_in_place(std::uint64_t offset, std::span<const std::byte> buf,
                        std::span<const std::uint64_t> hosts);
  task<> write_allocating(std::uint64_t offset, std::span<const std::byte> buf);
  // Under the metadata lock: an L2 table of our own (COPIED) for `guest`.
  task<std::shared_ptr<Table>> writable_l2(std::uint64_t guest);
  task<> write_zero_data(std::uint64_t offset, std::uint64_t length);

  // ---- zeroes and discard (zero.cpp)
  task<> zero_piece(std::uint64_t offset, std::uint64_t length, bool unmap);
  task<> discard_piece(std::uint64_t offset, std::uint64_t length);

  // ---- metadata write-back (image.cpp)
  task<> flush_metadata();
  task<> sync_file();
  task<> mark_modified();
  // ---- persistent bitmaps on disk (bitmap_store.cpp)
  task<> write_autoclear(std::uint64_t bits);
  std::vector<format::BitmapEntry> bitmap_entries() const;
  task<> mark_bitmaps_in_use();
  task<> store_bitmap(DirtyBitmap& b);
  task<> write_bitmaps_header(std::optional<format::BitmapsExtension> ext);
  task<> store_bitmaps();
  task<> after_update();
  result<> check_writable() const;

  std::unique_ptr<io::File> file_;
  format::Header header_;
  format::Geometry g_;
  io::FileGrowth growth_;
  // Copy-on-write fills of allocating writes (CowPlan::fill).
  io::BufferCache fill_buffers_;
  std::vector<std::uint64_t> l1_;
  std::set<std::uint64_t> l1_dirty_;
  std::unique_ptr<BlockBackend> backing_;
  std::uint64_t backing_size_ = 0;
  TableCache l2_cache_;
  MetadataMap metadata_;
  Refcounts refcounts_;
  ClusterGuard guard_;
  Inflight inflight_;
  BitmapSet bitmaps_;
  AsyncMutex meta_;
  std::string name_;
  bool read_only_;
  bool corrupt_ = false;
  bool modified_ = false;
  bool corrupt_on_disk_ = false;
  bool lazy_;
  // Dirty-bit mode: whether an L2 entry linked since the last flush needs
  // its data durable first.
  bool needs_barrier_ = false;
  unsigned active_ops_ = 0;
  std::uint64_t ops_started_ = 0;  // client operations ever (the defragmenter yields to them)
  ReadEpochs read_epochs_;
  std::uint64_t metadata_flushes_ = 0;  // flush_metadata() runs (metrics)
  task<> write_incompatible(std::uint64_t bits);
  // Group commit: a flush requested while another waits for the lock is
  // covered by any flush sequence that starts after it was requested.
  std::uint64_t flush_requested_ = 0;
  std::uint64_t flush_completed_ = 0;
  // Idle write-back of dirty metadata (cache_clean_interval).
  double writeback_interval_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
  std::unique_ptr<boost::asio::steady_timer> writeback_timer_;
  static boost::asio::awaitable<void> writeback_loop(Image* self, std::shared_ptr<bool> alive);
  bool has_dirty_metadata() const;

 public:
  ~Image();
};

}  // namespace qnbd::qcow2
