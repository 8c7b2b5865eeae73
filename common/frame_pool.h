// Memory for coroutine frames and other short-lived blocks of the request
// path: per-thread free lists by size class, so that they come back from a
// list instead of malloc once the first requests have run, whatever their
// size. Every awaitable frame comes here (common/asio_patch/boost/asio/
// detail/thread_info_base.hpp), io::Ring's operations and the state
// run_parallel shares with its tasks.
#pragma once

#include <cstddef>

namespace qnbd::frame_pool {

// A block of at least `size` bytes, aligned for any scalar type. Throws
// std::bad_alloc, as operator new does.
void* allocate(std::size_t size);

// Takes back a block allocate(size) gave, with the same size, on any thread.
void release(void* block, std::size_t size) noexcept;

// The same blocks for the standard library (std::allocate_shared): state
// shared by the tasks of one request.
template <class T>
struct Allocator {
  using value_type = T;
  Allocator() = default;
  template <class U>
  Allocator(const Allocator<U>&) noexcept {}
  T* allocate(std::size_t n) { return static_cast<T*>(frame_pool::allocate(n * sizeof(T))); }
  void deallocate(T* p, std::size_t n) noexcept { frame_pool::release(p, n * sizeof(T)); }
  friend bool operator==(const Allocator&, const Allocator&) { return true; }
};

}  // namespace qnbd::frame_pool
