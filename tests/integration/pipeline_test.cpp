// Many requests in flight on one connection (libnbd aio): all complete,
// each exactly once, with the right data; replies may come out of order.
#include <doctest/doctest.h>

#include <algorithm>
#include <memory>

#include "server_fixture.h"

using namespace qnbd_it;

namespace {

constexpr std::uint64_t kSize = 64 * MiB;
constexpr int kRequests = 64;

struct Completion {
  std::vector<int>* order;
  int index;
  int error = -1;
};

int on_complete(void* user, int* error) {
  auto* c = static_cast<Completion*>(user);
  c->error = *error;
  c->order->push_back(c->index);
  return 1;  // auto-retire the command
}

void drain(nbd_handle* h) {
  while (nbd_aio_in_flight(h) > 0) NBD_OK(nbd_poll(h, -1));
}

std::unique_ptr<Handle> connect(const Server& server, bool structured) {
  auto h = std::make_unique<Handle>();
  NBD_OK(nbd_set_request_structured_replies(*h, structured));
  NBD_OK(nbd_connect_unix(*h, server.socket().c_str()));
  return h;
}

int count_out_of_order(const std::vector<int>& order) {
  int n = 0;
  for (std::size_t i = 1; i < order.size(); ++i) n += order[i] < order[i - 1];
  return n;
}

}  // namespace

TEST_CASE("64 pipelined reads of mixed sizes: each completes once with the right data") {
  TempDir dir;
  auto image = make_sparse_image(dir.file("disk.raw"), kSize, {{0, 32 * MiB}});
  Server server(dir, ServerOptions::serving(image));
  for (bool structured : {true, false}) {
    CAPTURE(structured);
    auto h = connect(server, structured);
    std::vector<int> order;
    std::vector<Completion> done(kRequests);
    std::vector<std::vector<std::uint8_t>> bufs(kRequests);
    std::vector<std::uint64_t> offsets(kRequests);
    std::size_t max_in_flight = 0;
    for (int i = 0; i < kRequests; ++i) {
      // Request 0 is 32 MiB; the rest are 4 KiB scattered over data and hole.
      std::uint64_t len = i == 0 ? 32 * MiB : 4 * KiB;
      offsets[i] = i == 0 ? 0 : (std::uint64_t(i) * 997 * KiB) % (kSize - len);
      bufs[i].assign(len, 0xee);
      done[i] = {&order, i};
      NBD_OK(nbd_aio_pread(*h, bufs[i].data(), len, offsets[i],
                           nbd_completion_callback{on_complete, &done[i], nullptr}, 0));
      max_in_flight = std::max<std::size_t>(max_in_flight, nbd_aio_in_flight(*h));
    }
    drain(*h);
    REQUIRE(order.size() == kRequests);
    auto sorted = order;
    std::sort(sorted.begin(), sorted.end());
    for (int i = 0; i < kRequests; ++i) {
      CAPTURE(i);
      CHECK(sorted[i] == i);  // each exactly once
      CHECK(done[i].error == 0);
      std::uint64_t data_len = offsets[i] < 32 * MiB
                                   ? std::min<std::uint64_t>(bufs[i].size(), 32 * MiB - offsets[i])
                                   : 0;
      auto want = pattern(offsets[i], data_len);
      want.resize(bufs[i].size(), 0);
      CHECK(bufs[i] == want);
    }
    MESSAGE("max in flight " << max_in_flight << ", out-of-order completions "
                             << count_out_of_order(order) << ", large read completed at position "
                             << (std::find(order.begin(), order.end(), 0) - order.begin()));
    CHECK(max_in_flight > 1);
    NBD_OK(nbd_shutdown(*h, 0));
  }
}

TEST_CASE("64 pipelined writes and reads, then FLUSH: everything lands") {
  TempDir dir;
  auto image = make_sparse_image(dir.file("disk.raw"), kSize, {{32 * MiB, 8 * MiB}});
  Server server(dir, ServerOptions::serving(image));
  for (bool structured : {true, false}) {
    CAPTURE(structured);
    auto h = connect(server, structured);
    const std::uint64_t base = structured ? 0 : 16 * MiB;
    const std::uint32_t seed = structured ? 21 : 22;
    std::vector<int> order;
    std::vector<Completion> done(kRequests);
    std::vector<std::vector<std::uint8_t>> bufs(kRequests);
    for (int i = 0; i < kRequests; ++i) {
      done[i] = {&order, i};
      nbd_completion_callback cb{on_complete, &done[i], nullptr};
      if (i % 2 == 0) {  // writes: 128 KiB each, some with FUA
        std::uint64_t off = base + std::uint64_t(i / 2) * 128 * KiB;
        bufs[i] = pattern(off, 128 * KiB, seed);
        NBD_OK(nbd_aio_pwrite(*h, bufs[i].data(), bufs[i].size(), off, cb,
                              i % 8 == 0 ? LIBNBD_CMD_FLAG_FUA : 0));
      } else {  // reads of the pre-existing data, which the writes do not touch
        std::uint64_t off = 32 * MiB + std::uint64_t(i) * 64 * KiB;
        bufs[i].assign(64 * KiB, 0xee);
        NBD_OK(nbd_aio_pread(*h, bufs[i].data(), bufs[i].size(), off, cb, 0));
      }
    }
    drain(*h);
    NBD_OK(nbd_flush(*h, 0));
    REQUIRE(order.size() == kRequests);
    for (int i = 0; i < kRequests; ++i) {
      CAPTURE(i);
      CHECK(done[i].error == 0);
      if (i % 2 == 1) CHECK(bufs[i] == pattern(32 * MiB + std::uint64_t(i) * 64 * KiB, 64 * KiB));
    }
    auto written = read_file(image, base, 32 * 128 * KiB);
    CHECK(written == pattern(base, 32 * 128 * KiB, seed));
    MESSAGE("out-of-order completions " << count_out_of_order(order));
    NBD_OK(nbd_shutdown(*h, 0));
  }
}

