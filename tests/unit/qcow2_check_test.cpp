// qcow2/check over MemoryFile images made by qcow2/create: clean images,
// leaks, refcounts too low or zero (rebuild), dirty-bit repair, OFLAG_COPIED,
// references beyond EOF, I/O errors and malformed headers. The same cases
// against qemu-img itself are in tests/tools.
#include "io/memory_file.h"
#include "qcow2/check/check.h"
#include "qcow2/check/refcount_array.h"
#include "qcow2/check/run_sync.h"
#include "qcow2/create/create.h"
#include "qcow2/format/endian.h"
#include "qcow2/format/entries.h"
#include "tests/fuzz/limited_file.h"

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <map>
#include <string>

using namespace qnbd;
using namespace qnbd::qcow2;

namespace {

constexpr std::uint64_t kCs = 65536;

// A metadata-preallocated 4 MiB image: 64 data clusters after the metadata.
std::vector<std::byte> image(bool lazy = false) {
  create::CreateOptions o;
  o.size = 4 << 20;
  o.cluster_size = kCs;
  o.lazy_refcounts = lazy;
  o.prealloc = create::Prealloc::metadata;
  SyncRunner run;
  io::MemoryFile f;
  REQUIRE(run.run(create::create_image(f, o)));
  return f.contents();
}

struct Run {
  check::CheckResult result;
  std::vector<std::byte> after;
  std::vector<std::string> log;
};

Run run_check(std::vector<std::byte> bytes, check::Fix fix,
              std::optional<io::MemoryFile::Fault> fault = std::nullopt) {
  SyncRunner run;
  io::MemoryFile f(std::move(bytes));
  if (fault) f.inject(*fault);
  Run out;
  check::CheckOptions o;
  o.fix = fix;
  o.log = [&](const std::string& l) { out.log.push_back(l); };
  out.result = run.run(check::check_image(f, o));
  out.after = f.contents();
  return out;
}

std::uint64_t be64(const std::vector<std::byte>& b, std::uint64_t pos) {
  return format::load_be64(b.data() + pos);
}

// 16-bit refcount of host cluster `c` (first refcount block only).
std::uint64_t refblock(const std::vector<std::byte>& b) {
  return be64(b, be64(b, 48)) & format::REFT_OFFSET_MASK;
}
void set_rc(std::vector<std::byte>& b, std::uint64_t c, std::uint16_t v) {
  format::store_be16(b.data() + refblock(b) + c * 2, v);
}
std::uint16_t get_rc(const std::vector<std::byte>& b, std::uint64_t c) {
  return format::load_be16(b.data() + refblock(b) + c * 2);
}
// Host offset of the L2 entry for guest cluster g.
std::uint64_t l2_entry_pos(const std::vector<std::byte>& b, std::uint64_t g) {
  return (be64(b, be64(b, 40)) & format::L1E_OFFSET_MASK) + g * 8;
}

}  // namespace

TEST_CASE("qcow2 check: refcount array allocates like qemu's alloc_clusters_imrt") {
  check::RefcountArray a(format::Geometry(16, false, 4));
  a.resize(8);
  for (std::uint64_t c : {0, 1, 3, 6}) a.set(c, 1);
  std::uint64_t first_free = 0;
  CHECK(a.allocate(2, first_free) == 4);  // 2 is a one-cluster gap
  CHECK(first_free == 2);
  first_free = 0;
  CHECK(a.allocate(3, first_free) == 7);  // the free tail (7) continues past the end
  CHECK(a.size() == 10);
  CHECK(a.get(7) == 1);
  CHECK(a.get(9) == 1);
  CHECK(a.increment(2));
  check::RefcountArray one_bit(format::Geometry(16, false, 0));
  CHECK(one_bit.increment(5));
  CHECK_FALSE(one_bit.increment(5));  // refcount_max 1
}

TEST_CASE("qcow2 check: a fresh image is clean") {
  const auto r = run_check(image(), check::Fix::none);
  CHECK(check::exit_code(r.result) == 0);
  CHECK(r.result.allocated_clusters == 64);
  CHECK(r.result.total_clusters == 64);
  CHECK(r.log.empty());
}

