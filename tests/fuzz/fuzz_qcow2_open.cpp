// libFuzzer target for the qcow2 engine on untrusted images: the input is a
// whole image file. It is opened (qcow2/engine/load.h over an in-memory
// io::MemoryFile, backing files resolved to an in-memory raw disk) read-only
// and read-write; then block status, reads, writes, write-zeroes, trim,
// flush and close run on it, and the image it leaves is opened again.
//
// Allowed: a clean open error (std::runtime_error) or an error result from
// any operation. Not allowed: a crash, a sanitizer report, another exception
// type, a hang, an unbounded allocation, or wrong data:
//  - a range block status reports as zero reads as zeros;
//  - a successful write reads back, and so do write-zeroes and trim;
//  - after a successful close the image opens again and still holds every
//    write that succeeded, whatever else failed (cluster_guard.h).
// FUZZ_OPEN_CONSISTENT_ONLY=1 (for soaking past a known bug) writes only to
// images whose refcounts `check` finds consistent (leaks allowed): an engine
// without overlap checks clobbers metadata on any image whose refcounts
// claim a used cluster is free, and every such input fails the same way.
#include "tests/fuzz/fuzz_check.h"
#include "common/run_sync.h"
#include "backend/raw_backend.h"
#include "io/memory_file.h"
#include "qcow2/check/check.h"
#include "qcow2/engine/load.h"
#include "tests/fuzz/limited_file.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <typeinfo>
#include <vector>

namespace {

using namespace qnbd;

// The image file never grows past this (see limited_file.h).
constexpr std::uint64_t kFileLimit = 64u << 20;
constexpr std::uint64_t kBackingSize = 1u << 20;
constexpr std::uint64_t kStatusSpan = 64u << 20;  // bytes of block status per pass
constexpr std::size_t kMaxExtentsRead = 16;
constexpr std::size_t kIo = 4096;

class MemoryBacking final : public qcow2::BackingResolver {
 public:
  boost::asio::awaitable<std::unique_ptr<BlockBackend>> open(const std::string&,
                                                             const std::string&) override {
    std::vector<std::byte> bytes(kBackingSize);
    for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = std::byte(0x40 + (i >> 9) % 64);
    auto f = std::make_unique<io::MemoryFile>(std::move(bytes), true);
    f->set_yield(false);
    co_return std::make_unique<RawBackend>(std::move(f));
  }
};

template <class T>
T run(boost::asio::io_context& ctx, boost::asio::awaitable<T> aw) {
  auto out = run_until_done(ctx, std::move(aw));
  FUZZ_CHECK(out.has_value());  // the event loop ran dry with the coroutine suspended
  return std::move(*out);
}

struct Opened {
  std::unique_ptr<qcow2::Image> image;
  fuzz::LimitedFile* file = nullptr;  // owned by image
};

Opened open(boost::asio::io_context& ctx, std::vector<std::byte> bytes, bool read_only) {
  auto file = std::make_unique<fuzz::LimitedFile>(std::move(bytes), kFileLimit);
  fuzz::LimitedFile* raw = file.get();
  qcow2::LoadOptions o;
  o.name = "fuzz.qcow2";
  o.read_only = read_only;
  o.l2_cache_size = 1u << 20;
  o.refcount_cache_size = 256u << 10;
  MemoryBacking backing;
  try {
    return {run(ctx, qcow2::load_image(std::move(file), o, &backing)), raw};
  } catch (const std::runtime_error&) {
    return {};  // a clean refusal
  } catch (const std::exception& e) {
    std::fprintf(stderr, "load_image threw %s: %s\n", typeid(e).name(), e.what());
    std::abort();
  }
}

bool all_zero(std::span<const std::byte> b) {
  return std::all_of(b.begin(), b.end(), [](std::byte x) { return x == std::byte{0}; });
}

std::vector<std::byte> pattern(std::size_t n, unsigned seed) {
  std::vector<std::byte> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = std::byte((i * 7 + seed * 13 + 1) & 0xff);
  return v;
}

// Block status over a window, then reads of the extents it reports; a zero
// extent must read as zeros.
void status_and_reads(boost::asio::io_context& ctx, qcow2::Image& img, std::uint64_t start) {
  const std::uint64_t size = img.size();
  if (start >= size) return;
  const std::uint64_t span = std::min(kStatusSpan, size - start);
  auto ext = run(ctx, img.block_status(start, span));
  if (!ext) return;
  FUZZ_CHECK(!ext->empty());
  std::uint64_t pos = start;
  std::size_t reads = 0;
  std::vector<std::byte> buf(kIo);
  for (const Extent& e : *ext) {
    FUZZ_CHECK(e.length > 0);
    FUZZ_CHECK(e.length <= start + span - pos);
    if (e.hole) FUZZ_CHECK(e.zero || img.header().backing_file.size());
    if (reads++ < kMaxExtentsRead) {
      const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(e.length, kIo));
      auto r = run(ctx, img.read(pos, std::span(buf).first(n)));
      if (r && e.zero) FUZZ_CHECK(all_zero(std::span(buf).first(n)));
    }
    pos += e.length;
  }
  auto runs = run(ctx, img.map_range(start, std::min<std::uint64_t>(span, 1u << 20)));
  (void)runs;
}

