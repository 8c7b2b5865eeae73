// The io::File contract (io/file.h), one suite run over every
// implementation: MemoryFile plain and in alignment mode, UringFile buffered
// and O_DIRECT (--cache none). What passes here for one passes for all, so an
// engine test over MemoryFile says something about the real file.
#include "common/run_sync.h"
#include "io/aligned_bytes.h"
#include "io/memory_file.h"
#include "io/uring.h"
#include "io/uring_file.h"
#include "tests/lib/temp_dir.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>

#include <doctest/doctest.h>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

using namespace qnbd;

namespace {

constexpr std::uint32_t kBlock = 512;  // UringFile's O_DIRECT alignment

std::vector<std::byte> pattern(std::size_t n, unsigned seed) {
  std::vector<std::byte> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = std::byte(static_cast<unsigned char>(i * 7 + seed));
  return v;
}

// True if O_DIRECT on `dir`'s file system is real: the open succeeds and a
// misaligned write is refused (tmpfs either refuses O_DIRECT or ignores it).
bool direct_enforced(const std::filesystem::path& dir) {
  const std::string path = (dir / "probe").string();
  const int fd = ::open(path.c_str(), O_CREAT | O_RDWR | O_DIRECT | O_CLOEXEC, 0644);
  if (fd < 0) return false;
  const io::AlignedBytes buf(kBlock);
  std::memset(buf.data(), 0, kBlock);
  const bool refused = ::pwrite(fd, buf.data(), kBlock, 1) < 0 && errno == EINVAL;
  ::close(fd);
  ::unlink(path.c_str());
  return refused;
}

// A scratch directory where O_DIRECT works as on a disk: $TMPDIR's, else one
// under the build directory. Fails the test (never skips) if neither does.
std::unique_ptr<test::TempDir> direct_scratch() {
  auto dir = std::make_unique<test::TempDir>("qnbd-file");
  if (direct_enforced(dir->path())) return dir;
  const char* build = std::getenv("QNBD_BUILD_ROOT");
  REQUIRE_MESSAGE(build, "$TMPDIR does not take O_DIRECT and QNBD_BUILD_ROOT is unset");
  dir = std::make_unique<test::TempDir>("qnbd-file", build);
  REQUIRE_MESSAGE(direct_enforced(dir->path()), "no scratch directory takes O_DIRECT");
  return dir;
}

// What a file under test runs on.
struct Env {
  boost::asio::io_context ctx;
  io::Ring ring{ctx};
  std::unique_ptr<test::TempDir> dir = direct_scratch();
  int files = 0;

  template <class T>
  T run(boost::asio::awaitable<T> aw) {
    auto out = run_until_done(ctx, std::move(aw));
    REQUIRE(out);
    return std::move(*out);
  }
  void ok(task<> t) {
    const auto r = run(std::move(t));
    REQUIRE_MESSAGE(r.has_value(), r.error().message());
  }
  std::unique_ptr<io::File> uring(const std::vector<std::byte>& initial, bool read_only,
                                  bool direct) {
    const std::string path =
        dir->write("f" + std::to_string(files++),
                   std::string(reinterpret_cast<const char*>(initial.data()), initial.size()));
    auto f = io::UringFile::open(ring, path, {.read_only = read_only, .direct = direct});
    REQUIRE(f.has_value());
    return std::move(*f);
  }
};

// The implementations under test: each makes a file holding `initial`.
struct MemoryPlain {
  static constexpr std::uint32_t alignment = 1;
  static std::unique_ptr<io::File> make(Env&, std::vector<std::byte> initial, bool ro = false) {
    return std::make_unique<io::MemoryFile>(std::move(initial), ro);
  }
};
struct MemoryAligned {
  static constexpr std::uint32_t alignment = kBlock;
  static std::unique_ptr<io::File> make(Env&, std::vector<std::byte> initial, bool ro = false) {
    auto f = std::make_unique<io::MemoryFile>(std::move(initial), ro);
    f->set_alignment(kBlock);
    return f;
  }
};
struct UringBuffered {
  static constexpr std::uint32_t alignment = 1;
  static std::unique_ptr<io::File> make(Env& env, std::vector<std::byte> initial, bool ro = false) {
    return env.uring(initial, ro, false);
  }
};
struct UringDirect {
  static constexpr std::uint32_t alignment = kBlock;
  static std::unique_ptr<io::File> make(Env& env, std::vector<std::byte> initial, bool ro = false) {
    return env.uring(initial, ro, true);
  }
};

#define FILE_KINDS MemoryPlain, MemoryAligned, UringBuffered, UringDirect

std::vector<std::byte> read_all(Env& env, io::File& f, std::size_t n) {
  std::vector<std::byte> got(n);
  env.ok(f.read_at(0, got));
  return got;
}

std::uint64_t size_of(io::File& f) {
  auto s = f.size();
  REQUIRE(s.has_value());
  return *s;
}

}  // namespace

