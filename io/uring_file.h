// A real file accessed through the event loop's io_uring (or blocking
// syscalls when io_uring is unavailable).
#pragma once

#include "common/wait_queue.h"
#include "io/file.h"
#include "io/uring.h"

#include <memory>
#include <string>

namespace qnbd::io {

struct OpenOptions {
  bool read_only = false;
  bool direct = false;  // O_DIRECT (--cache none)
  bool create = false;
};

class UringFile final : public File {
 public:
  static result<std::unique_ptr<UringFile>> open(Ring& ring, const std::string& path,
                                                 OpenOptions opts);
  ~UringFile() override;

  task<> readv_at(std::uint64_t offset, std::span<const iovec> iov) override;
  task<> writev_at(std::uint64_t offset, std::span<const iovec> iov) override;
  bool start_read(std::uint64_t offset, std::span<std::byte> buf, Completion* c,
                  Ring* away) override;
  bool start_write(std::uint64_t offset, std::span<const std::byte> buf, Completion* c,
                   Ring* away) override;
  task<> sync() override;
  task<> sync_blocking() override;
  task<> punch_hole(std::uint64_t offset, std::uint64_t length) override;
  task<> zero_range(std::uint64_t offset, std::uint64_t length) override;
  task<> allocate(std::uint64_t offset, std::uint64_t length) override;
  result<> truncate(std::uint64_t size) override;
  result<std::uint64_t> size() const override;
  result<std::uint64_t> seek_data(std::uint64_t offset) const override;
  result<std::uint64_t> seek_hole(std::uint64_t offset) const override;
  bool read_only() const override { return read_only_; }
  int fd() const { return fd_; }
  bool direct() const { return direct_; }
  std::uint32_t alignment() const override { return direct_ ? 512 : 1; }
  result<std::uint64_t> allocated() const override;
  std::uint64_t syncs_started() const override { return syncs_; }

 private:
  UringFile(Ring& ring, int fd, bool ro, bool direct)
      : ring_(ring), fd_(fd), read_only_(ro), direct_(direct) {}
  task<> fallocate(int mode, std::uint64_t offset, std::uint64_t length);
  bool aligned(std::uint64_t offset, std::span<const iovec> iov) const;
  task<> bounce_read(std::uint64_t start, std::span<std::byte> blocks);
  task<> bounced(bool write, std::uint64_t offset, std::span<const iovec> iov);
  task<> raw_writev(std::uint64_t offset, std::span<const iovec> iov);
  boost::asio::awaitable<int> rw(bool write, std::uint64_t offset, const iovec* iov, unsigned n);

  Ring& ring_;
  AsyncMutex bounce_;
  int fd_;
  bool read_only_;
  bool direct_;
  std::uint64_t syncs_ = 0;
};

}  // namespace qnbd::io
