// The BlockBackend adapter over a qcow2 Image: bounds checks and capability
// flags; everything else is the engine's.
#pragma once

#include "backend/block_backend.h"
#include "qcow2/engine/image.h"

#include <memory>

namespace qnbd::qcow2 {

class Qcow2Backend final : public BlockBackend {
 public:
  explicit Qcow2Backend(std::unique_ptr<Image> image) : image_(std::move(image)) {}

  std::uint64_t size() const override { return image_->size(); }
  Capabilities capabilities() const override;
  task<> read(std::uint64_t offset, std::span<std::byte> buf) override;
  task<> write(std::uint64_t offset, std::span<const std::byte> buf, bool fua) override;
  task<> write_zeroes(std::uint64_t offset, std::uint64_t length, bool may_trim, bool fast,
                      bool fua) override;
  task<> trim(std::uint64_t offset, std::uint64_t length, bool fua) override;
  task<> flush() override;
  task<std::vector<Extent>> block_status(std::uint64_t offset, std::uint64_t length) override;
  task<> cache(std::uint64_t offset, std::uint64_t length) override;
  task<> close() override;

  Image& image() { return *image_; }

 private:
  bool in_range(std::uint64_t offset, std::uint64_t length) const {
    return offset <= size() && length <= size() - offset;
  }
  std::unique_ptr<Image> image_;
};

}  // namespace qnbd::qcow2
