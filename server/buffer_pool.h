// Payload buffers for one connection, recycled so the request path does no
// heap allocation in steady state. Buffers are 4 KiB aligned (usable with
// O_DIRECT) and never zero-filled: every byte is overwritten by a socket
// read or a backend read before it is sent anywhere.
#pragma once

#include "io/aligned_bytes.h"

#include <array>
#include <cstddef>
#include <memory>
#include <new>
#include <span>
#include <vector>

namespace qnbd::server {

using io::AlignedDelete;

class Buffer {
 public:
  Buffer() = default;
  Buffer(std::unique_ptr<std::byte[], AlignedDelete> mem, std::size_t capacity, std::size_t size)
      : mem_(std::move(mem)), capacity_(capacity), size_(size) {}
  std::byte* data() { return mem_.get(); }
  const std::byte* data() const { return mem_.get(); }
  std::size_t size() const { return size_; }
  std::size_t capacity() const { return capacity_; }
  bool empty() const { return size_ == 0; }
  std::span<std::byte> span() { return {mem_.get(), size_}; }
  std::span<const std::byte> span() const { return {mem_.get(), size_}; }
  operator std::span<std::byte>() { return span(); }
  operator std::span<const std::byte>() const { return span(); }
  // Grows within capacity only (for small, bounded appends).
  void resize(std::size_t n) { size_ = n <= capacity_ ? n : capacity_; }

 private:
  std::unique_ptr<std::byte[], AlignedDelete> mem_;
  std::size_t capacity_ = 0;
  std::size_t size_ = 0;
};

class BufferPool {
 public:
  // A buffer of exactly `size` bytes (capacity rounded up to a power of two).
  Buffer acquire(std::size_t size);
  void release(Buffer&& b);

 private:
  static constexpr std::size_t kMinShift = 12;  // 4 KiB
  static constexpr std::size_t kClasses = 14;   // up to 32 MiB
  // Enough for every request in flight at the default limit (SessionLimits).
  static constexpr std::size_t kPerClass = 128;
  static constexpr std::size_t kMaxPooledBytes = 96u << 20;
  std::array<std::vector<Buffer>, kClasses> free_;
  std::size_t pooled_bytes_ = 0;
};

}  // namespace qnbd::server
