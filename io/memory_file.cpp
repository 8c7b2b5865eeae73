#include "io/memory_file.h"

#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <cstring>

namespace qnbd::io {

MemoryFile::MemoryFile(std::vector<std::byte> initial, bool read_only)
    : data_(std::move(initial)), durable_(data_), read_only_(read_only) {}

std::optional<int> MemoryFile::take_fault(Op op) {
  for (auto it = faults_.begin(); it != faults_.end(); ++it) {
    if (it->op != op && it->op != Op::Any) continue;
    if (it->skip) {
      --it->skip;
      return std::nullopt;
    }
    const int e = it->error;
    if (--it->count == 0) faults_.erase(it);
    return e;
  }
  return std::nullopt;
}

boost::asio::awaitable<void> MemoryFile::maybe_yield() {
  if (yield_)
    co_await boost::asio::post(co_await boost::asio::this_coro::executor,
                               boost::asio::use_awaitable);
}

void MemoryFile::apply(std::vector<std::byte>& image, const Pending& p) const {
  if (p.new_size) {
    image.resize(*p.new_size);
    return;
  }
  if (image.size() < p.offset + p.bytes.size()) image.resize(p.offset + p.bytes.size());
  std::copy(p.bytes.begin(), p.bytes.end(), image.begin() + static_cast<std::ptrdiff_t>(p.offset));
}

void MemoryFile::record(Pending p) {
  apply(data_, p);
  pending_.push_back(std::move(p));
}

bool MemoryFile::aligned(std::uint64_t offset, std::span<const iovec> iov) const {
  const std::uint64_t a = alignment_;
  if (a == 1) return true;
  if (offset % a) return false;
  for (const auto& v : iov)
    if (reinterpret_cast<std::uintptr_t>(v.iov_base) % a || v.iov_len % a) return false;
  return true;
}

// As UringFile's bounce buffer: the write covers the whole blocks it
// touches, the bytes around it as they were (zeros past the end).
void MemoryFile::widen_to_blocks(Pending& p) const {
  const std::uint64_t a = alignment_;
  const std::uint64_t start = p.offset / a * a;
  const std::uint64_t end = (p.offset + p.bytes.size() + a - 1) / a * a;
  std::vector<std::byte> blocks(end - start);
  if (start < data_.size())
    std::copy_n(data_.begin() + static_cast<std::ptrdiff_t>(start),
                std::min<std::uint64_t>(end, data_.size()) - start, blocks.begin());
  std::copy(p.bytes.begin(), p.bytes.end(),
            blocks.begin() + static_cast<std::ptrdiff_t>(p.offset - start));
  p.offset = start;
  p.bytes = std::move(blocks);
}

task<> MemoryFile::readv_at(std::uint64_t offset, std::span<const iovec> iov) {
  co_await maybe_yield();
  ++stats_.reads;
  if (auto e = take_fault(Op::Read)) co_return errno_error(*e);
  if (!aligned(offset, iov)) {
    ++stats_.unaligned;
    if (unaligned_ == Unaligned::Reject) co_return errno_error(EINVAL);
  }
  for (const auto& v : iov) {
    auto* out = static_cast<std::byte*>(v.iov_base);
    std::size_t n = 0;
    if (offset < data_.size() && v.iov_len) {
      n = std::min<std::size_t>(v.iov_len, data_.size() - offset);
      std::memcpy(out, data_.data() + offset, n);
    }
    if (v.iov_len > n) std::memset(out + n, 0, v.iov_len - n);  // past EOF reads zeros
    offset += v.iov_len;
    stats_.bytes_read += v.iov_len;
  }
  co_return result<>{};
}

task<> MemoryFile::writev_at(std::uint64_t offset, std::span<const iovec> iov) {
  if (read_only_) co_return make_error_code(errc::read_only);
  co_await maybe_yield();
  ++stats_.writes;
  Pending p{offset, {}, std::nullopt};
  for (const auto& v : iov) {
    auto* in = static_cast<const std::byte*>(v.iov_base);
    p.bytes.insert(p.bytes.end(), in, in + v.iov_len);
  }
  if (!aligned(offset, iov)) {
    ++stats_.unaligned;
    if (unaligned_ == Unaligned::Reject) co_return errno_error(EINVAL);
    widen_to_blocks(p);
  }
  const bool torn = !faults_.empty() && std::any_of(faults_.begin(), faults_.end(), [](auto& f) {
    return (f.op == Op::Write || f.op == Op::Any) && f.skip == 0 && f.short_write;
  });
  if (auto e = take_fault(Op::Write)) {
    if (torn) {
      p.bytes.resize(p.bytes.size() / 2);
      record(std::move(p));
    }
    co_return errno_error(*e);
  }
  if (limit_ && p.offset + p.bytes.size() > *limit_) {
    p.bytes.resize(p.offset < *limit_ ? *limit_ - p.offset : 0);
    if (!p.bytes.empty()) record(std::move(p));
    co_return errno_error(ENOSPC);
  }
  stats_.bytes_written += p.bytes.size();
  record(std::move(p));
  co_return result<>{};
}

task<> MemoryFile::sync() {
  co_await maybe_yield();
  ++stats_.syncs;
  if (auto e = take_fault(Op::Sync)) co_return errno_error(*e);
  for (const auto& p : pending_) apply(durable_, p);
  pending_.clear();
  co_return result<>{};
}

task<> MemoryFile::fill(std::uint64_t offset, std::uint64_t length, Op op) {
  if (read_only_) co_return make_error_code(errc::read_only);
  co_await maybe_yield();
  ++stats_.discards;
  if (auto e = take_fault(op)) co_return errno_error(*e);
  if (length) record({offset, std::vector<std::byte>(length), std::nullopt});
  co_return result<>{};
}

task<> MemoryFile::punch_hole(std::uint64_t offset, std::uint64_t length) {
  // KEEP_SIZE: never grows the file.
  const std::uint64_t size = data_.size();
  if (offset >= size) co_return result<>{};
  co_return co_await fill(offset, std::min(length, size - offset), Op::Discard);
}

task<> MemoryFile::zero_range(std::uint64_t offset, std::uint64_t length) {
  co_return co_await fill(offset, length, Op::Discard);
}

task<> MemoryFile::allocate(std::uint64_t offset, std::uint64_t length) {
  if (read_only_) co_return make_error_code(errc::read_only);
  if (limit_ && offset + length > *limit_) co_return errno_error(ENOSPC);  // as fallocate
  if (offset + length > data_.size()) record({0, {}, offset + length});
  co_return result<>{};
}

result<> MemoryFile::truncate(std::uint64_t size) {
  if (read_only_) return make_error_code(errc::read_only);
  record({0, {}, size});
  return {};
}

result<std::uint64_t> MemoryFile::seek_data(std::uint64_t offset) const {
  if (offset >= data_.size()) return errno_error(ENXIO);
  return offset;
}

result<std::uint64_t> MemoryFile::seek_hole(std::uint64_t offset) const {
  if (offset >= data_.size()) return errno_error(ENXIO);
  return data_.size();
}

void MemoryFile::crash(double keep, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::bernoulli_distribution take(keep);
  for (const auto& p : pending_)
    if (keep > 0 && take(rng)) apply(durable_, p);
  pending_.clear();
  data_ = durable_;
}

}  // namespace qnbd::io