TYPE_TO_STRING(MemoryPlain);
TYPE_TO_STRING(MemoryAligned);
TYPE_TO_STRING(UringBuffered);
TYPE_TO_STRING(UringDirect);

TEST_CASE_TEMPLATE("io::File contract: writes read back at any offset, whole or scattered", Kind,
                   FILE_KINDS) {
  Env env;
  auto model = pattern(64 << 10, 1);
  auto f = Kind::make(env, model);
  CHECK(f->alignment() == Kind::alignment);
  CHECK_FALSE(f->read_only());

  // Aligned memory, offsets and lengths: the O_DIRECT path proper.
  const io::AlignedBytes src(8192);
  const auto p = pattern(8192, 9);
  std::copy(p.begin(), p.end(), src.data());
  const iovec aligned[] = {{src.data(), 4096}, {src.data() + 4096, 512}, {src.data() + 4608, 3584}};
  env.ok(f->writev_at(4096, aligned));
  std::copy(p.begin(), p.end(), model.begin() + 4096);

  // Odd memory, offset and lengths: bounced under O_DIRECT.
  const iovec odd[] = {{src.data() + 1, 100}, {src.data() + 333, 3000}};
  env.ok(f->writev_at(10001, odd));
  std::copy_n(p.begin() + 1, 100, model.begin() + 10001);
  std::copy_n(p.begin() + 333, 3000, model.begin() + 10101);

  // Past the end: the file grows (to a block boundary when bounced).
  const auto tail = pattern(300, 5);
  env.ok(f->write_at(model.size() - 100, tail));
  model.resize(model.size() + 200);
  std::copy(tail.begin(), tail.end(), model.end() - 300);
  const std::uint64_t size = size_of(*f);
  CHECK(size == (model.size() + Kind::alignment - 1) / Kind::alignment * Kind::alignment);

  auto got = read_all(env, *f, size);
  CHECK(std::equal(model.begin(), model.end(), got.begin()));
  CHECK(
      std::all_of(got.begin() + model.size(), got.end(), [](auto b) { return b == std::byte{}; }));

  // Scattered reads of unaligned pieces see the same bytes.
  std::vector<std::byte> a(777), b(5), c(4000);
  const iovec pieces[] = {{a.data(), a.size()}, {b.data(), b.size()}, {c.data(), c.size()}};
  env.ok(f->readv_at(9999, pieces));
  CHECK(std::equal(a.begin(), a.end(), model.begin() + 9999));
  CHECK(std::equal(b.begin(), b.end(), model.begin() + 9999 + 777));
  CHECK(std::equal(c.begin(), c.end(), model.begin() + 9999 + 782));
}

TEST_CASE_TEMPLATE("io::File contract: bytes past the end of the file read as zeros", Kind,
                   FILE_KINDS) {
  Env env;
  const auto data = pattern(5000, 3);  // ends inside a block
  auto f = Kind::make(env, data);
  CHECK(size_of(*f) == 5000);
  const io::AlignedBytes buf(8192);
  std::memset(buf.data(), 0xff, buf.size());
  env.ok(f->read_at(0, buf.span()));  // aligned, across the end
  CHECK(std::equal(data.begin(), data.end(), buf.data()));
  CHECK(std::all_of(buf.data() + 5000, buf.data() + 8192, [](auto b) { return b == std::byte{}; }));

  std::vector<std::byte> odd(300, std::byte{0xff});
  env.ok(f->read_at(4900, odd));  // unaligned, across the end
  CHECK(std::equal(odd.begin(), odd.begin() + 100, data.begin() + 4900));
  CHECK(std::all_of(odd.begin() + 100, odd.end(), [](auto b) { return b == std::byte{}; }));

  std::memset(buf.data(), 0xff, buf.size());
  env.ok(f->read_at(65536, buf.span().first(4096)));  // wholly past the end
  CHECK(std::all_of(buf.data(), buf.data() + 4096, [](auto b) { return b == std::byte{}; }));
  CHECK(size_of(*f) == 5000);  // reading never grows the file
}

