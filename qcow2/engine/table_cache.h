// A cache of cluster-sized metadata tables (L2 tables or refcount blocks)
// keyed by host offset. A miss loads asynchronously; concurrent misses on one
// table share the load; other tables stay usable meanwhile. Dirty tables are
// never evicted: they leave only through write_dirty(), which the image's
// flush sequence calls in the order the crash rules demand.
//
// Callers hold a shared_ptr while they use a table; a held table is never
// evicted. Mutations must be followed by mark_dirty() before the caller next
// suspends.
#pragma once

#include "backend/backend_stats.h"
#include "common/task.h"
#include "io/file.h"
#include "qcow2/engine/coro_sync.h"

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

namespace qnbd::qcow2 {

struct Table {
  std::uint64_t offset = 0;
  std::vector<std::byte> data;
  bool dirty = false;
  // Bytes changed since the last write-back: [dirty_from, dirty_to).
  std::size_t dirty_from = 0, dirty_to = 0;
  bool loading = false;
  std::uint64_t last_use = 0;
  error_code load_error;
  WaitQueue loaded;
};

class TableCache {
 public:
  TableCache(io::File& file, std::size_t table_size, std::size_t capacity);

  // The table at `offset`, loaded from the file on a miss.
  task<std::shared_ptr<Table>> get(std::uint64_t offset);
  // The table at `offset` if it is cached and loaded (counted as a use),
  // else null; never suspends. The pointer is valid until the caller next
  // suspends.
  Table* peek(std::uint64_t offset) {
    auto it = tables_.find(offset);
    if (it == tables_.end() || it->second->loading || it->second->load_error) return nullptr;
    touch(*it->second);
    return it->second.get();
  }
  // A new all-zero table at `offset` (no read), already dirty.
  std::shared_ptr<Table> create(std::uint64_t offset);
  // The whole table changed, or only bytes [from, to) of it: write-back
  // writes the changed 4 KiB blocks, not the whole cluster.
  void mark_dirty(Table& t) { mark_dirty(t, 0, table_size_); }
  void mark_dirty(Table& t, std::size_t from, std::size_t to);
  // Forgets a table (its cluster was freed); a dirty copy is discarded.
  void drop(std::uint64_t offset);

  std::size_t dirty_count() const { return dirty_; }
  MetadataCacheStats stats() const { return {hits_, misses_, evictions_, dirty_}; }
  std::size_t capacity() const { return capacity_; }
  std::size_t size() const { return tables_.size(); }
  // Dirty tables fill three quarters: time to write back, so that eviction
  // finds clean ones.
  bool needs_room() const { return dirty_ * 4 >= capacity_ * 3; }
  // Writes the changed blocks of every dirty table, sorted by offset,
  // adjacent ones in one vectored write. Does not sync. Tables stay cached,
  // now clean.
  task<> write_dirty();

 private:
  void touch(Table& t) { t.last_use = ++clock_; }
  void evict_if_needed();

  io::File& file_;
  std::size_t table_size_;
  std::size_t capacity_;
  std::size_t dirty_ = 0;
  std::uint64_t clock_ = 0;
  std::uint64_t hits_ = 0, misses_ = 0, evictions_ = 0;  // metrics
  std::unordered_map<std::uint64_t, std::shared_ptr<Table>> tables_;
};

}  // namespace qnbd::qcow2
