// An io::MemoryFile standing in for a file on a small filesystem: it never
// grows past a limit, whether by write (ENOSPC), allocate (ENOSPC) or
// truncate (EFBIG). A real file would grow sparsely; a vector cannot, so
// without this an image pointing at far-away clusters would make the fuzzer
// ask for terabytes of RAM instead of exercising the out-of-space path.
#pragma once

#include "io/memory_file.h"

#include <cerrno>
#include <memory>
#include <vector>

namespace qnbd::fuzz {

class LimitedFile final : public io::File {
 public:
  LimitedFile(std::vector<std::byte> bytes, std::uint64_t limit, bool read_only = false)
      : mem_(std::move(bytes), read_only), limit_(limit) {
    mem_.set_yield(false);
    mem_.set_size_limit(limit);
  }

  const std::vector<std::byte>& contents() const { return mem_.contents(); }

  task<> readv_at(std::uint64_t offset, std::span<const iovec> iov) override {
    co_return co_await mem_.readv_at(offset, iov);
  }
  task<> writev_at(std::uint64_t offset, std::span<const iovec> iov) override {
    co_return co_await mem_.writev_at(offset, iov);
  }
  task<> sync() override { co_return co_await mem_.sync(); }
  task<> punch_hole(std::uint64_t offset, std::uint64_t length) override {
    co_return co_await mem_.punch_hole(offset, length);
  }
  task<> zero_range(std::uint64_t offset, std::uint64_t length) override {
    if (beyond(offset, length)) co_return errno_error(ENOSPC);
    co_return co_await mem_.zero_range(offset, length);
  }
  task<> allocate(std::uint64_t offset, std::uint64_t length) override {
    if (beyond(offset, length)) co_return errno_error(ENOSPC);
    co_return co_await mem_.allocate(offset, length);
  }
  result<> truncate(std::uint64_t size) override {
    if (size > limit_) return errno_error(EFBIG);
    return mem_.truncate(size);
  }
  result<std::uint64_t> size() const override { return mem_.size(); }
  result<std::uint64_t> seek_data(std::uint64_t offset) const override {
    return mem_.seek_data(offset);
  }
  result<std::uint64_t> seek_hole(std::uint64_t offset) const override {
    return mem_.seek_hole(offset);
  }
  bool read_only() const override { return mem_.read_only(); }

 private:
  bool beyond(std::uint64_t offset, std::uint64_t length) const {
    return offset > limit_ || length > limit_ - offset;
  }
  io::MemoryFile mem_;
  std::uint64_t limit_;
};

}  // namespace qnbd::fuzz
