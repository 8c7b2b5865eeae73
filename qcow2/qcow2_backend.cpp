#include "qcow2/qcow2_backend.h"

namespace qnbd::qcow2 {

Capabilities Qcow2Backend::capabilities() const {
  Capabilities c;
  c.read_only = image_->read_only();
  c.preferred_block = static_cast<std::uint32_t>(
      std::min<std::uint64_t>(image_->geometry().cluster_size(), 64 * 1024));
  return c;
}

task<> Qcow2Backend::read(std::uint64_t offset, std::span<std::byte> buf) {
  if (!in_range(offset, buf.size())) co_return make_error_code(errc::out_of_range);
  if (buf.empty()) co_return result<>{};
  Image::ActiveOp op(*image_);
  co_return co_await image_->read(offset, buf);
}

task<> Qcow2Backend::write(std::uint64_t offset, std::span<const std::byte> buf, bool fua) {
  if (!in_range(offset, buf.size())) co_return make_error_code(errc::out_of_range);
  Image::ActiveOp op(*image_);
  if (buf.empty()) co_return fua ? co_await image_->flush() : result<>{};
  co_return co_await image_->write(offset, buf, fua);
}

task<> Qcow2Backend::write_zeroes(std::uint64_t offset, std::uint64_t length, bool may_trim,
                                  bool fast, bool fua) {
  if (!in_range(offset, length)) co_return make_error_code(errc::out_of_range);
  if (length == 0) co_return result<>{};
  Image::ActiveOp op(*image_);
  co_return co_await image_->write_zeroes(offset, length, may_trim, fast, fua);
}

task<> Qcow2Backend::trim(std::uint64_t offset, std::uint64_t length, bool fua) {
  if (!in_range(offset, length)) co_return make_error_code(errc::out_of_range);
  if (length == 0) co_return result<>{};
  Image::ActiveOp op(*image_);
  co_return co_await image_->trim(offset, length, fua);
}

task<> Qcow2Backend::flush() {
  Image::ActiveOp op(*image_);
  co_return co_await image_->flush();
}

task<std::vector<Extent>> Qcow2Backend::block_status(std::uint64_t offset, std::uint64_t length) {
  if (!in_range(offset, length) || length == 0) co_return make_error_code(errc::out_of_range);
  Image::ActiveOp op(*image_);
  co_return co_await image_->block_status(offset, length);
}

task<> Qcow2Backend::cache(std::uint64_t, std::uint64_t) { co_return result<>{}; }

task<> Qcow2Backend::close() { co_return co_await image_->close(); }

}  // namespace qnbd::qcow2
