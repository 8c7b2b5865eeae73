#include "io/uring_file.h"
#include "io/aligned_bytes.h"

#include <boost/container/small_vector.hpp>

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <new>
#include <cstring>

namespace qnbd::io {
namespace {

constexpr unsigned kMaxIov = IOV_MAX;

// Drops the first `n` bytes from an iovec array in place.
void consume(boost::container::small_vector<iovec, 8>& v, std::size_t n) {
  std::size_t i = 0;
  while (i < v.size() && n >= v[i].iov_len) n -= v[i++].iov_len;
  v.erase(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(i));
  if (!v.empty() && n) {
    v[0].iov_base = static_cast<char*>(v[0].iov_base) + n;
    v[0].iov_len -= n;
  }
}

}  // namespace

result<std::unique_ptr<UringFile>> UringFile::open(Ring& ring, const std::string& path,
                                                   OpenOptions opts) {
  int flags = O_CLOEXEC | (opts.read_only ? O_RDONLY : O_RDWR);
  if (opts.create) flags |= O_CREAT;
  if (opts.direct) flags |= O_DIRECT;
  int fd = ::open(path.c_str(), flags, 0644);
  if (fd < 0) return last_errno();
  return std::unique_ptr<UringFile>(new UringFile(ring, fd, opts.read_only, opts.direct));
}

UringFile::~UringFile() { ::close(fd_); }

boost::asio::awaitable<int> UringFile::rw(bool write, std::uint64_t offset, const iovec* iov,
                                          unsigned n) {
  // Buffered writes complete in the page cache in microseconds, but io_uring
  // hands them to a kernel worker thread (ext4 has no async buffered write
  // path here); doing them inline is cheaper. Buffered reads the page cache
  // holds are done inline too (RWF_NOWAIT: one syscall instead of a ring
  // round trip); the rest, and O_DIRECT I/O, go through the ring.
  if (!ring_.available() || (write && !direct_)) {
    ssize_t r = write ? ::pwritev(fd_, iov, static_cast<int>(n), static_cast<off_t>(offset))
                      : ::preadv(fd_, iov, static_cast<int>(n), static_cast<off_t>(offset));
    co_return r < 0 ? -errno : static_cast<int>(r);
  }
  if (!write && !direct_) {
    ssize_t r = ::preadv2(fd_, iov, static_cast<int>(n), static_cast<off_t>(offset), RWF_NOWAIT);
    if (r > 0) co_return static_cast<int>(r);
  }
  int fd = fd_;
  co_return co_await ring_.run([=](io_uring_sqe* sqe) {
    if (write)
      io_uring_prep_writev(sqe, fd, iov, n, offset);
    else
      io_uring_prep_readv(sqe, fd, iov, n, offset);
  });
}

bool UringFile::aligned(std::uint64_t offset, std::span<const iovec> iov) const {
  const std::uint64_t a = alignment();
  if (offset % a) return false;
  for (const auto& v : iov)
    if (reinterpret_cast<std::uintptr_t>(v.iov_base) % a || v.iov_len % a) return false;
  return true;
}

// O_DIRECT needs aligned offsets, lengths and memory; metadata I/O (headers,
// single table entries) is not. Such requests go through an aligned bounce
// buffer covering the whole blocks they touch.
task<> UringFile::bounce_read(std::uint64_t start, std::span<std::byte> blocks) {
  std::size_t done = 0;
  while (done < blocks.size()) {
    iovec v{blocks.data() + done, blocks.size() - done};
    int r = co_await rw(false, start + done, &v, 1);
    if (r == -EINTR || r == -EAGAIN) continue;
    if (r < 0) co_return errno_error(-r);
    if (r == 0) break;
    done += static_cast<std::size_t>(r);
    if (done % alignment()) break;  // end of file inside a block
  }
  std::memset(blocks.data() + done, 0, blocks.size() - done);
  co_return result<>{};
}

task<> UringFile::bounced(bool write, std::uint64_t offset, std::span<const iovec> iov) {
  const std::uint64_t a = alignment();
  const std::uint64_t len = iov_bytes(iov);
  const std::uint64_t start = offset / a * a;
  const std::uint64_t end = (offset + len + a - 1) / a * a;
  const AlignedBytes mem(end - start);
  const std::span<std::byte> blocks = mem.span();
  std::byte* p = blocks.data() + (offset - start);
  if (!write || end - start <= 2 * a) {
    // Reads need every block; short writes keep the bytes around them.
    if (!write || start != offset || end != offset + len)
      if (auto r = co_await bounce_read(start, blocks); !r) co_return r;
  } else {
    // Longer writes only need the partial edge blocks read first.
    if (start != offset)
      if (auto r = co_await bounce_read(start, blocks.first(a)); !r) co_return r;
    if (end != offset + len)
      if (auto r = co_await bounce_read(end - a, blocks.last(a)); !r) co_return r;
  }
  for (const auto& v : iov) {
    if (write)
      std::memcpy(p, v.iov_base, v.iov_len);
    else
      std::memcpy(v.iov_base, p, v.iov_len);
    p += v.iov_len;
  }
  if (!write) co_return result<>{};
  const iovec whole{blocks.data(), blocks.size()};
  co_return co_await raw_writev(start, std::span<const iovec>(&whole, 1));
}

task<> UringFile::readv_at(std::uint64_t offset, std::span<const iovec> iov) {
  if (direct_ && !aligned(offset, iov)) co_return co_await bounced(false, offset, iov);
  boost::container::small_vector<iovec, 8> left(iov.begin(), iov.end());
  consume(left, 0);  // zero-length entries would read as end of file
  while (!left.empty()) {
    unsigned n = static_cast<unsigned>(std::min<std::size_t>(left.size(), kMaxIov));
    int r = co_await rw(false, offset, left.data(), n);
    if (r == -EINTR || r == -EAGAIN) continue;
    if (r < 0) co_return errno_error(-r);
    if (r == 0) {  // end of file: the rest reads as zeros
      for (auto& v : left) std::memset(v.iov_base, 0, v.iov_len);
      break;
    }
    consume(left, static_cast<std::size_t>(r));
    offset += static_cast<std::uint64_t>(r);
  }
  co_return result<>{};
}

task<> UringFile::writev_at(std::uint64_t offset, std::span<const iovec> iov) {
  if (read_only_) co_return make_error_code(errc::read_only);
  if (direct_ && !aligned(offset, iov)) {
    // Two bounced writes may share an edge block while touching different
    // bytes of it: one at a time, or one read-modify-write undoes the other.
    auto one_at_a_time = co_await bounce_.lock();
    co_return co_await bounced(true, offset, iov);
  }
  co_return co_await raw_writev(offset, iov);
}

// Same choices as rw(): buffered writes and cached buffered reads inline,
// the rest through the ring; one plain (not vectored) SQE, so no iovec must
// outlive this call.
bool UringFile::start_read(std::uint64_t offset, std::span<std::byte> buf, Completion* c,
                           Ring* away) {
  Ring& ring = away ? *away : ring_;
  const iovec v{buf.data(), buf.size()};
  if (!ring.available() || buf.empty() || (direct_ && !aligned(offset, {&v, 1}))) return false;
  if (!direct_) {
    const ssize_t r = ::preadv2(fd_, &v, 1, static_cast<off_t>(offset), RWF_NOWAIT);
    if (r == static_cast<ssize_t>(buf.size())) {
      c->complete(c, static_cast<int>(r));
      return true;
    }
  }
  ring.submit(c, [fd = fd_, p = buf.data(), n = static_cast<unsigned>(buf.size()),
                  offset](io_uring_sqe* sqe) { io_uring_prep_read(sqe, fd, p, n, offset); });
  return true;
}

bool UringFile::start_write(std::uint64_t offset, std::span<const std::byte> buf, Completion* c,
                            Ring* away) {
  Ring& ring = away ? *away : ring_;
  const iovec v{const_cast<std::byte*>(buf.data()), buf.size()};
  if (read_only_ || !ring.available() || buf.empty() || (direct_ && !aligned(offset, {&v, 1})))
    return false;
  if (!direct_) {
    const ssize_t r = ::pwritev(fd_, &v, 1, static_cast<off_t>(offset));
    c->complete(c, r < 0 ? -errno : static_cast<int>(r));
    return true;
  }
  ring.submit(c, [fd = fd_, p = buf.data(), n = static_cast<unsigned>(buf.size()),
                  offset](io_uring_sqe* sqe) { io_uring_prep_write(sqe, fd, p, n, offset); });
  return true;
}

task<> UringFile::raw_writev(std::uint64_t offset, std::span<const iovec> iov) {
  boost::container::small_vector<iovec, 8> left(iov.begin(), iov.end());
  consume(left, 0);  // zero-length entries would look like a full disk
  while (!left.empty()) {
    unsigned n = static_cast<unsigned>(std::min<std::size_t>(left.size(), kMaxIov));
    int r = co_await rw(true, offset, left.data(), n);
    if (r == -EINTR || r == -EAGAIN) continue;
    if (r < 0) co_return errno_error(-r);
    if (r == 0) co_return errno_error(ENOSPC);
    consume(left, static_cast<std::size_t>(r));
    offset += static_cast<std::uint64_t>(r);
  }
  co_return result<>{};
}

task<> UringFile::sync() {
  ++syncs_;
  if (!ring_.available()) {
    if (::fdatasync(fd_) < 0) co_return last_errno();
    co_return result<>{};
  }
  int fd = fd_;
  int r = co_await ring_.run(
      [=](io_uring_sqe* sqe) { io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC); });
  if (r < 0) co_return errno_error(-r);
  co_return result<>{};
}

