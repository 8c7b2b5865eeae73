// Shared by the engine unit tests: a minimal qcow2 image built in memory,
// a runner for coroutines on an io_context, an Image over a MemoryFile, and
// `qemu-img check` on a byte image.
#pragma once

#include "backend/raw_backend.h"
#include "common/run_sync.h"
#include "io/memory_file.h"
#include "qcow2/engine/load.h"
#include "qcow2/format/endian.h"
#include "qcow2/format/entries.h"
#include "qcow2/format/header.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>

#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <unistd.h>
#include <vector>

namespace qnbd::qcow2::test {

using namespace qnbd::qcow2::format;

// A fresh image: header, refcount table, one refcount block, L1 table.
inline std::vector<std::byte> make_image(unsigned cluster_bits, std::uint64_t size,
                                         const std::string& backing = "", bool extl2 = false,
                                         unsigned refcount_order = 4) {
  Header h;
  h.cluster_bits = cluster_bits;
  h.size = size;
  h.refcount_order = refcount_order;
  if (extl2) h.incompatible_features |= QCOW2_INCOMPAT_EXTL2;
  const std::uint64_t cs = h.cluster_size();
  h.refcount_table_offset = cs;
  h.refcount_table_clusters = 1;
  h.l1_table_offset = 3 * cs;
  h.l1_size = static_cast<std::uint32_t>(h.geometry().l1_entries_for(size));
  REQUIRE(h.l1_size * 8 <= cs);
  h.backing_file = backing;
  if (!backing.empty()) h.backing_format = "raw";
  std::vector<std::byte> img(4 * cs);
  auto c0 = encode_header(h);
  std::copy(c0.begin(), c0.end(), img.begin());
  store_be64(img.data() + cs, 2 * cs);
  for (int c = 0; c < 4; ++c) set_refcount(img.data() + 2 * cs, refcount_order, c, 1);
  return img;
}

template <class T>
T run(boost::asio::io_context& ctx, boost::asio::awaitable<T> aw) {
  auto out = run_until_done(ctx, std::move(aw));
  REQUIRE(out);
  return std::move(*out);
}

class RawResolver final : public BackingResolver {
 public:
  explicit RawResolver(std::vector<std::byte> data) : data_(std::move(data)) {}
  io::MemoryFile* file = nullptr;
  boost::asio::awaitable<std::unique_ptr<BlockBackend>> open(const std::string&,
                                                             const std::string&) override {
    auto f = std::make_unique<io::MemoryFile>(data_, true);
    file = f.get();
    co_return std::make_unique<RawBackend>(std::move(f));
  }

 private:
  std::vector<std::byte> data_;
};

struct Fixture {
  boost::asio::io_context ctx;
  io::MemoryFile* file = nullptr;
  std::unique_ptr<Image> image;

  void open(std::vector<std::byte> bytes, BackingResolver* backing = nullptr) {
    auto f = std::make_unique<io::MemoryFile>(std::move(bytes));
    file = f.get();
    LoadOptions o;
    o.name = "test.qcow2";
    image = run(ctx, load_image(std::move(f), o, backing));
  }
  void ok(task<> t) {
    auto r = run(ctx, std::move(t));
    REQUIRE_MESSAGE(r.has_value(), r.error().message());
  }
  std::vector<std::byte> read(std::uint64_t off, std::size_t n) {
    std::vector<std::byte> b(n);
    ok(image->read(off, b));
    return b;
  }
};

inline std::vector<std::byte> pattern(std::size_t n, int v) {
  return std::vector<std::byte>(n, static_cast<std::byte>(v));
}

// Runs `qemu-img check` on bytes; returns its exit status.
inline int qemu_check(const std::vector<std::byte>& bytes) {
  char path[] = "/tmp/qnbd-unit-qcow2.XXXXXX";
  const int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  REQUIRE(::write(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()));
  ::close(fd);
  const std::string cmd = std::string("qemu-img check -q ") + path + " >/dev/null 2>&1";
  const int st = std::system(cmd.c_str());
  if (WEXITSTATUS(st) != 0 && std::getenv("QNBD_KEEP_FAILED")) {
    MESSAGE("kept failing image: " << path);
    return WEXITSTATUS(st);
  }
  ::unlink(path);
  return WEXITSTATUS(st);
}

}  // namespace qnbd::qcow2::test