void read_pass(boost::asio::io_context& ctx, qcow2::Image& img) {
  const std::uint64_t size = img.size();
  status_and_reads(ctx, img, 0);
  if (size > kStatusSpan) status_and_reads(ctx, img, size - kStatusSpan);
  // Reads that cross cluster and L2 boundaries and the end of the disk.
  std::vector<std::byte> buf(3 * kIo);
  for (std::uint64_t off : {size / 2, size / 3, size > buf.size() ? size - buf.size() : 0}) {
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), size - off));
    (void)run(ctx, img.read(off, std::span(buf).first(n)));
  }
}

struct Written {
  std::uint64_t offset;
  std::vector<std::byte> data;  // expected contents
};

std::vector<Written> write_pass(boost::asio::io_context& ctx, qcow2::Image& img) {
  std::vector<Written> done;
  const std::uint64_t size = img.size();
  if (size < 4 * kIo) return done;
  // Disjoint ranges: a write at the start, one in the middle (crossing a
  // cluster boundary), write-zeroes and trim after them.
  const std::uint64_t mid = (size / 2) & ~std::uint64_t{511};
  const std::uint64_t z = (size / 4 * 3) & ~std::uint64_t{511};
  std::vector<Written> plan = {{0, pattern(kIo, 1)}, {mid + 1536, pattern(kIo, 2)}};
  std::vector<std::byte> check(kIo * 2);
  for (auto& w : plan) {
    auto r = run(ctx, img.write(w.offset, w.data, false));
    if (!r) continue;
    auto rr = run(ctx, img.read(w.offset, std::span(check).first(w.data.size())));
    if (!rr) continue;
    FUZZ_CHECK(std::equal(w.data.begin(), w.data.end(), check.begin()));
    done.push_back(std::move(w));
  }
  if (z >= mid + 1536 + kIo && z + 2 * kIo <= size) {
    auto r = run(ctx, img.write_zeroes(z, kIo, true, false, false));
    if (r) {
      auto rr = run(ctx, img.read(z, std::span(check).first(kIo)));
      if (rr) FUZZ_CHECK(all_zero(std::span(check).first(kIo)));
      if (rr) done.push_back({z, std::vector<std::byte>(kIo)});
    }
    // Trim promises nothing about the contents; it must just not break.
    (void)run(ctx, img.trim(z + kIo, kIo, false));
  }
  (void)run(ctx, img.flush());
  return done;
}

bool refcounts_consistent(boost::asio::io_context& ctx, const std::vector<std::byte>& bytes) {
  fuzz::LimitedFile f(bytes, kFileLimit, true);
  const auto r = run(ctx, qcow2::check::check_image(f, {}));
  return r.check_errors == 0 && r.corruptions == 0;
}

void fuzz_image(const std::uint8_t* data, std::size_t size) {
  boost::asio::io_context ctx;
  const std::vector<std::byte> bytes(reinterpret_cast<const std::byte*>(data),
                                     reinterpret_cast<const std::byte*>(data) + size);
  {
    Opened ro = open(ctx, bytes, true);
    if (!ro.image) return;
    read_pass(ctx, *ro.image);
    (void)run(ctx, ro.image->close());
  }
  Opened rw = open(ctx, bytes, false);
  FUZZ_CHECK(rw.image);               // a read-only open succeeded, so must this one
  if (rw.image->read_only()) return;  // dirty or corrupt: served read-only
  static const bool consistent_only = std::getenv("FUZZ_OPEN_CONSISTENT_ONLY") != nullptr;
  if (consistent_only && !refcounts_consistent(ctx, bytes)) return;
  const auto written = write_pass(ctx, *rw.image);
  read_pass(ctx, *rw.image);
  auto closed = run(ctx, rw.image->close());
  if (!closed) return;
  // Refused operations (corrupt image, file size limit) promise nothing
  // about their own ranges, but every acknowledged write must persist.
  // The image must open again with every acknowledged write in it.
  if (const char* dump = std::getenv("FUZZ_DUMP_WRITTEN")) {  // for reproducers
    if (FILE* f = std::fopen(dump, "wb")) {
      std::fwrite(rw.file->contents().data(), 1, rw.file->contents().size(), f);
      std::fclose(f);
    }
  }
  Opened again = open(ctx, rw.file->contents(), true);
  FUZZ_CHECK(again.image);
  std::vector<std::byte> check(kIo);
  for (const auto& w : written) {
    auto r = run(ctx, again.image->read(w.offset, std::span(check).first(w.data.size())));
    FUZZ_CHECK(r);
    if (!std::equal(w.data.begin(), w.data.end(), check.begin()))
      std::fprintf(stderr, "written range at %llu of %zu bytes reads back differently\n",
                   static_cast<unsigned long long>(w.offset), w.data.size());
    FUZZ_CHECK(std::equal(w.data.begin(), w.data.end(), check.begin()));
  }
  (void)run(ctx, again.image->close());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  spdlog::set_level(spdlog::level::off);  // refusals are expected; keep the output readable
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz_image(data, size);
  return 0;
}
