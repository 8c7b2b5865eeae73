// The file interface every image layer does its I/O through. Two
// implementations: UringFile (io_uring on a real file) and MemoryFile (in
// memory, with injectable failures for engine and crash tests);
// tests/unit/file_contract_test.cpp holds both to the contract below.
#pragma once

#include "common/task.h"
#include "io/completion.h"

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <span>

namespace qnbd::io {

class Ring;

class File {
 public:
  virtual ~File() = default;

  // Reads exactly buf.size() bytes; bytes past the end of the file read as
  // zeros (a sparse qcow2 image may reference clusters beyond EOF only when
  // it was grown by truncate, and those are zero).
  virtual task<> readv_at(std::uint64_t offset, std::span<const iovec> iov) = 0;
  // Writes every byte or fails; a short write is an error (ENOSPC). Any
  // offset and length: with alignment() > 1 an unaligned write rewrites the
  // whole blocks it touches, so past the end it grows the file to a block
  // boundary.
  virtual task<> writev_at(std::uint64_t offset, std::span<const iovec> iov) = 0;
  // fdatasync: every completed write is durable when this returns.
  virtual task<> sync() = 0;
  // The same, done on the calling thread if that is cheaper: for callers
  // that know nothing else is waiting for their event loop.
  virtual task<> sync_blocking() { return sync(); }
  virtual task<> punch_hole(std::uint64_t offset, std::uint64_t length) = 0;
  virtual task<> zero_range(std::uint64_t offset, std::uint64_t length) = 0;
  virtual task<> allocate(std::uint64_t offset, std::uint64_t length) = 0;
  virtual result<> truncate(std::uint64_t size) = 0;
  virtual result<std::uint64_t> size() const = 0;
  // SEEK_DATA / SEEK_HOLE semantics; files that cannot tell report all data.
  virtual result<std::uint64_t> seek_data(std::uint64_t offset) const = 0;
  virtual result<std::uint64_t> seek_hole(std::uint64_t offset) const = 0;
  virtual bool read_only() const = 0;
  // Alignment of offsets, lengths and buffers that the file transfers
  // directly (O_DIRECT), 1 if none; other requests cost a bounce buffer.
  virtual std::uint32_t alignment() const { return 1; }
  // Bytes the file system allocated to the file (metrics); size() if unknown.
  virtual result<std::uint64_t> allocated() const { return size(); }
  // Syncs started on this file so far (metrics); 0 if not counted.
  virtual std::uint64_t syncs_started() const { return 0; }

  // The request fast path: starts one read (write) of buf at `offset` with
  // no coroutine and returns true, or returns false having started nothing
  // (the caller then uses readv_at / writev_at, which handle what this does
  // not: unaligned O_DIRECT, no io_uring, memory files). `c` is completed
  // with the byte count (short at end of file) or a negative errno, possibly
  // before this returns; the caller keeps buf and c alive until then.
  // `away`: another event loop's ring to run the I/O on (a connection served
  // on another worker), for a file whose descriptor any thread may use;
  // null: the file's own.
  virtual bool start_read(std::uint64_t, std::span<std::byte>, Completion*, Ring* away) {
    (void)away;
    return false;
  }
  virtual bool start_write(std::uint64_t, std::span<const std::byte>, Completion*, Ring* away) {
    (void)away;
    return false;
  }

  // Coroutines (not plain wrappers) so the iovec lives in the frame for the
  // whole operation.
  task<> read_at(std::uint64_t offset, std::span<std::byte> buf) {
    const iovec v{buf.data(), buf.size()};
    co_return co_await readv_at(offset, std::span<const iovec>(&v, 1));
  }
  task<> write_at(std::uint64_t offset, std::span<const std::byte> buf) {
    const iovec v{const_cast<std::byte*>(buf.data()), buf.size()};
    co_return co_await writev_at(offset, std::span<const iovec>(&v, 1));
  }
};

inline std::size_t iov_bytes(std::span<const iovec> iov) {
  std::size_t n = 0;
  for (const auto& v : iov) n += v.iov_len;
  return n;
}

}  // namespace qnbd::io
