// Serves a raw file or block device as is.
#pragma once

#include "backend/block_backend.h"
#include "io/file.h"

#include <memory>

namespace qnbd {

class RawBackend final : public BlockBackend {
 public:
  explicit RawBackend(std::unique_ptr<io::File> file);

  std::uint64_t size() const override { return size_; }
  Capabilities capabilities() const override;
  BackendStats stats() const override { return file_stats(*file_); }
  // qemu:allocation-depth: a raw file holds every byte itself (depth 1).
  std::string context_problem(const std::string& context) const override;
  task<std::vector<StatusRun>> context_status(const std::string& context, std::uint64_t offset,
                                              std::uint64_t length) override;

 protected:
  task<> do_read(std::uint64_t offset, std::span<std::byte> buf) override;
  task<> do_write(std::uint64_t offset, std::span<const std::byte> buf, bool fua) override;
  task<> do_write_zeroes(std::uint64_t offset, std::uint64_t length, bool may_trim, bool fast,
                         bool fua) override;
  task<> do_trim(std::uint64_t offset, std::uint64_t length, bool fua) override;
  task<> do_flush() override;
  task<std::vector<Extent>> do_block_status(std::uint64_t offset, std::uint64_t length) override;
  task<> do_cache(std::uint64_t offset, std::uint64_t length) override;
  task<> do_close() override;
  bool do_start_read(std::uint64_t offset, std::span<std::byte> buf, io::Completion* c,
                     io::Ring* away) override {
    return file_->start_read(offset, buf, c, away);
  }
  bool do_start_write(std::uint64_t offset, std::span<const std::byte> buf, io::Completion* c,
                      io::Ring* away) override {
    return file_->start_write(offset, buf, c, away);
  }

 private:
  task<> write_zero_buffers(std::uint64_t offset, std::uint64_t length);

  std::unique_ptr<io::File> file_;
  std::uint64_t size_;
};

}  // namespace qnbd
