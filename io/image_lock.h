// QEMU-compatible advisory image locking. QEMU (block/file-posix.c,
// raw_apply_lock_bytes / raw_check_lock_bytes) takes shared OFD byte-range
// locks on every image file it opens: byte QEMU_LOCK_PERM_BASE+bit for each
// permission it holds, byte QEMU_LOCK_SHARED_BASE+bit for each permission it
// does NOT let others hold. Opening then tests the opposite bytes for locks of
// other open file descriptions. Taking the same bytes makes qemu, qemu-img,
// qemu-io, qemu-nbd and qnbd refuse each other exactly where two QEMU
// processes would. OFD locks belong to an open file description, so two
// exports of one file in this process conflict like two processes do.
#pragma once

#include <cstdint>
#include <string>

namespace qnbd::io {

// include/block/block-common.h
inline constexpr std::uint32_t BLK_PERM_CONSISTENT_READ = 0x01;
inline constexpr std::uint32_t BLK_PERM_WRITE = 0x02;
inline constexpr std::uint32_t BLK_PERM_WRITE_UNCHANGED = 0x04;
inline constexpr std::uint32_t BLK_PERM_RESIZE = 0x08;
inline constexpr std::uint32_t BLK_PERM_ALL = 0x0f;
// block/file-posix.c
inline constexpr std::uint64_t QEMU_LOCK_PERM_BASE = 100;
inline constexpr std::uint64_t QEMU_LOCK_SHARED_BASE = 200;

struct LockPerms {
  std::uint32_t perm = 0;    // what we do to the file
  std::uint32_t shared = 0;  // what we let others do
  bool operator==(const LockPerms&) const = default;
};

// How the file is used, which decides the permissions QEMU would take on it.
struct LockRole {
  bool qcow2 = false;        // a format with metadata in the file
  bool read_only = false;    // no guest writes
  bool backing = false;      // a backing file below the served image
  bool force_share = false;  // read-only and sharing everything (qemu -U)
};

// The permissions qemu-nbd 7.2 takes for the same use, as observed in
// /proc/locks: a qcow2 file never shares write or resize (metadata), a raw
// file never shares resize, a raw backing file shares everything.
LockPerms qemu_lock_perms(const LockRole& role);

// "write", "resize", ... as QEMU names them in its messages.
const char* perm_name(std::uint32_t bit);

// An open file description holding the lock bytes; released on destruction.
class ImageLock {
 public:
  ImageLock() = default;
  // Takes the lock bytes for `perms` on `path`. Throws std::runtime_error
  // "PATH: write lock held by another process (...)" when another process (or
  // another export of this one) holds the file against us.
  static ImageLock acquire(const std::string& path, LockPerms perms);
  ImageLock(ImageLock&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  ImageLock& operator=(ImageLock&& o) noexcept;
  ImageLock(const ImageLock&) = delete;
  ImageLock& operator=(const ImageLock&) = delete;
  ~ImageLock();
  bool held() const { return fd_ >= 0; }

 private:
  explicit ImageLock(int fd) : fd_(fd) {}
  int fd_ = -1;
};

}  // namespace qnbd::io
