#include "server/buffer_pool.h"

#include <bit>

namespace qnbd::server {
namespace {

std::size_t class_of(std::size_t capacity, std::size_t min_shift) {
  return static_cast<std::size_t>(std::bit_width(capacity - 1)) - min_shift;
}

}  // namespace

Buffer BufferPool::acquire(std::size_t size) {
  std::size_t cap = std::bit_ceil(std::max<std::size_t>(size, std::size_t{1} << kMinShift));
  std::size_t c = class_of(cap, kMinShift);
  if (c < kClasses && !free_[c].empty()) {
    Buffer b = std::move(free_[c].back());
    free_[c].pop_back();
    pooled_bytes_ -= b.capacity();
    b.resize(size);
    return b;
  }
  std::unique_ptr<std::byte[], AlignedDelete> mem(
      static_cast<std::byte*>(::operator new[](cap, std::align_val_t(io::kDirectAlign))));
  return Buffer(std::move(mem), cap, size);
}

void BufferPool::release(Buffer&& b) {
  if (b.capacity() == 0) return;
  std::size_t c = class_of(b.capacity(), kMinShift);
  if (c >= kClasses || free_[c].size() >= kPerClass ||
      pooled_bytes_ + b.capacity() > kMaxPooledBytes)
    return;  // dropped: freed by the destructor
  pooled_bytes_ += b.capacity();
  free_[c].push_back(std::move(b));
}

}  // namespace qnbd::server
