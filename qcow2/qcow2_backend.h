// The BlockBackend adapter over a qcow2 Image: capability flags and the
// engine's active-operation accounting; everything else is the engine's.
#pragma once

#include "backend/block_backend.h"
#include "qcow2/engine/defrag_task.h"
#include "qcow2/engine/image.h"

#include <memory>

namespace qnbd::qcow2 {

class Qcow2Backend final : public BlockBackend {
 public:
  explicit Qcow2Backend(std::unique_ptr<Image> image) : image_(std::move(image)) {}

  std::uint64_t size() const override { return image_->size(); }
  Capabilities capabilities() const override;
  BackendStats stats() const override {
    BackendStats s = image_->stats();
    if (defrag_) s.defrag = defrag_->progress();
    return s;
  }
  Image& image() { return *image_; }
  // Online defragmentation on `ex` (the image's executor) until close.
  void start_defrag(const DefragOptions& o, const boost::asio::any_io_executor& ex);

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
  // Never `away`: the engine's caches live on the home worker, so
  // capabilities() does not offer fast_io_anywhere.
  bool do_start_read(std::uint64_t offset, std::span<std::byte> buf, io::Completion* c,
                     io::Ring*) override {
    return image_->start_read(offset, buf, c);
  }
  bool do_start_write(std::uint64_t offset, std::span<const std::byte> buf, io::Completion* c,
                      io::Ring*) override {
    return image_->start_write(offset, buf, c);
  }

 private:
  std::unique_ptr<Image> image_;
  std::unique_ptr<DefragTask> defrag_;
};

}  // namespace qnbd::qcow2
