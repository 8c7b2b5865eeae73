// QEMU-compatible image locks: the permissions per use match what qemu-nbd
// 7.2 takes (observed in /proc/locks), and two lock holders in one process
// conflict exactly where two QEMU processes would. Cross-process checks
// against the real qemu tools are in tests/integration/image_locking.py.
#include "io/image_lock.h"

#include <doctest/doctest.h>

#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <sys/stat.h>

using namespace qnbd::io;

namespace {

struct TempFile {
  std::string path;
  TempFile() {
    std::string tmpl = "/tmp/qnbd-lock-XXXXXX";
    int fd = ::mkstemp(tmpl.data());
    REQUIRE(fd >= 0);
    ::close(fd);
    path = tmpl;
  }
  ~TempFile() { ::unlink(path.c_str()); }
};

// Lock bytes held on `path` by anyone, from /proc/locks.
std::set<std::uint64_t> locked_bytes(const std::string& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  std::ifstream f("/proc/locks");
  std::set<std::uint64_t> out;
  std::string line;
  const std::string ino = ":" + std::to_string(st.st_ino);
  while (std::getline(f, line)) {
    std::istringstream in(line);
    std::string n, kind, adv, type, pid, dev, start, end;
    in >> n >> kind >> adv >> type >> pid >> dev >> start >> end;
    if (kind != "OFDLCK" || dev.size() < ino.size() ||
        dev.compare(dev.size() - ino.size(), ino.size(), ino) != 0)
      continue;
    for (auto b = std::stoull(start); b <= std::stoull(end); ++b) out.insert(b);
  }
  return out;
}

std::string conflict(const std::string& path, LockPerms p) {
  try {
    ImageLock::acquire(path, p);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

const LockPerms qcow2_rw = qemu_lock_perms({.qcow2 = true});
const LockPerms qcow2_ro = qemu_lock_perms({.qcow2 = true, .read_only = true});
const LockPerms raw_rw = qemu_lock_perms({});
const LockPerms shared_ro = qemu_lock_perms({.read_only = true, .force_share = true});

}  // namespace

TEST_CASE("lock bytes are the ones qemu-nbd 7.2 takes") {
  TempFile f;
  auto bytes = [&](LockRole r) {
    auto lock = ImageLock::acquire(f.path, qemu_lock_perms(r));
    return locked_bytes(f.path);
  };
  using S = std::set<std::uint64_t>;
  CHECK(bytes({.qcow2 = true}) == S{100, 101, 103, 201, 203});
  CHECK(bytes({.qcow2 = true, .read_only = true}) == S{100, 201, 203});
  CHECK(bytes({}) == S{100, 101, 203});
  CHECK(bytes({.read_only = true}) == S{100, 203});
  CHECK(bytes({.qcow2 = true, .read_only = true, .backing = true}) == S{100, 201, 203});
  CHECK(bytes({.read_only = true, .backing = true}) == S{100});
  CHECK(bytes({.qcow2 = true, .read_only = true, .force_share = true}) == S{100});
  CHECK(locked_bytes(f.path).empty());  // released with the lock
}

TEST_CASE("a writer excludes other writers and consistent readers, not shared readers") {
  TempFile f;
  {
    auto w = ImageLock::acquire(f.path, qcow2_rw);
    CHECK(conflict(f.path, qcow2_rw).find("write lock held by another process") !=
          std::string::npos);
    CHECK(conflict(f.path, qcow2_ro).find("write lock held by another process") !=
          std::string::npos);
    CHECK(conflict(f.path, raw_rw).find("does not share write access") != std::string::npos);
    CHECK(conflict(f.path, shared_ro).empty());
  }
  CHECK(conflict(f.path, qcow2_rw).empty());  // gone with the holder
}

TEST_CASE("readers share; a reader keeps writers out") {
  TempFile f;
  auto r1 = ImageLock::acquire(f.path, qcow2_ro);
  auto r2 = ImageLock::acquire(f.path, qcow2_ro);
  CHECK(conflict(f.path, qcow2_rw).find("does not share write access") != std::string::npos);
  r1 = ImageLock();
  CHECK(conflict(f.path, qcow2_rw) != "");
  r2 = ImageLock();
  CHECK(conflict(f.path, qcow2_rw) == "");
}

TEST_CASE("a missing file is a clear error") {
  CHECK(conflict("/nonexistent/qnbd-image", qcow2_ro).find("No such file") != std::string::npos);
}
