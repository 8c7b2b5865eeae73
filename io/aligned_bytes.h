// Memory that O_DIRECT can transfer to and from without the file layer's
// bounce buffer: 4096-aligned (the largest logical block size we meet), and
// not zeroed, because the I/O that fills it writes every byte.
#pragma once

#include <algorithm>
#include <cstddef>
#include <memory>
#include <new>
#include <span>

namespace qnbd::io {

inline constexpr std::size_t kDirectAlign = 4096;

struct AlignedDelete {
  void operator()(std::byte* p) const { ::operator delete[](p, std::align_val_t(kDirectAlign)); }
};

class AlignedBytes {
 public:
  AlignedBytes() = default;
  explicit AlignedBytes(std::size_t n)
      : p_(static_cast<std::byte*>(
            ::operator new[](std::max<std::size_t>(n, 1), std::align_val_t(kDirectAlign)))),
        size_(n) {}
  std::byte* data() const { return p_.get(); }
  std::size_t size() const { return size_; }
  std::span<std::byte> span() const { return {p_.get(), size_}; }

 private:
  std::unique_ptr<std::byte[], AlignedDelete> p_;
  std::size_t size_ = 0;
};

}  // namespace qnbd::io
