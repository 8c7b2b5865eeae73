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

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <unistd.h>

#include <cstdlib>

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
