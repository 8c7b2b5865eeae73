#include "qcow2/engine/table_cache.h"

#include <algorithm>

namespace qnbd::qcow2 {

TableCache::TableCache(io::File& file, std::size_t table_size, std::size_t capacity)
    : file_(file), table_size_(table_size), capacity_(std::max<std::size_t>(capacity, 2)) {}

task<std::shared_ptr<Table>> TableCache::get(std::uint64_t offset) {
  if (auto it = tables_.find(offset); it != tables_.end()) {
    ++hits_;
    std::shared_ptr<Table> t = it->second;
    while (t->loading) co_await t->loaded.wait();
    if (t->load_error) co_return t->load_error;
    touch(*t);
    co_return t;
  }
  ++misses_;
  evict_if_needed();
  auto t = std::make_shared<Table>();
  t->offset = offset;
  t->loading = true;
  t->data.resize(table_size_);
  tables_[offset] = t;
  auto r = co_await file_.read_at(offset, t->data);
  t->loading = false;
  if (!r) {
    t->load_error = r.error();
    if (auto it = tables_.find(offset); it != tables_.end() && it->second == t) tables_.erase(it);
  }
  t->loaded.notify_all();
  if (!r) co_return r.error();
  touch(*t);
  co_return t;
}

std::shared_ptr<Table> TableCache::create(std::uint64_t offset) {
  evict_if_needed();
  auto t = std::make_shared<Table>();
  t->offset = offset;
  t->data.assign(table_size_, std::byte{0});
  if (auto it = tables_.find(offset); it != tables_.end() && it->second->dirty) --dirty_;
  tables_[offset] = t;
  touch(*t);
  mark_dirty(*t);
  return t;
}

void TableCache::mark_dirty(Table& t, std::size_t from, std::size_t to) {
  if (!t.dirty) {
    t.dirty = true;
    t.dirty_from = from;
    t.dirty_to = to;
    ++dirty_;
    return;
  }
  t.dirty_from = std::min(t.dirty_from, from);
  t.dirty_to = std::max(t.dirty_to, to);
}

void TableCache::drop(std::uint64_t offset) {
  auto it = tables_.find(offset);
  if (it == tables_.end()) return;
  if (it->second->dirty) {
    it->second->dirty = false;
    --dirty_;
  }
  tables_.erase(it);
}

void TableCache::evict_if_needed() {
  while (tables_.size() >= capacity_) {
    auto victim = tables_.end();
    for (auto it = tables_.begin(); it != tables_.end(); ++it) {
      const Table& t = *it->second;
      if (t.dirty || t.loading || it->second.use_count() > 1) continue;
      if (victim == tables_.end() || t.last_use < victim->second->last_use) victim = it;
    }
    if (victim == tables_.end()) return;  // all busy or dirty: grow past capacity
    tables_.erase(victim);
    ++evictions_;
  }
}

task<> TableCache::write_dirty() {
  std::vector<std::shared_ptr<Table>> dirty;
  for (auto& [off, t] : tables_)
    if (t->dirty) dirty.push_back(t);
  std::sort(dirty.begin(), dirty.end(), [](auto& a, auto& b) { return a->offset < b->offset; });
  // Whole blocks of the file's I/O granularity around the changed bytes.
  const std::size_t block =
      std::min<std::size_t>(table_size_, std::max<std::size_t>(4096, file_.alignment()));
  auto first = [&](const Table& t) { return t.dirty_from / block * block; };
  auto last = [&](const Table& t) {
    return std::min(table_size_, (t.dirty_to + block - 1) / block * block);
  };
  Tasks writes;
  std::vector<std::vector<iovec>> iovs;
  iovs.reserve(dirty.size());
  for (std::size_t i = 0; i < dirty.size();) {
    std::size_t j = i;
    std::vector<iovec> v;
    for (;;) {
      const Table& t = *dirty[j];
      v.push_back({const_cast<std::byte*>(t.data.data()) + first(t), last(t) - first(t)});
      ++j;
      if (j == dirty.size() || v.size() >= 512 || last(t) != table_size_ || first(*dirty[j]) != 0 ||
          dirty[j]->offset != t.offset + table_size_)
        break;
    }
    iovs.push_back(std::move(v));
    writes.push_back(file_.writev_at(dirty[i]->offset + first(*dirty[i]), iovs.back()));
    i = j;
  }
  if (auto r = co_await run_parallel(std::move(writes)); !r) co_return r;
  for (auto& t : dirty) {
    if (t->dirty) {
      t->dirty = false;
      --dirty_;
    }
  }
  evict_if_needed();
  co_return result<>{};
}

}  // namespace qnbd::qcow2
