// Boost 1.81's per-thread recycling allocator, with coroutine frames taken
// out of it and given to common/frame_pool. This directory is on the include
// path ahead of the system's (meson.build), so every Asio header that includes
// thread_info_base.hpp gets this file, which includes the original and then
// declares the two specializations every awaitable frame's operator new and
// delete call (boost/asio/impl/awaitable.hpp).
//
// Why: Asio keeps at most BOOST_ASIO_RECYCLING_ALLOCATOR_CACHE_SIZE frames per
// thread, records a frame's size in one byte of 4-byte chunks so it never
// keeps one over 1,020 bytes, and on a miss frees a cached frame of another
// size. The general write path's chain of a dozen frames, several over
// 1 KiB, went to malloc every request (bench/request_cost: ~10 allocations
// per allocating write).
#pragma once

#include_next <boost/asio/detail/thread_info_base.hpp>

namespace boost::asio::detail {

template <>
void* thread_info_base::allocate(thread_info_base::awaitable_frame_tag, thread_info_base*,
                                 std::size_t size, std::size_t align);

template <>
void thread_info_base::deallocate(thread_info_base::awaitable_frame_tag, thread_info_base*,
                                  void* pointer, std::size_t size);

}  // namespace boost::asio::detail
