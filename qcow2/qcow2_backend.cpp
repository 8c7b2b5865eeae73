#include "qcow2/qcow2_backend.h"

namespace qnbd::qcow2 {

Capabilities Qcow2Backend::capabilities() const {
  Capabilities c;
  c.read_only = image_->read_only();
  c.preferred_block = static_cast<std::uint32_t>(
      std::min<std::uint64_t>(image_->geometry().cluster_size(), 64 * 1024));
  return c;
}

task<> Qcow2Backend::do_read(std::uint64_t offset, std::span<std::byte> buf) {
  Image::ActiveOp op(*image_);
  co_return co_await image_->read(offset, buf);
}

task<> Qcow2Backend::do_write(std::uint64_t offset, std::span<const std::byte> buf, bool fua) {
  Image::ActiveOp op(*image_);
  co_return co_await image_->write(offset, buf, fua);
}

task<> Qcow2Backend::do_write_zeroes(std::uint64_t offset, std::uint64_t length, bool may_trim,
                                     bool fast, bool fua) {
  Image::ActiveOp op(*image_);
  co_return co_await image_->write_zeroes(offset, length, may_trim, fast, fua);
}

task<> Qcow2Backend::do_trim(std::uint64_t offset, std::uint64_t length, bool fua) {
  Image::ActiveOp op(*image_);
  co_return co_await image_->trim(offset, length, fua);
}

task<> Qcow2Backend::do_flush() {
  Image::ActiveOp op(*image_);
  co_return co_await image_->flush();
}

task<std::vector<Extent>> Qcow2Backend::do_block_status(std::uint64_t offset,
                                                        std::uint64_t length) {
  Image::ActiveOp op(*image_);
  co_return co_await image_->block_status(offset, length);
}

task<> Qcow2Backend::do_cache(std::uint64_t, std::uint64_t) { co_return result<>{}; }

void Qcow2Backend::start_defrag(const DefragOptions& o, const boost::asio::any_io_executor& ex) {
  defrag_ = std::make_unique<DefragTask>(*image_, o);
  defrag_->start(ex);
}

task<> Qcow2Backend::do_close() {
  if (defrag_) co_await defrag_->stop();
  co_return co_await image_->close();
}

namespace {

constexpr std::string_view kDirtyBitmapPrefix = "qemu:dirty-bitmap:";
constexpr std::uint32_t NBD_STATE_DIRTY = 1;  // qemu's dirty-bitmap context flag

}  // namespace

// qemu-nbd -B refuses the same bitmaps, with the same words.
std::string Qcow2Backend::context_problem(const std::string& context) const {
  if (context == kAllocationDepthContext) return {};
  if (!context.starts_with(kDirtyBitmapPrefix)) return BlockBackend::context_problem(context);
  const std::string name = context.substr(kDirtyBitmapPrefix.size());
  for (const auto& b : image_->bitmaps().list()) {
    if (b.entry.name != name) continue;
    if (b.inconsistent)
      return "Bitmap '" + name +
             "' is inconsistent and cannot be used (left in use by a writer that did not close "
             "it; remove it with qnbd-img bitmap --remove)";
    return {};
  }
  return "Bitmap '" + name + "' is not found";
}

task<std::vector<StatusRun>> Qcow2Backend::context_status(const std::string& context,
                                                          std::uint64_t offset,
                                                          std::uint64_t length) {
  if (context == kAllocationDepthContext) {
    Image::ActiveOp op(*image_);
    co_return co_await image_->allocation_depth(offset, length);
  }
  DirtyBitmap* b = context.starts_with(kDirtyBitmapPrefix)
                       ? image_->bitmaps().find(context.substr(kDirtyBitmapPrefix.size()))
                       : nullptr;
  if (!b || b->inconsistent) co_return make_error_code(errc::unsupported);
  std::vector<StatusRun> out;
  for (auto [len, dirty] : b->runs(offset, length, size()))
    out.push_back({len, dirty ? NBD_STATE_DIRTY : 0});
  co_return out;
}

}  // namespace qnbd::qcow2
