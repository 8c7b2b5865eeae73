// NBD multi-conn: four connections to ONE export served by two workers.
// Every connection writes (disjoint and overlapping ranges, concurrently,
// many requests in flight), one connection FLUSHes, and every connection must
// then read what all of them wrote. The FLUSH is checked for what it must
// cover by SIGKILLing the server right after it: the qcow2 image must be
// clean and hold every write acknowledged on any connection. The server log
// (debug) must show the connections served on two worker threads.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "server_fixture.h"
#include "tests/lib/child.h"

using namespace qnbd_it;
using qnbd::test::run_program;

namespace {

constexpr std::uint64_t kSize = 64 * MiB;
constexpr int kConns = 4;
// Overlapping area: connection i writes 8 KiB at kOverlap + k*8 KiB + i*2 KiB.
constexpr std::uint64_t kOverlap = 32 * MiB;
constexpr std::uint64_t kOverlapStep = 8 * KiB;
constexpr std::uint64_t kOverlapShift = 2 * KiB;
constexpr int kOverlapWrites = 64;
constexpr std::uint64_t kOverlapEnd =
    kOverlap + (kOverlapWrites - 1) * kOverlapStep + (kConns - 1) * kOverlapShift + kOverlapStep;
// Written in order after the concurrent phase, across connections.
constexpr std::uint64_t kOrdered = kOverlap + 4 * KiB;

std::uint32_t seed_of(int conn) { return 1 + conn; }
std::uint32_t overlap_seed(int conn) { return 10 + conn; }
Range big_range(int conn) { return {conn * 4 * MiB, 2 * MiB}; }                // 64 KiB writes
Range small_range(int conn) { return {conn * 4 * MiB + 2 * MiB, 256 * KiB}; }  // 4 KiB writes

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

ServerOptions qcow2_options(const TempDir& dir) {
  auto o = ServerOptions::serving(dir.file("disk.qcow2")).formatted("qcow2");
  if (is_reference_server()) return o;
  return std::move(o).with_args({"--log-level=debug", "--workers=2"});
}

std::vector<std::unique_ptr<Handle>> connect_all(const std::string& socket) {
  std::vector<std::unique_ptr<Handle>> hs;
  for (int i = 0; i < kConns; ++i) {
    auto h = std::make_unique<Handle>();
    NBD_OK(nbd_add_meta_context(*h, LIBNBD_CONTEXT_BASE_ALLOCATION));
    NBD_OK(nbd_connect_unix(*h, socket.c_str()));
    hs.push_back(std::move(h));
  }
  for (auto& h : hs) CHECK(nbd_can_multi_conn(*h) == 1);
  return hs;
}

struct Write {
  std::uint64_t offset;
  std::vector<std::uint8_t> data;
};

struct Failures {
  int count = 0;
  int first_errno = 0;
};

int on_write_done(void* user, int* error) {
  auto* f = static_cast<Failures*>(user);
  if (*error != 0 && f->count++ == 0) f->first_errno = *error;
  return 1;  // retire the command
}

// The concurrent phase of one connection: every write in flight at once
// (aio), so the export's worker sees requests of all connections interleaved.
std::string write_all_aio(nbd_handle* h, const std::vector<Write>& writes) {
  Failures failed;
  for (const auto& w : writes)
    if (nbd_aio_pwrite(h, w.data.data(), w.data.size(), w.offset,
                       nbd_completion_callback{on_write_done, &failed, nullptr}, 0) == -1)
      return last_error();
  while (nbd_aio_in_flight(h) > 0)
    if (nbd_poll(h, -1) == -1) return last_error();
  if (failed.count)
    return std::to_string(failed.count) + " writes failed, first with errno " +
           std::to_string(failed.first_errno);
  return "";
}

std::vector<Write> writes_of(int conn) {
  std::vector<Write> out;
  auto [big, big_len] = big_range(conn);
  for (std::uint64_t o = big; o < big + big_len; o += 64 * KiB)
    out.push_back({o, pattern(o, 64 * KiB, seed_of(conn))});
  auto [small, small_len] = small_range(conn);
  for (std::uint64_t o = small; o < small + small_len; o += 4 * KiB)
    out.push_back({o, pattern(o, 4 * KiB, seed_of(conn))});
  for (int k = 0; k < kOverlapWrites; ++k) {
    std::uint64_t o = kOverlap + k * kOverlapStep + conn * kOverlapShift;
    out.push_back({o, pattern(o, kOverlapStep, overlap_seed(conn))});
  }
  return out;
}

void concurrent_writes(std::vector<std::unique_ptr<Handle>>& hs) {
  std::vector<std::string> errors(kConns);
  std::vector<std::thread> threads;
  for (int i = 0; i < kConns; ++i)
    threads.emplace_back([&, i] { errors[i] = write_all_aio(*hs[i], writes_of(i)); });
  for (auto& t : threads) t.join();
  for (int i = 0; i < kConns; ++i)
    CHECK_MESSAGE(errors[i].empty(), "connection " << i << ": " << errors[i]);
}

// After the concurrent phase, each write acknowledged before the next is
// sent, on different connections: the result is exact.
void ordered_writes(std::vector<std::unique_ptr<Handle>>& hs) {
  auto a = pattern(kOrdered, 8 * KiB, 50);
  NBD_OK(nbd_pwrite(*hs[1], a.data(), a.size(), kOrdered, 0));
  auto b = pattern(kOrdered + 4 * KiB, 8 * KiB, 51);
  NBD_OK(nbd_pwrite(*hs[2], b.data(), b.size(), kOrdered + 4 * KiB, 0));
  NBD_OK(nbd_zero(*hs[3], 4 * KiB, kOrdered + 8 * KiB, 0));
}

std::vector<std::uint8_t> expected_ordered() {
  auto e = pattern(kOrdered, 4 * KiB, 50);
  auto b = pattern(kOrdered + 4 * KiB, 4 * KiB, 51);
  e.insert(e.end(), b.begin(), b.end());
  e.resize(12 * KiB, 0);
  return e;
}

// What one connection (or a fresh one) must read back.
void check_contents(nbd_handle* h, const std::string& who) {
  CAPTURE(who);
  // One read per 4 MiB slice: data of connection i, then a hole (a
  // structured read split into data and hole chunks).
  for (int i = 0; i < kConns; ++i) {
    const std::uint64_t base = i * 4 * MiB;
    std::vector<std::uint8_t> want(4 * MiB, 0);
    for (Range r : {big_range(i), small_range(i)}) {
      auto p = pattern(r.offset, r.length, seed_of(i));
      std::copy(p.begin(), p.end(), want.begin() + (r.offset - base));
    }
    std::vector<std::uint8_t> got(4 * MiB);
    NBD_OK(nbd_pread(h, got.data(), got.size(), base, 0));
    CHECK_MESSAGE(got == want, "slice of connection " << i);
  }
  std::vector<std::uint8_t> got(kOverlapEnd - kOverlap);
  NBD_OK(nbd_pread(h, got.data(), got.size(), kOverlap, 0));
  // Outside the ordered writes every sector holds the data of one of the
  // connections whose write covered it (which one is a race).
  int bad = 0;
  for (std::uint64_t o = kOverlap; o < kOverlapEnd; o += 512) {
    if (o >= kOrdered && o < kOrdered + 12 * KiB) continue;
    bool ok = false;
    for (int i = 0; i < kConns && !ok; ++i) {
      std::uint64_t start = kOverlap + i * kOverlapShift;
      if (o < start || (o - start) / kOverlapStep >= kOverlapWrites) continue;
      ok = std::memcmp(got.data() + (o - kOverlap), pattern(o, 512, overlap_seed(i)).data(), 512) ==
           0;
    }
    bad += !ok;
  }
  CHECK_MESSAGE(bad == 0, bad << " sectors of the overlapping area hold no writer's data");
  std::vector<std::uint8_t> ordered(got.begin() + (kOrdered - kOverlap),
                                    got.begin() + (kOrdered - kOverlap + 12 * KiB));
  CHECK(ordered == expected_ordered());
}

// The debug log names the worker and thread of every session:
// "serving export '' on worker W (thread T, ...". (No std::regex: GCC 12
// warns inside it under ASan, and warnings are errors.)
std::set<std::string> session_threads(const std::string& log, std::set<std::string>& workers) {
  const std::string key = "serving export '' on worker ";
  const std::string mid = " (thread ";
  std::set<std::string> threads;
  std::string text = slurp(log);
  for (auto at = text.find(key); at != std::string::npos; at = text.find(key, at + 1)) {
    auto w = at + key.size();
    auto w_end = text.find_first_not_of("0123456789", w);
    if (w_end == std::string::npos || w_end == w || text.compare(w_end, mid.size(), mid) != 0)
      continue;
    auto t = w_end + mid.size();
    auto t_end = text.find_first_not_of("0123456789", t);
    if (t_end == std::string::npos || t_end == t) continue;
    workers.insert(text.substr(w, w_end - w));
    threads.insert(text.substr(t, t_end - t));
  }
  return threads;
}

}  // namespace

