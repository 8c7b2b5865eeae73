// The request path's recycled memory: coroutine frames (common/frame_pool,
// reached through Asio's allocator) and copy-on-write fill buffers
// (io::BufferCache). bench/request_cost counts what they save.
#include "common/frame_pool.h"
#include "io/buffer_cache.h"

#include <boost/asio/detail/thread_info_base.hpp>
#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <thread>

namespace {

using boost::asio::detail::thread_info_base;
namespace frame_pool = qnbd::frame_pool;

TEST_CASE("frame pool: a released block comes back for a frame of its size class") {
  void* a = frame_pool::allocate(300);
  std::memset(a, 0xab, 300);
  frame_pool::release(a, 300);
  void* b = frame_pool::allocate(260);  // same 64-byte class as 300
  CHECK(b == a);
  std::memset(b, 0xcd, 260);
  void* c = frame_pool::allocate(300);  // the list is empty again
  CHECK(c != a);
  frame_pool::release(b, 260);
  frame_pool::release(c, 300);
}

TEST_CASE("frame pool: blocks of another class are not handed out") {
  void* big = frame_pool::allocate(3000);
  frame_pool::release(big, 3000);
  void* small = frame_pool::allocate(100);
  CHECK(small != big);
  CHECK(reinterpret_cast<std::uintptr_t>(small) % alignof(std::max_align_t) == 0);
  frame_pool::release(small, 100);
  CHECK(frame_pool::allocate(3000) == big);
  frame_pool::release(big, 3000);
}

TEST_CASE("frame pool: frames larger than Asio's recycler keeps go through the pool") {
  // Asio 1.81 never recycled frames over 1,020 bytes; the specialization in
  // common/asio_patch sends every awaitable frame to frame_pool.
  void* f = thread_info_base::allocate(thread_info_base::awaitable_frame_tag(), nullptr, 2000);
  thread_info_base::deallocate(thread_info_base::awaitable_frame_tag(), nullptr, f, 2000);
  void* again = frame_pool::allocate(2000);
  CHECK(again == f);
  frame_pool::release(again, 2000);
}

TEST_CASE("frame pool: huge blocks, and blocks freed by another thread") {
  void* huge = frame_pool::allocate(1 << 20);
  std::memset(huge, 0, 1 << 20);
  frame_pool::release(huge, 1 << 20);
  void* moved = frame_pool::allocate(500);
  // Kept by the other thread, for its own frames, until it exits, then
  // freed (LeakSanitizer would report it otherwise).
  void* reused = nullptr;
  std::thread([moved, &reused] {
    frame_pool::release(moved, 500);
    reused = frame_pool::allocate(500);
    frame_pool::release(reused, 500);
  }).join();
  CHECK(reused == moved);
}

TEST_CASE("buffer cache: fill buffers are reused, aligned, at least the floor") {
  qnbd::io::BufferCache cache(65536);
  std::byte* first = nullptr;
  {
    auto lease = cache.take(4096);
    CHECK(lease.span().size() == 4096);
    first = lease.span().data();
    CHECK(reinterpret_cast<std::uintptr_t>(first) % qnbd::io::kDirectAlign == 0);
    std::memset(first, 1, 65536);  // the floor: the whole block is there
  }
  {
    auto lease = cache.take(60000);
    CHECK(lease.span().data() == first);
    CHECK(lease.span().size() == 60000);
    auto other = cache.take(4096);  // the kept one is on loan
    CHECK(other.span().data() != first);
  }
  auto large = cache.take(200000);  // over the floor: a new buffer
  CHECK(large.span().data() != first);
  CHECK(large.span().size() == 200000);
  std::memset(large.span().data(), 2, 200000);
}

TEST_CASE("buffer cache: a moved lease goes back once") {
  qnbd::io::BufferCache cache(4096);
  std::byte* p = nullptr;
  {
    auto a = cache.take(4096);
    p = a.span().data();
    auto b = std::move(a);
    CHECK(b.span().data() == p);
  }
  auto c = cache.take(4096);
  auto d = cache.take(4096);
  CHECK(c.span().data() == p);
  CHECK(d.span().data() != p);
}

}  // namespace