// io_uring hands fsync to a kernel worker thread; waiting for it costs a
// thread wake-up and an event-loop round on top of the sync itself.
task<> UringFile::sync_blocking() {
  ++syncs_;
  if (::fdatasync(fd_) < 0) co_return last_errno();
  co_return result<>{};
}

task<> UringFile::fallocate(int mode, std::uint64_t offset, std::uint64_t length) {
  if (read_only_) co_return make_error_code(errc::read_only);
  if (length == 0) co_return result<>{};
  int r;
  if (!ring_.available()) {
    r = ::fallocate(fd_, mode, static_cast<off_t>(offset), static_cast<off_t>(length)) < 0 ? -errno
                                                                                           : 0;
  } else {
    int fd = fd_;
    r = co_await ring_.run(
        [=](io_uring_sqe* sqe) { io_uring_prep_fallocate(sqe, fd, mode, offset, length); });
  }
  if (r < 0) co_return errno_error(-r);
  co_return result<>{};
}

task<> UringFile::punch_hole(std::uint64_t offset, std::uint64_t length) {
  return fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
}

task<> UringFile::zero_range(std::uint64_t offset, std::uint64_t length) {
  return fallocate(FALLOC_FL_ZERO_RANGE, offset, length);
}

task<> UringFile::allocate(std::uint64_t offset, std::uint64_t length) {
  return fallocate(0, offset, length);
}