TEST_CASE("qcow2 check: leaks are reported and repaired with -r leaks") {
  auto img = image();
  const std::uint64_t extra = img.size() / kCs;
  img.resize(img.size() + kCs);
  set_rc(img, extra, 1);
  auto r = run_check(img, check::Fix::none);
  CHECK(r.result.leaks == 1);
  CHECK(check::exit_code(r.result) == 3);
  REQUIRE(r.log.size() == 1);
  CHECK(r.log[0] == fmt::format("Leaked cluster {} refcount=1 reference=0", extra));
  r = run_check(img, check::Fix::leaks);
  CHECK(r.result.leaks_fixed == 1);
  CHECK(r.result.leaks == 0);
  CHECK(get_rc(r.after, extra) == 0);
  CHECK(check::exit_code(run_check(r.after, check::Fix::none).result) == 0);
}

TEST_CASE("qcow2 check: a refcount of 0 on used data needs a rebuild") {
  auto img = image();
  const std::uint64_t data = (be64(img, l2_entry_pos(img, 3)) & format::L2E_OFFSET_MASK) / kCs;
  set_rc(img, data, 0);
  auto r = run_check(img, check::Fix::none);
  CHECK(r.result.corruptions == 2);  // the refcount and the OFLAG_COPIED flag
  CHECK(check::exit_code(r.result) == 2);
  r = run_check(img, check::Fix::leaks);
  CHECK(check::exit_code(r.result) == 1);  // qemu: "need to rebuild refcount structures"
  r = run_check(img, check::Fix::all);
  CHECK(r.result.corruptions == 0);
  CHECK(r.result.corruptions_fixed >= 1);
  CHECK(std::find(r.log.begin(), r.log.end(), "Rebuilding refcount structure") != r.log.end());
  CHECK(be64(r.after, 48) != be64(img, 48));  // a new refcount table
  // Guest mapping untouched.
  CHECK(be64(r.after, l2_entry_pos(r.after, 3)) == be64(img, l2_entry_pos(img, 3)));
  CHECK(check::exit_code(run_check(r.after, check::Fix::none).result) == 0);
}

TEST_CASE("qcow2 check: a dirty image is repaired and the dirty bit cleared") {
  auto img = image(true);
  format::store_be64(img.data() + format::HDR_INCOMPATIBLE_FEATURES, format::QCOW2_INCOMPAT_DIRTY);
  // Lazy refcounts never wrote the refcounts of the data clusters.
  for (std::uint64_t g = 0; g < 64; g += 5)
    set_rc(img, (be64(img, l2_entry_pos(img, g)) & format::L2E_OFFSET_MASK) / kCs, 0);
  SyncRunner run;
  io::MemoryFile f(img);
  auto r = run.run(check::repair_dirty_image(f));
  REQUIRE(r.has_value());
  CHECK(r->corruptions == 0);
  const auto& after = f.contents();
  CHECK(be64(after, format::HDR_INCOMPATIBLE_FEATURES) == 0);
  CHECK(check::exit_code(run_check(after, check::Fix::none).result) == 0);
}

TEST_CASE("qcow2 check: OFLAG_COPIED mismatches are found and fixed") {
  auto img = image();
  const auto pos = l2_entry_pos(img, 7);
  format::store_be64(img.data() + pos, be64(img, pos) & ~format::QCOW_OFLAG_COPIED);
  auto r = run_check(img, check::Fix::none);
  CHECK(r.result.corruptions == 1);
  REQUIRE(r.log.size() == 1);
  CHECK(r.log[0].rfind("ERROR OFLAG_COPIED data cluster", 0) == 0);
  r = run_check(img, check::Fix::all);
  CHECK(r.result.corruptions_fixed == 1);
  CHECK((be64(r.after, pos) & format::QCOW_OFLAG_COPIED) != 0);
}

TEST_CASE("qcow2 check: a data cluster past EOF becomes a zero cluster with -r all") {
  auto img = image();
  const auto pos = l2_entry_pos(img, 9);
  format::store_be64(img.data() + pos, format::QCOW_OFLAG_COPIED | (img.size() + 8 * kCs));
  auto r = run_check(img, check::Fix::none);
  CHECK(r.result.corruptions >= 1);
  r = run_check(img, check::Fix::all);
  CHECK(be64(r.after, pos) == format::QCOW_OFLAG_ZERO);
  // The preallocated cluster it used to point at was freed as a leak.
  CHECK(r.result.leaks_fixed == 1);
  CHECK(check::exit_code(run_check(r.after, check::Fix::none).result) == 0);
}