TEST_CASE("multi-conn: 4 connections to one qcow2 export on 2 workers see each other's writes") {
  TempDir dir;
  REQUIRE(run_program({"qemu-img", "create", "-q", "-f", "qcow2", dir.file("disk.qcow2"),
                       std::to_string(kSize)},
                      dir.file("qemu-img.log")) == 0);

  // Phase 1: write from all connections, FLUSH on one, then SIGKILL.
  {
    Server server(dir, qcow2_options(dir));
    auto hs = connect_all(server.socket());
    concurrent_writes(hs);
    ordered_writes(hs);
    NBD_OK(nbd_flush(*hs[0], 0));
    for (int i = 0; i < kConns; ++i) check_contents(*hs[i], "connection " + std::to_string(i));
    // Allocation status is answered on every connection, too.
    for (int i = 0; i < kConns; ++i) {
      struct Seen {
        bool data = false;
      } seen;
      auto cb = [](void* user, const char*, std::uint64_t, std::uint32_t* entries, std::size_t n,
                   int*) {
        if (n >= 2 && !(entries[1] & LIBNBD_STATE_HOLE)) static_cast<Seen*>(user)->data = true;
        return 0;
      };
      NBD_OK(nbd_block_status(*hs[i], 64 * KiB, big_range(3 - i).offset,
                              nbd_extent_callback{cb, &seen, nullptr}, 0));
      CHECK_MESSAGE(seen.data, "block status on connection " << i);
    }
    if (!is_reference_server()) {
      std::set<std::string> workers;
      auto threads = session_threads(server.log(), workers);
      CHECK_MESSAGE(workers.size() == 2, slurp(server.log()));
      CHECK_MESSAGE(threads.size() == 2, slurp(server.log()));
    }
    server.kill();
  }
  // Everything acknowledged before the FLUSH is in the image, whichever
  // connection wrote it, and the metadata is consistent.
  const std::string check_log = dir.file("check.log");
  CHECK_MESSAGE(run_program({"qemu-img", "check", "-q", dir.file("disk.qcow2")}, check_log) == 0,
                slurp(check_log));

  // Phase 2: a fresh server reads it all back; SIGTERM with four sessions
  // open (three of them remote) must drain and exit 0 (the fixture checks).
  {
    std::optional<Server> server;
    server.emplace(dir, qcow2_options(dir));
    auto hs = connect_all(server->socket());
    check_contents(*hs[kConns - 1], "after restart");
    hs.resize(2);  // two clients leave, two stay for the shutdown
    auto more = connect_all(server->socket());
    check_contents(*more[0], "after reconnect");
    std::vector<std::uint8_t> buf(64 * KiB);
    for (auto& h : more) NBD_OK(nbd_pread(*h, buf.data(), buf.size(), big_range(1).offset, 0));
    server.reset();  // SIGTERM; the fixture requires exit status 0
  }
  CHECK_MESSAGE(run_program({"qemu-img", "check", "-q", dir.file("disk.qcow2")}, check_log) == 0,
                slurp(check_log));
}

