// Requests the server must refuse (with the error the spec asks for) while the
// connection keeps working, and a clean DISC.
#include <doctest/doctest.h>

#include <algorithm>
#include <cerrno>

#include <memory>

#include "server_fixture.h"

using namespace qnbd_it;

namespace {

constexpr std::uint64_t kSize = 16 * MiB;
const std::vector<Range> kData{{0, 1 * MiB}};

std::unique_ptr<Handle> connect_lax(const Server& server, bool structured) {
  auto h = std::make_unique<Handle>();
  NBD_OK(nbd_set_request_structured_replies(*h, structured));
  NBD_OK(nbd_add_meta_context(*h, "base:allocation"));
  NBD_OK(nbd_connect_unix(*h, server.socket().c_str()));
  NBD_OK(nbd_set_strict_mode(*h, 0));  // let bad requests reach the server
  return h;
}

void check_still_works(nbd_handle* h) {
  std::vector<std::uint8_t> buf(4096);
  NBD_OK(nbd_pread(h, buf.data(), buf.size(), 4096, 0));
  CHECK(buf == pattern(4096, 4096));
}

int ignore_extents(void*, const char*, uint64_t, uint32_t*, size_t, int*) { return 0; }

// The errno of a call that must fail.
template <typename F>
int failing(F call) {
  int rc = call();
  if (rc != -1) return 0;
  return nbd_get_errno();
}

}  // namespace

TEST_CASE("out-of-range requests: EINVAL for reads, ENOSPC for writes") {
  TempDir dir;
  auto image = make_sparse_image(dir.file("disk.raw"), kSize, kData);
  Server server(dir, ServerOptions::serving(image));
  std::vector<std::uint8_t> buf(8192, 0x99);
  for (bool structured : {true, false}) {
    CAPTURE(structured);
    auto h = connect_lax(server, structured);
    nbd_handle* n = *h;
    CHECK(failing([&] { return nbd_pread(n, buf.data(), 4096, kSize, 0); }) == EINVAL);
    check_still_works(n);
    CHECK(failing([&] { return nbd_pread(n, buf.data(), 8192, kSize - 4096, 0); }) == EINVAL);
    check_still_works(n);
    CHECK(failing([&] { return nbd_pread(n, buf.data(), 4096, UINT64_MAX - 1024, 0); }) == EINVAL);
    check_still_works(n);
    CHECK(failing([&] { return nbd_pwrite(n, buf.data(), 4096, kSize, 0); }) == ENOSPC);
    check_still_works(n);
    CHECK(failing([&] {
            return nbd_pwrite(n, buf.data(), 8192, kSize - 4096, LIBNBD_CMD_FLAG_FUA);
          }) == ENOSPC);
    check_still_works(n);
    CHECK(failing([&] { return nbd_zero(n, 1 * MiB, kSize - 4096, 0); }) == ENOSPC);
    check_still_works(n);
    CHECK(failing([&] { return nbd_trim(n, 1 * MiB, kSize, 0); }) == EINVAL);
    check_still_works(n);
    if (structured) {
      CHECK(failing([&] {
              return nbd_block_status(n, 4096, kSize,
                                      nbd_extent_callback{ignore_extents, nullptr, nullptr}, 0);
            }) == EINVAL);
      check_still_works(n);
    }
    // Flags that do not belong to the command.
    CHECK(failing([&] { return nbd_pread(n, buf.data(), 4096, 0, LIBNBD_CMD_FLAG_REQ_ONE); }) ==
          EINVAL);
    check_still_works(n);
    CHECK(failing([&] { return nbd_flush(n, LIBNBD_CMD_FLAG_NO_HOLE); }) == EINVAL);
    check_still_works(n);
    NBD_OK(nbd_shutdown(n, 0));
  }
  // The straddling write did not write its in-range half.
  CHECK(read_file(image, kSize - 4096, 4096) == std::vector<std::uint8_t>(4096, 0));
}