TEST_CASE("qcow2 check: I/O errors and malformed headers end the check cleanly") {
  auto r = run_check(image(), check::Fix::none,
                     io::MemoryFile::Fault{.op = io::MemoryFile::Op::Read, .skip = 3});
  CHECK(r.result.check_errors >= 1);
  CHECK_FALSE(r.result.failure.empty());
  CHECK(check::exit_code(r.result) == 1);

  auto img = image();
  format::store_be32(img.data() + 20, 40);  // cluster_bits
  r = run_check(img, check::Fix::all);
  CHECK(check::exit_code(r.result) == 1);
  CHECK(r.result.failure.find("cluster size") != std::string::npos);
  CHECK(r.after == img);  // nothing written

  std::vector<std::byte> tiny(16);
  r = run_check(tiny, check::Fix::none);
  CHECK(check::exit_code(r.result) == 1);
}

TEST_CASE("qcow2 check: repair by path opens the file itself (for O_DIRECT engines)") {
  auto img = image(true);
  format::store_be64(img.data() + format::HDR_INCOMPATIBLE_FEATURES, format::QCOW2_INCOMPAT_DIRTY);
  set_rc(img, (be64(img, l2_entry_pos(img, 1)) & format::L2E_OFFSET_MASK) / kCs, 0);
  char path[] = "/tmp/qnbd-check-test-XXXXXX";
  const int fd = ::mkstemp(path);
  REQUIRE(fd >= 0);
  REQUIRE(::pwrite(fd, img.data(), img.size(), 0) == static_cast<ssize_t>(img.size()));
  SyncRunner run;
  auto r = run.run(check::repair_dirty_image(run.ring(), path));
  CHECK(r.has_value());
  std::byte hdr[80];
  REQUIRE(::pread(fd, hdr, sizeof hdr, 0) == static_cast<ssize_t>(sizeof hdr));
  CHECK(format::load_be64(hdr + format::HDR_INCOMPATIBLE_FEATURES) == 0);
  ::close(fd);
  auto missing = run.run(check::repair_dirty_image(run.ring(), std::string(path) + ".missing"));
  CHECK_FALSE(missing.has_value());
  ::unlink(path);
}

