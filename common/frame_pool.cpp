#include "common/frame_pool.h"

#include <boost/asio/detail/thread_info_base.hpp>

#include <cassert>
#include <cstdlib>
#include <new>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define QNBD_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define QNBD_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define QNBD_POISON(p, n) ((void)(p), (void)(n))
#define QNBD_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

namespace qnbd::frame_pool {
namespace {

// Frame sizes are fixed per coroutine function, a few hundred bytes to a few
// KiB; 64-byte classes waste little of them.
constexpr std::size_t kGranule = 64;
// Larger frames (none on the request path) go to malloc and back.
constexpr std::size_t kLargest = 16384;
constexpr std::size_t kClasses = kLargest / kGranule;
// What a thread keeps at most; beyond it, freed blocks go back to malloc.
// The frames of a few hundred requests in flight fit.
constexpr std::size_t kBytesKept = std::size_t{1} << 20;

struct Block {
  Block* next;
};

std::size_t size_class(std::size_t size) { return (size + kGranule - 1) / kGranule - 1; }
std::size_t class_bytes(std::size_t c) { return (c + 1) * kGranule; }

struct Lists {
  Block* head[kClasses] = {};
  std::size_t bytes = 0;
  ~Lists();
};

thread_local Lists lists;
// Set when the thread's lists are gone, for frames freed later in its exit;
// trivially destructible, so it outlives `lists`.
thread_local bool lists_gone = false;

Lists::~Lists() {
  for (std::size_t c = 0; c < kClasses; ++c) {
    while (Block* b = head[c]) {
      QNBD_UNPOISON(b, class_bytes(c));
      head[c] = b->next;
      std::free(b);
    }
  }
  lists_gone = true;
}

void* checked(void* p) {
  if (!p) throw std::bad_alloc();
  return p;
}

}  // namespace

void* allocate(std::size_t size) {
  if (size > kLargest) return checked(std::malloc(size));
  const std::size_t c = size_class(size);
  if (!lists_gone) {
    if (Block* b = lists.head[c]) {
      QNBD_UNPOISON(b, class_bytes(c));
      lists.head[c] = b->next;
      lists.bytes -= class_bytes(c);
      return b;
    }
  }
  // A whole class, whatever `size`: the block may end up on any list of its class.
  return checked(std::malloc(class_bytes(c)));
}

void release(void* block, std::size_t size) noexcept {
  if (size <= kLargest && !lists_gone) {
    const std::size_t c = size_class(size);
    if (lists.bytes + class_bytes(c) <= kBytesKept) {
      Block* b = static_cast<Block*>(block);
      b->next = lists.head[c];
      lists.head[c] = b;
      lists.bytes += class_bytes(c);
      QNBD_POISON(reinterpret_cast<char*>(b) + sizeof(Block), class_bytes(c) - sizeof(Block));
      return;
    }
  }
  std::free(block);
}

}  // namespace qnbd::frame_pool

namespace boost::asio::detail {

template <>
void* thread_info_base::allocate(thread_info_base::awaitable_frame_tag, thread_info_base*,
                                 std::size_t size, std::size_t align) {
  // Frames ask for BOOST_ASIO_DEFAULT_ALIGN, which malloc gives.
  assert(align <= alignof(std::max_align_t));
  (void)align;
  return qnbd::frame_pool::allocate(size);
}

template <>
void thread_info_base::deallocate(thread_info_base::awaitable_frame_tag, thread_info_base*,
                                  void* pointer, std::size_t size) {
  qnbd::frame_pool::release(pointer, size);
}

}  // namespace boost::asio::detail