TEST_CASE("read-only export refuses writes with EPERM") {
  TempDir dir;
  auto image = make_sparse_image(dir.file("disk.raw"), kSize, kData);
  Server server(dir, ServerOptions::serving(image).readonly());
  std::vector<std::uint8_t> buf(4096, 0x55);
  for (bool structured : {true, false}) {
    CAPTURE(structured);
    auto h = connect_lax(server, structured);
    nbd_handle* n = *h;
    REQUIRE(nbd_is_read_only(n) == 1);
    CHECK(failing([&] { return nbd_pwrite(n, buf.data(), 4096, 0, 0); }) == EPERM);
    check_still_works(n);
    CHECK(failing([&] { return nbd_pwrite(n, buf.data(), 4096, 0, LIBNBD_CMD_FLAG_FUA); }) ==
          EPERM);
    check_still_works(n);
    CHECK(failing([&] { return nbd_zero(n, 4096, 0, 0); }) == EPERM);
    check_still_works(n);
    CHECK(failing([&] { return nbd_trim(n, 4096, 0, 0); }) == EPERM);
    check_still_works(n);
    NBD_OK(nbd_shutdown(n, 0));
  }
  CHECK(read_file(image, 0, 1 * MiB) == pattern(0, 1 * MiB));
}

TEST_CASE("DISC after queued writes: the writes are done, then the connection closes") {
  TempDir dir;
  auto image = make_sparse_image(dir.file("disk.raw"), kSize, kData);
  Server server(dir, ServerOptions::serving(image));
  std::vector<std::vector<std::uint8_t>> bufs;
  {
    Handle h;
    NBD_OK(nbd_connect_unix(h, server.socket().c_str()));
    for (int i = 0; i < 16; ++i) {
      bufs.push_back(pattern(4 * MiB + i * 64 * KiB, 64 * KiB, 40));
      NBD_OK(nbd_aio_pwrite(h, bufs.back().data(), 64 * KiB, 4 * MiB + i * 64 * KiB,
                            NBD_NULL_COMPLETION, 0));
    }
    NBD_OK(nbd_shutdown(h, 0));  // sends NBD_CMD_DISC once the writes are answered
    while (!nbd_aio_is_closed(h) && !nbd_aio_is_dead(h)) NBD_OK(nbd_poll(h, -1));
    CHECK(nbd_aio_is_closed(h) == 1);  // closed by the server, cleanly
    std::vector<std::uint8_t> buf(4096);
    CHECK(nbd_pread(h, buf.data(), buf.size(), 0, 0) == -1);
  }
  CHECK(read_file(image, 4 * MiB, 16 * 64 * KiB) == pattern(4 * MiB, 16 * 64 * KiB, 40));
  CHECK(server.alive());
  Handle again;
  NBD_OK(nbd_connect_unix(again, server.socket().c_str()));
  check_still_works(again);
  NBD_OK(nbd_shutdown(again, 0));
}

TEST_CASE("O_DIRECT export (--cache none): misaligned requests are done right") {
  TempDir dir;
  auto image = make_sparse_image(dir.file("disk.raw"), kSize, kData);
  Server server(dir, ServerOptions::serving(image).with_args({"--cache", "none"}));
  Handle strict;
  NBD_OK(nbd_connect_unix(strict, server.socket().c_str()));
  int64_t min = nbd_get_block_size(strict, LIBNBD_SIZE_MINIMUM);
  CHECK(min == 1);  // byte-granular as qemu-nbd: the server does the read-modify-write
  auto data = pattern(8 * MiB, 64 * KiB, 60);
  NBD_OK(nbd_pwrite(strict, data.data(), data.size(), 8 * MiB, LIBNBD_CMD_FLAG_FUA));
  CHECK(read_file(image, 8 * MiB, data.size()) == data);
  check_still_works(strict);
  NBD_OK(nbd_shutdown(strict, 0));

  auto h = connect_lax(server, true);
  nbd_handle* n = *h;
  std::vector<std::uint8_t> buf(1000, 0x77);
  int err = failing([&] { return nbd_pwrite(n, buf.data(), buf.size(), 8 * MiB + 100, 0); });
  auto want = data;
  CHECK(err == 0);
  std::copy(buf.begin(), buf.end(), want.begin() + 100);
  CHECK(read_file(image, 8 * MiB, want.size()) == want);
  std::vector<std::uint8_t> rbuf(1000);
  err = failing([&] { return nbd_pread(n, rbuf.data(), rbuf.size(), 8 * MiB + 100, 0); });
  CHECK(err == 0);
  CHECK(std::equal(rbuf.begin(), rbuf.end(), want.begin() + 100));
  check_still_works(n);
  NBD_OK(nbd_shutdown(n, 0));
}
