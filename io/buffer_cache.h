// Aligned buffers kept for reuse by one thread's requests, so that a buffer
// taken per request (the copy-on-write fill of an allocating write) is a
// malloc only until the first few requests have run.
#pragma once

#include "io/aligned_bytes.h"

#include <algorithm>
#include <cstddef>
#include <span>
#include <utility>
#include <vector>

namespace qnbd::io {

class BufferCache {
 public:
  // Buffers are allocated at `floor` bytes at least, so that every kept one
  // serves the common request (the fill of one cluster: pass its size).
  explicit BufferCache(std::size_t floor) : floor_(floor) { kept_.reserve(kKeep); }
  BufferCache(const BufferCache&) = delete;
  BufferCache& operator=(const BufferCache&) = delete;

  // A buffer on loan: back to its cache when destroyed. The cache must
  // outlive it and belong to the destroying thread.
  class Lease {
   public:
    Lease() = default;
    Lease(Lease&&) noexcept = default;
    Lease& operator=(Lease&&) noexcept = default;
    ~Lease() {
      if (cache_) cache_->give(std::move(bytes_));
    }
    std::span<std::byte> span() const { return bytes_.span().first(size_); }

   private:
    friend class BufferCache;
    Lease(BufferCache* cache, AlignedBytes bytes, std::size_t size)
        : cache_(cache), bytes_(std::move(bytes)), size_(size) {}
    BufferCache* cache_ = nullptr;
    AlignedBytes bytes_;
    std::size_t size_ = 0;
  };

  // `n` bytes, not zeroed.
  Lease take(std::size_t n) {
    for (auto it = kept_.begin(); it != kept_.end(); ++it) {
      if (it->size() >= n) {
        AlignedBytes b = std::move(*it);
        *it = std::move(kept_.back());
        kept_.pop_back();
        kept_bytes_ -= b.size();
        return Lease(this, std::move(b), n);
      }
    }
    return Lease(this, AlignedBytes(std::max(n, floor_)), n);
  }

 private:
  // At most this many, and this many bytes (one buffer at least): the
  // fills of a client at QD32 on 64 KiB clusters (with 8, one COW write
  // in six at QD32 allocated one).
  static constexpr std::size_t kKeep = 32;
  static constexpr std::size_t kKeepBytes = std::size_t{2} << 20;

  void give(AlignedBytes b) {
    if (!b.data() || kept_.size() == kKeep) return;
    if (!kept_.empty() && kept_bytes_ + b.size() > kKeepBytes) return;
    kept_bytes_ += b.size();
    kept_.push_back(std::move(b));
  }

  std::size_t floor_;
  std::vector<AlignedBytes> kept_;
  std::size_t kept_bytes_ = 0;
};

}  // namespace qnbd::io