TEST_CASE_TEMPLATE("io::File contract: truncate and allocate set the size; new bytes are zeros",
                   Kind, FILE_KINDS) {
  Env env;
  const auto data = pattern(8192, 4);
  auto f = Kind::make(env, data);
  REQUIRE(f->truncate(20000).has_value());
  CHECK(size_of(*f) == 20000);
  auto got = read_all(env, *f, 20000);
  CHECK(std::equal(data.begin(), data.end(), got.begin()));
  CHECK(std::all_of(got.begin() + 8192, got.end(), [](auto b) { return b == std::byte{}; }));

  // Shrinking drops the bytes: growing again brings back zeros, not them.
  REQUIRE(f->truncate(3000).has_value());
  CHECK(size_of(*f) == 3000);
  REQUIRE(f->truncate(8192).has_value());
  got = read_all(env, *f, 8192);
  CHECK(std::equal(data.begin(), data.begin() + 3000, got.begin()));
  CHECK(std::all_of(got.begin() + 3000, got.end(), [](auto b) { return b == std::byte{}; }));

  env.ok(f->allocate(0, 4096));  // inside: no change
  CHECK(size_of(*f) == 8192);
  env.ok(f->allocate(65536, 4096));  // past the end: grows
  CHECK(size_of(*f) == 69632);
  got = read_all(env, *f, 69632);
  CHECK(std::equal(data.begin(), data.begin() + 3000, got.begin()));
  CHECK(std::all_of(got.begin() + 3000, got.end(), [](auto b) { return b == std::byte{}; }));
  const auto allocated = f->allocated();
  REQUIRE(allocated.has_value());
  CHECK(*allocated >= 8192);
}

TEST_CASE_TEMPLATE("io::File contract: zero_range and punch_hole zero bytes", Kind, FILE_KINDS) {
  Env env;
  auto model = pattern(65536, 6);
  auto f = Kind::make(env, model);
  env.ok(f->zero_range(4096, 8192));
  std::fill_n(model.begin() + 4096, 8192, std::byte{});
  env.ok(f->punch_hole(20001, 4999));  // unaligned: partial blocks are zeroed
  std::fill_n(model.begin() + 20001, 4999, std::byte{});
  env.ok(f->punch_hole(65536 + 4096, 4096));  // past the end: keeps the size
  CHECK(size_of(*f) == 65536);
  CHECK(read_all(env, *f, 65536) == model);
  env.ok(f->zero_range(65536, 4096));  // past the end: grows, as fallocate does
  CHECK(size_of(*f) == 69632);
  env.ok(f->zero_range(0, 0));
  env.ok(f->punch_hole(0, 0));
  model.resize(69632);
  CHECK(read_all(env, *f, 69632) == model);
}

TEST_CASE_TEMPLATE("io::File contract: a read-only file reads and refuses every change", Kind,
                   FILE_KINDS) {
  Env env;
  const auto data = pattern(8192, 8);
  auto f = Kind::make(env, data, true);
  CHECK(f->read_only());
  CHECK(read_all(env, *f, 8192) == data);
  const error_code ro = make_error_code(errc::read_only);
  CHECK(env.run(f->write_at(0, pattern(4096, 1))).error() == ro);
  CHECK(env.run(f->write_at(100, pattern(10, 1))).error() == ro);
  CHECK(env.run(f->zero_range(0, 4096)).error() == ro);
  CHECK(env.run(f->punch_hole(0, 4096)).error() == ro);
  CHECK(env.run(f->allocate(0, 65536)).error() == ro);
  CHECK(f->truncate(0).error() == ro);
  CHECK(read_all(env, *f, 8192) == data);
  CHECK(size_of(*f) == 8192);
}

