#include "io/image_lock.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace qnbd::io {
namespace {

constexpr unsigned kPermBits = 4;  // bits of BLK_PERM_ALL

// One byte, shared (F_RDLCK) or tested exclusively (F_WRLCK), as qemu_lock_fd
// and qemu_lock_fd_test do.
struct flock byte_lock(std::uint64_t offset, short type) {
  struct flock fl {};
  fl.l_whence = SEEK_SET;
  fl.l_start = static_cast<off_t>(offset);
  fl.l_len = 1;
  fl.l_type = type;
  return fl;
}

// True if another open file description holds a lock on the byte.
bool locked_by_others(int fd, std::uint64_t offset) {
  struct flock fl = byte_lock(offset, F_WRLCK);
  if (::fcntl(fd, F_OFD_GETLK, &fl) < 0) return false;
  return fl.l_type != F_UNLCK;
}

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw std::runtime_error(path + ": " + what +
                           " (is QEMU, qemu-nbd or another qnbd export using the image?)");
}

}  // namespace

LockPerms qemu_lock_perms(const LockRole& r) {
  if (r.force_share || (r.backing && !r.qcow2)) return {BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL};
  LockPerms p{BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL & ~BLK_PERM_RESIZE};
  if (r.qcow2) p.shared &= ~BLK_PERM_WRITE;
  if (!r.read_only && !r.backing) p.perm |= BLK_PERM_WRITE | (r.qcow2 ? BLK_PERM_RESIZE : 0);
  return p;
}

const char* perm_name(std::uint32_t bit) {
  switch (bit) {
    case BLK_PERM_CONSISTENT_READ:
      return "consistent read";
    case BLK_PERM_WRITE:
      return "write";
    case BLK_PERM_WRITE_UNCHANGED:
      return "write unchanged";
    case BLK_PERM_RESIZE:
      return "resize";
  }
  return "unknown";
}

ImageLock ImageLock::acquire(const std::string& path, LockPerms perms) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error(path + ": " + std::strerror(errno));
  ImageLock lock(fd);
  // raw_apply_lock_bytes: hold what we use and what we refuse to share...
  for (unsigned i = 0; i < kPermBits; ++i) {
    const std::uint32_t bit = 1u << i;
    const bool hold[2] = {(perms.perm & bit) != 0, (perms.shared & bit) == 0};
    const std::uint64_t at[2] = {QEMU_LOCK_PERM_BASE + i, QEMU_LOCK_SHARED_BASE + i};
    for (int k = 0; k < 2; ++k) {
      if (!hold[k]) continue;
      struct flock fl = byte_lock(at[k], F_RDLCK);
      if (::fcntl(fd, F_OFD_SETLK, &fl) < 0)
        fail(path,
             std::string("cannot take the ") + perm_name(bit) + " lock: " + std::strerror(errno));
    }
  }
  // ...then raw_check_lock_bytes: nobody may refuse what we use, nobody may
  // hold what we refuse to share.
  for (unsigned i = 0; i < kPermBits; ++i) {
    const std::uint32_t bit = 1u << i;
    if (!(perms.shared & bit) && locked_by_others(fd, QEMU_LOCK_PERM_BASE + i))
      fail(path, std::string(perm_name(bit)) + " lock held by another process");
    if ((perms.perm & bit) && locked_by_others(fd, QEMU_LOCK_SHARED_BASE + i))
      fail(path, std::string("another process does not share ") + perm_name(bit) + " access");
  }
  return lock;
}

ImageLock& ImageLock::operator=(ImageLock&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.fd_;
    o.fd_ = -1;
  }
  return *this;
}

ImageLock::~ImageLock() {
  if (fd_ >= 0) ::close(fd_);  // closing the description drops its OFD locks
}

}  // namespace qnbd::io