result<> UringFile::truncate(std::uint64_t size) {
  if (read_only_) return make_error_code(errc::read_only);
  if (::ftruncate(fd_, static_cast<off_t>(size)) < 0) return last_errno();
  return {};
}

result<std::uint64_t> UringFile::allocated() const {
  struct stat st;
  if (::fstat(fd_, &st) < 0) return last_errno();
  if (S_ISBLK(st.st_mode)) return size();
  return static_cast<std::uint64_t>(st.st_blocks) * 512;
}

result<std::uint64_t> UringFile::size() const {
  struct stat st;
  if (::fstat(fd_, &st) < 0) return last_errno();
  if (S_ISBLK(st.st_mode)) {
    off_t end = ::lseek(fd_, 0, SEEK_END);
    if (end < 0) return last_errno();
    return static_cast<std::uint64_t>(end);
  }
  return static_cast<std::uint64_t>(st.st_size);
}

result<std::uint64_t> UringFile::seek_data(std::uint64_t offset) const {
  off_t r = ::lseek(fd_, static_cast<off_t>(offset), SEEK_DATA);
  if (r < 0) return last_errno();
  return static_cast<std::uint64_t>(r);
}

result<std::uint64_t> UringFile::seek_hole(std::uint64_t offset) const {
  off_t r = ::lseek(fd_, static_cast<off_t>(offset), SEEK_HOLE);
  if (r < 0) return last_errno();
  return static_cast<std::uint64_t>(r);
}

}  // namespace qnbd::io