// Reproducers found by fuzz_qcow2_check: images whose L1 table, refcount
// table or L2 table lie beyond the end of the file. The rebuild used to
// place the new refcount structure on them (so a second check found
// corruptions) and still report success.
namespace {

// tests/fuzz/corpus/fuzz_qcow2_check/regress-repair-still-broken (394 bytes).
constexpr const char* kRepairStillBroken =
    "514649fb00000002000000000000000000000000000000090000000000040000000000000000000800000000"
    "0000060000000000000002000000000100000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000514649fb0000000300000000000000000000"
    "0000000000000000000000000000000000000000000009000000000004000000000000000000000000000000"
    "000000000000000000000000000800000000000006000000000000000000000000000000000000000000";
// tests/fuzz/corpus/fuzz_qcow2_check/regress-rebuild-over-l2 (997 bytes).
constexpr const char* kRebuildOverL2 =
    "514649fb00000002000000000000000000000000000000090000000000040000000000000000000800000000"
    "0000060000000000000002000000000100000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000070000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "00000000007e000000000000000000000000537434657863657074696f6e0000000000000011111111111111"
    "1111111111111111118000000000002400000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000011111111111111"
    "1111111111111111111111111111111111111111111111111111111111111111111111111111111111111111"
    "1111111111111111111132111111071111111111111111111111111111111111111111111111111111111111"
    "1111111111111111111111111111111111111111111111111111111111111111111111111111111111111111"
    "1111111111111111111111111111111111111111111111111111111111";

std::vector<std::byte> from_hex(const char* h) {
  std::vector<std::byte> out;
  for (; h[0] && h[1]; h += 2)
    out.push_back(static_cast<std::byte>(std::stoi(std::string(h, 2), nullptr, 16)));
  return out;
}

std::uint64_t be64_or_zero(const std::vector<std::byte>& b, std::uint64_t pos) {
  return pos + 8 <= b.size() ? be64(b, pos) : 0;  // past EOF reads as zeros
}

// The active L1 table and the L2 tables it points to, entry by entry, as
// the image reads them (zeros past EOF): what a rebuild must not overwrite.
std::map<std::uint64_t, std::uint64_t> table_entries(const std::vector<std::byte>& b) {
  const std::uint64_t cs = std::uint64_t{1} << format::load_be32(b.data() + 20);
  const std::uint64_t l1 = be64(b, 40);
  std::map<std::uint64_t, std::uint64_t> out;
  for (std::uint64_t i = 0; i < std::min<std::uint32_t>(format::load_be32(b.data() + 36), 4096);
       ++i) {
    const std::uint64_t e = be64_or_zero(b, l1 + i * 8);
    out[l1 + i * 8] = e;
    if (const std::uint64_t l2 = e & format::L1E_OFFSET_MASK)
      for (std::uint64_t j = 0; j < cs / 8; ++j) out[l2 + j * 8] = be64_or_zero(b, l2 + j * 8);
  }
  return out;
}

// A repair may clear an entry (its table lay beyond EOF), make it read as
// zeros or fix its COPIED flag; anything else means it was overwritten.
bool repaired_or_same(std::uint64_t before, std::uint64_t after) {
  return after == before || after == 0 || after == format::QCOW_OFLAG_ZERO ||
         (after ^ before) == format::QCOW_OFLAG_COPIED;
}

int qemu_img_check(const std::vector<std::byte>& img) {
  char path[] = "/tmp/qnbd-check-regress-XXXXXX";
  const int fd = ::mkstemp(path);
  REQUIRE(fd >= 0);
  REQUIRE(::pwrite(fd, img.data(), img.size(), 0) == static_cast<ssize_t>(img.size()));
  ::close(fd);
  const int rc = std::system(fmt::format("qemu-img check -q {} >/dev/null 2>&1", path).c_str());
  ::unlink(path);
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

// check_image(Fix::all) on a file that, like the fuzzer's, cannot grow past
// 64 MiB (so far-away refcount blocks cannot be made to exist).
Run repair_limited(const std::vector<std::byte>& bytes) {
  SyncRunner run;
  fuzz::LimitedFile f(bytes, 64u << 20);
  Run out;
  check::CheckOptions o;
  o.fix = check::Fix::all;
  o.log = [&](const std::string& l) { out.log.push_back(l); };
  out.result = run.run(check::check_image(f, o));
  out.after = f.contents();
  return out;
}

}  // namespace

TEST_CASE("qcow2 check: a rebuild never overwrites tables beyond EOF nor hides a failure") {
  for (const char* hex : {kRepairStillBroken, kRebuildOverL2}) {
    const auto img = from_hex(hex);
    CAPTURE(img.size());
    const auto before = table_entries(img);
    const Run r = repair_limited(img);
    std::string log;
    for (const auto& l : r.log) log += l + "\n";
    CAPTURE(log);
    for (const auto& [pos, entry] : before) {
      CAPTURE(pos);
      CHECK(repaired_or_same(entry, be64_or_zero(r.after, pos)));
    }
    const Run again = run_check(r.after, check::Fix::none);
    if (check::exit_code(r.result) == 0) {
      // Claimed clean: both checkers must agree.
      CHECK(check::exit_code(again.result) == 0);
      CHECK(qemu_img_check(r.after) == 0);
    } else {
      CHECK((r.result.check_errors > 0 || r.result.corruptions > 0));
      if (r.result.check_errors) CHECK_FALSE(r.result.failure.empty());
    }
    // The engine's repair on open fails rather than serve a broken image.
    SyncRunner run;
    fuzz::LimitedFile f(img, 64u << 20);
    auto d = run.run(check::repair_dirty_image(f));
    if (d.has_value()) {
      CHECK(check::exit_code(run_check(f.contents(), check::Fix::none).result) == 0);
      CHECK(qemu_img_check(f.contents()) == 0);
    } else {
      CHECK(d.error() == make_error_code(errc::corrupt_image));
    }
  }
}

TEST_CASE("qcow2 check: a repair that fails anywhere says so and leaves the dirty bit set") {
  // A dirty image whose refcounts need a rebuild (as in the test above).
  auto img = image(true);
  format::store_be64(img.data() + format::HDR_INCOMPATIBLE_FEATURES, format::QCOW2_INCOMPAT_DIRTY);
  for (std::uint64_t g = 0; g < 64; g += 5)
    set_rc(img, (be64(img, l2_entry_pos(img, g)) & format::L2E_OFFSET_MASK) / kCs, 0);
  SyncRunner run;
  io::MemoryFile clean_run(img);
  REQUIRE(run.run(check::repair_dirty_image(clean_run)).has_value());
  const auto& stats = clean_run.stats();
  REQUIRE(stats.reads > 0);
  REQUIRE(stats.writes > 0);
  // Every single read or write failure, before, during or after the rebuild.
  for (auto op : {io::MemoryFile::Op::Read, io::MemoryFile::Op::Write}) {
    const std::uint64_t n = op == io::MemoryFile::Op::Read ? stats.reads : stats.writes;
    int failed = 0;
    for (std::uint64_t skip = 0; skip < n; ++skip) {
      CAPTURE(static_cast<int>(op));
      CAPTURE(skip);
      io::MemoryFile f(img);
      f.inject({.op = op, .skip = skip});
      auto r = run.run(check::repair_dirty_image(f));
      const auto& after = f.contents();
      if (r.has_value()) {
        CHECK(be64(after, format::HDR_INCOMPATIBLE_FEATURES) == 0);
        // A failed write while freeing the old structure leaves a leak,
        // which is harmless and reported; nothing else may be left.
        const auto again = run_check(after, check::Fix::none).result;
        CHECK(again.corruptions == 0);
        CHECK(again.check_errors == 0);
        CHECK(again.leaks == r->leaks);
      } else {
        ++failed;
        CHECK(r.error() == make_error_code(errc::corrupt_image));
        CHECK((be64(after, format::HDR_INCOMPATIBLE_FEATURES) & format::QCOW2_INCOMPAT_DIRTY) != 0);
      }
    }
    CHECK(failed > 0);  // the faults did hit
  }
}

// (The data clusters are leaked once the L1 moved, so the rebuild finds
// room inside the file and the L1 stays beyond EOF: a corruption left.)
TEST_CASE("qcow2 check: an L1 table beyond EOF, near or far, survives a rebuild, reported") {
  for (const std::uint64_t gap : {std::uint64_t{1}, std::uint64_t{1} << 16}) {
    CAPTURE(gap);
    auto img = image();
    const std::uint64_t l1 = img.size() + gap * kCs;
    format::store_be64(img.data() + 40, l1);
    format::store_be64(img.data() + format::HDR_INCOMPATIBLE_FEATURES,
                       format::QCOW2_INCOMPAT_DIRTY);
    set_rc(img, 0, 0);  // the header's refcount: asks for a rebuild
    const auto r = run_check(img, check::Fix::all);
    std::string log;
    for (const auto& l : r.log) log += l + "\n";
    CAPTURE(log);
    // Nothing was written on the L1 table (it reads as zeros).
    for (std::uint64_t pos = l1; pos < l1 + kCs && pos < r.after.size(); pos += 8)
      REQUIRE(be64(r.after, pos) == 0);
    if (check::exit_code(r.result) == 0) {
      CHECK(check::exit_code(run_check(r.after, check::Fix::none).result) == 0);
      CHECK(qemu_img_check(r.after) == 0);
      CHECK(be64(r.after, format::HDR_INCOMPATIBLE_FEATURES) == 0);
    } else {
      // Still beyond EOF: a corruption the repair reports, not hides.
      CHECK(r.result.corruptions > 0);
      CHECK(be64(r.after, format::HDR_INCOMPATIBLE_FEATURES) != 0);
      CHECK(check::exit_code(run_check(r.after, check::Fix::none).result) != 0);
      // The engine's repair on open fails, so the image is not served.
      SyncRunner run;
      io::MemoryFile f(img);
      auto d = run.run(check::repair_dirty_image(f));
      REQUIRE_FALSE(d.has_value());
      CHECK(d.error() == make_error_code(errc::corrupt_image));
      CHECK((be64(f.contents(), format::HDR_INCOMPATIBLE_FEATURES) &
             format::QCOW2_INCOMPAT_DIRTY) != 0);
    }
  }
}