TEST_CASE("several connections at once, each with requests in flight") {
  TempDir dir;
  auto image = make_sparse_image(dir.file("disk.raw"), kSize, {});
  Server server(dir, ServerOptions::serving(image));
  constexpr int kConns = 4;
  std::vector<std::unique_ptr<Handle>> hs;
  std::vector<std::vector<std::uint8_t>> bufs;
  for (int c = 0; c < kConns; ++c) hs.push_back(connect(server, c % 2 == 0));
  for (int c = 0; c < kConns; ++c) {
    for (int i = 0; i < 16; ++i) {
      std::uint64_t off = (std::uint64_t(c) * 16 + i) * 256 * KiB;
      bufs.push_back(pattern(off, 256 * KiB, 30));
      NBD_OK(nbd_aio_pwrite(*hs[c], bufs.back().data(), 256 * KiB, off, NBD_NULL_COMPLETION, 0));
    }
  }
  for (auto& h : hs) {
    drain(*h);
    NBD_OK(nbd_flush(*h, 0));
  }
  CHECK(read_file(image, 0, kConns * 16 * 256 * KiB) == pattern(0, kConns * 16 * 256 * KiB, 30));
  for (auto& h : hs) NBD_OK(nbd_shutdown(*h, 0));
}

namespace {

// One round: a 32 MiB FUA write, then 63 small reads; returns where the write completed.
long fua_write_then_reads(nbd_handle* h, const std::string& image, std::uint32_t seed) {
  std::vector<int> order;
  std::vector<Completion> done(kRequests);
  std::vector<std::vector<std::uint8_t>> bufs(kRequests);
  bufs[0] = pattern(0, 32 * MiB, seed);
  done[0] = {&order, 0};
  NBD_OK(nbd_aio_pwrite(h, bufs[0].data(), bufs[0].size(), 0,
                        nbd_completion_callback{on_complete, &done[0], nullptr},
                        LIBNBD_CMD_FLAG_FUA));
  for (int i = 1; i < kRequests; ++i) {
    bufs[i].assign(4 * KiB, 0xee);
    done[i] = {&order, i};
    NBD_OK(nbd_aio_pread(h, bufs[i].data(), bufs[i].size(), 32 * MiB + std::uint64_t(i) * 4 * KiB,
                         nbd_completion_callback{on_complete, &done[i], nullptr}, 0));
  }
  drain(h);
  REQUIRE(order.size() == kRequests);
  for (int i = 0; i < kRequests; ++i) CHECK(done[i].error == 0);
  for (int i = 1; i < kRequests; ++i)
    CHECK(bufs[i] == pattern(32 * MiB + std::uint64_t(i) * 4 * KiB, 4 * KiB));
  CHECK(read_file(image, 0, 32 * MiB) == bufs[0]);
  return std::find(order.begin(), order.end(), 0) - order.begin();
}

}  // namespace

TEST_CASE("replies come back out of order: small reads overtake a large FUA write") {
  TempDir dir;
  auto image = make_sparse_image(dir.file("disk.raw"), kSize, {{32 * MiB, 1 * MiB}});
  Server server(dir, ServerOptions::serving(image));
  auto h = connect(server, true);
  // The write must be durable before its reply, so a server that handles
  // requests concurrently answers the reads first. A few rounds absorb a
  // scheduler hiccup; a server that replies in order fails every round.
  long pos = 0;
  for (std::uint32_t round = 0; round < 3 && pos == 0; ++round) {
    pos = fua_write_then_reads(*h, image, 50 + round);
    MESSAGE("round " << round << ": FUA write completed at position " << pos << " of "
                     << kRequests);
  }
  CHECK(pos > 0);
  NBD_OK(nbd_shutdown(*h, 0));
}
