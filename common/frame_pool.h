// Memory for coroutine frames and other short-lived blocks of the request
// path: per-thread free lists by size class, so that they come back from a
// list instead of malloc once the first requests have run, whatever their
// size. Every awaitable frame comes here (common/asio_patch/boost/asio/
// detail/thread_info_base.hpp), and io::Ring's operations.
#pragma once

#include <cstddef>

namespace qnbd::frame_pool {

// A block of at least `size` bytes, aligned for any scalar type. Throws
// std::bad_alloc, as operator new does.
void* allocate(std::size_t size);

// Takes back a block allocate(size) gave, with the same size, on any thread.
void release(void* block, std::size_t size) noexcept;

}  // namespace qnbd::frame_pool