TEST_CASE_TEMPLATE("io::File contract: sync succeeds after writes and is counted", Kind,
                   FILE_KINDS) {
  Env env;
  auto f = Kind::make(env, {});
  CHECK(f->syncs_started() == 0);
  env.ok(f->write_at(0, pattern(4096, 2)));
  env.ok(f->sync());
  env.ok(f->write_at(100, pattern(50, 2)));
  env.ok(f->sync_blocking());
  CHECK(f->syncs_started() == 2);
}

TEST_CASE_TEMPLATE("io::File contract: seek_data and seek_hole on a file with no holes", Kind,
                   FILE_KINDS) {
  Env env;
  auto f = Kind::make(env, pattern(8192, 1));
  CHECK(f->seek_data(0).value() == 0);
  CHECK(f->seek_data(5000).value() == 5000);
  CHECK(f->seek_hole(0).value() == 8192);
  CHECK(f->seek_data(8192).error() == errno_error(ENXIO));
  CHECK(f->seek_hole(9000).error() == errno_error(ENXIO));
}

// Under O_DIRECT two bounced writes sharing a block must not undo each
// other's bytes (each reads, patches and writes back the whole block).
TEST_CASE_TEMPLATE("io::File contract: concurrent unaligned writes into shared blocks all land",
                   Kind, FILE_KINDS) {
  Env env;
  auto model = pattern(8192, 0);
  auto f = Kind::make(env, model);
  constexpr int kWriters = 24;
  std::vector<std::vector<std::byte>> bufs;
  for (int i = 0; i < kWriters; ++i) bufs.push_back(pattern(37, 100 + i));
  int done = 0;
  for (int i = 0; i < kWriters; ++i) {
    boost::asio::co_spawn(env.ctx, f->write_at(1000 + 37 * i, bufs[i]),
                          [&](std::exception_ptr e, result<> r) {
                            CHECK_FALSE(e);
                            CHECK(r.has_value());
                            ++done;
                          });
    std::copy(bufs[i].begin(), bufs[i].end(), model.begin() + 1000 + 37 * i);
  }
  while (done < kWriters) {
    env.ctx.restart();
    REQUIRE(env.ctx.run_one() > 0);
  }
  CHECK(read_all(env, *f, 8192) == model);
}

// What O_DIRECT refuses is what MemoryFile's Reject mode refuses: a raw
// misaligned offset or length fails with EINVAL (UringFile itself never
// issues one; it bounces).
TEST_CASE("io::File contract: misaligned I/O fails with EINVAL under O_DIRECT and Reject") {
  Env env;
  const io::AlignedBytes buf(4096);
  std::memset(buf.data(), 0x5a, buf.size());

  auto real = env.uring(pattern(8192, 1), false, true);
  const int fd = static_cast<io::UringFile&>(*real).fd();
  for (auto [offset, length] : {std::pair<off_t, std::size_t>{100, 512}, {0, 100}}) {
    errno = 0;
    CHECK(::pwrite(fd, buf.data(), length, offset) == -1);
    CHECK(errno == EINVAL);
    errno = 0;
    CHECK(::pread(fd, buf.data(), length, offset) == -1);
    CHECK(errno == EINVAL);
  }
  CHECK(::pwrite(fd, buf.data(), 512, 512) == 512);

  io::MemoryFile mem(pattern(8192, 1));
  mem.set_alignment(kBlock, io::MemoryFile::Unaligned::Reject);
  for (auto [offset, length] : {std::pair<std::uint64_t, std::size_t>{100, 512}, {0, 100}}) {
    CHECK(env.run(mem.write_at(offset, buf.span().first(length))).error() == errno_error(EINVAL));
    CHECK(env.run(mem.read_at(offset, buf.span().first(length))).error() == errno_error(EINVAL));
  }
  CHECK(mem.stats().unaligned == 4);
  CHECK(mem.contents() == pattern(8192, 1));  // nothing written
  env.ok(mem.write_at(512, buf.span().first(512)));
  CHECK(mem.stats().unaligned == 4);
}