// A raw export lets a connection served on the other worker do its fast
// reads and writes on that worker's ring (no hop to the export's home one);
// the same guarantees hold, FLUSH included, with the image file written from
// two rings (--cache none: the aligned writes go through io_uring, the
// overlapping 2 KiB-shifted ones through the general path's read-modify-write).
TEST_CASE("multi-conn: 4 connections to one raw export on 2 workers see each other's writes") {
  TempDir dir;
  const std::string image = make_sparse_image(dir.file("disk.raw"), kSize, {});
  const auto options = [&] {
    auto o = ServerOptions::serving(image);
    if (is_reference_server()) return o;
    return std::move(o).with_args({"--log-level=debug", "--workers=2", "--cache", "none"});
  };
  {
    Server server(dir, options());
    auto hs = connect_all(server.socket());
    concurrent_writes(hs);
    ordered_writes(hs);
    NBD_OK(nbd_flush(*hs[0], 0));
    for (int i = 0; i < kConns; ++i) check_contents(*hs[i], "connection " + std::to_string(i));
    if (!is_reference_server()) {
      const std::string log = slurp(server.log());
      CHECK_MESSAGE(log.find("reads and writes on this worker, other calls on the export's home "
                             "worker") != std::string::npos,
                    log);
    }
    server.kill();
  }
  // Everything acknowledged before the FLUSH is in the file, whichever
  // worker's ring wrote it.
  Server server(dir, options());
  auto hs = connect_all(server.socket());
  check_contents(*hs[kConns - 1], "after SIGKILL and restart");
}

TEST_CASE("multi-conn: the connection limit counts connections on every worker") {
  TempDir dir;
  auto image = make_sparse_image(dir.file("disk.raw"), 4 * MiB, {});
  if (is_reference_server()) return;  // qemu-nbd's -e is a different knob
  Server server(dir,
                ServerOptions::serving(image).with_args({"--max-connections=3", "--workers=2"}));
  std::vector<std::unique_ptr<Handle>> hs;
  for (int i = 0; i < 3; ++i) {
    hs.push_back(std::make_unique<Handle>());
    NBD_OK(nbd_connect_unix(*hs.back(), server.socket().c_str()));
  }
  Handle extra;
  CHECK(nbd_connect_unix(extra, server.socket().c_str()) == -1);
  // A slot freed on the remote worker can be used again. The server counts
  // the connection down once it has seen the disconnect; until then each
  // attempt is answered with a refusal (no sleeps: every attempt is a
  // round trip to the server), bounded by a deadline.
  NBD_OK(nbd_shutdown(*hs.back(), 0));
  hs.pop_back();
  bool connected = false;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!connected && std::chrono::steady_clock::now() < deadline) {
    Handle h;
    if (nbd_connect_unix(h, server.socket().c_str()) == 0) {
      connected = true;
      std::vector<std::uint8_t> buf(4096);
      NBD_OK(nbd_pread(h, buf.data(), buf.size(), 0, 0));
    }
  }
  CHECK(connected);
}
