#include "qcow2/check/disk_refcounts.h"

#include "qcow2/format/entries.h"

namespace qnbd::qcow2::check {
namespace {
// Enough for 64 GiB of 16-bit refcounts at 64 KiB clusters; beyond that the
// cache restarts (blocks are read-mostly and written through).
constexpr std::size_t kMaxCachedBlocks = 2048;
}  // namespace

task<const std::byte*> DiskRefcounts::block_for(std::uint64_t cluster) {
  const std::uint64_t index = meta_.geo.reftable_index(cluster);
  if (index >= meta_.reftable.size()) co_return nullptr;
  const std::uint64_t offset = format::reftable_block_offset(meta_.reftable[index]);
  if (offset == 0) co_return nullptr;
  if (!meta_.geo.cluster_aligned(offset)) co_return errno_error(EIO);
  if (auto it = blocks_.find(index); it != blocks_.end()) co_return it->second.data();
  if (blocks_.size() >= kMaxCachedBlocks) blocks_.clear();
  std::vector<std::byte> b(meta_.cluster_size());
  if (auto r = co_await file_.read_at(offset, b); !r) co_return r.error();
  auto [it, _] = blocks_.emplace(index, std::move(b));
  co_return it->second.data();
}

std::optional<std::uint64_t> DiskRefcounts::cached(std::uint64_t cluster) const {
  const std::uint64_t index = meta_.geo.reftable_index(cluster);
  if (index >= meta_.reftable.size()) return 0;
  const std::uint64_t offset = format::reftable_block_offset(meta_.reftable[index]);
  if (offset == 0) return 0;
  if (!meta_.geo.cluster_aligned(offset)) return std::nullopt;  // get() reports the error
  auto it = blocks_.find(index);
  if (it == blocks_.end()) return std::nullopt;
  return format::get_refcount(it->second.data(), meta_.geo.refcount_order(),
                              meta_.geo.refblock_index(cluster));
}

task<std::uint64_t> DiskRefcounts::get(std::uint64_t cluster) {
  if (auto v = cached(cluster)) co_return *v;
  auto b = co_await block_for(cluster);
  if (!b) co_return b.error();
  if (!*b) co_return std::uint64_t{0};
  co_return format::get_refcount(*b, meta_.geo.refcount_order(), meta_.geo.refblock_index(cluster));
}

task<> DiskRefcounts::set(std::uint64_t cluster, std::uint64_t value) {
  auto b = co_await block_for(cluster);
  if (!b) co_return b.error();
  if (!*b) co_return errno_error(EIO);  // callers only fix clusters that have a block
  const std::uint64_t index = meta_.geo.reftable_index(cluster);
  auto& block = blocks_.at(index);
  format::set_refcount(block.data(), meta_.geo.refcount_order(), meta_.geo.refblock_index(cluster),
                       value);
  // Write the whole entry's bytes: the smallest unit that contains it.
  const unsigned order = meta_.geo.refcount_order();
  const std::uint64_t i = meta_.geo.refblock_index(cluster);
  const std::uint64_t byte = order < 3 ? i >> (3 - order) : i << (order - 3);
  const std::uint64_t len = order < 3 ? 1 : 1ull << (order - 3);
  const std::uint64_t offset = format::reftable_block_offset(meta_.reftable[index]);
  co_return co_await file_.write_at(offset + byte,
                                    std::span<const std::byte>(block.data() + byte, len));
}

}  // namespace qnbd::qcow2::check
