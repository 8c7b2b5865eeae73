#include "backend/raw_backend.h"

#include "common/co_try.h"

#include <algorithm>
#include <vector>

namespace qnbd {
namespace {

bool not_supported(const error_code& ec) {
  return ec == boost::system::errc::operation_not_supported ||
         ec == boost::system::errc::function_not_supported;
}

}  // namespace

RawBackend::RawBackend(std::unique_ptr<io::File> file)
    : file_(std::move(file)), size_(file_->size().has_value() ? *file_->size() : 0) {}

Capabilities RawBackend::capabilities() const {
  Capabilities c;
  c.read_only = file_->read_only();
  // Byte-granular in every mode, as qemu-nbd: with O_DIRECT the file layer
  // does an unaligned request's read-modify-write itself (io::UringFile's
  // bounce buffer); aligned ones, which clients prefer, go straight through.
  c.min_block = 1;
  c.fast_io_anywhere = true;
  c.preferred_block = std::max<std::uint32_t>(4096, file_->alignment());
  return c;
}

task<> RawBackend::do_read(std::uint64_t offset, std::span<std::byte> buf) {
  co_return co_await file_->read_at(offset, buf);
}

task<> RawBackend::do_write(std::uint64_t offset, std::span<const std::byte> buf, bool fua) {
  QNBD_CO_TRY(co_await file_->write_at(offset, buf));
  if (fua) co_return co_await file_->sync();
  co_return result<>{};
}

task<> RawBackend::write_zero_buffers(std::uint64_t offset, std::uint64_t length) {
  static constexpr std::size_t kChunk = 1 << 20;
  const std::vector<std::byte> zeros(std::min<std::uint64_t>(length, kChunk));
  while (length) {
    auto n = std::min<std::uint64_t>(length, zeros.size());
    QNBD_CO_TRY(co_await file_->write_at(offset, std::span(zeros.data(), n)));
    offset += n;
    length -= n;
  }
  co_return result<>{};
}

task<> RawBackend::do_write_zeroes(std::uint64_t offset, std::uint64_t length, bool may_trim,
                                   bool fast, bool fua) {
  result<> r = may_trim ? co_await file_->punch_hole(offset, length)
                        : co_await file_->zero_range(offset, length);
  if (!r && not_supported(r.error()) && may_trim) r = co_await file_->zero_range(offset, length);
  if (!r && not_supported(r.error())) {
    if (fast) co_return make_error_code(errc::fast_zero_unsupported);
    r = co_await write_zero_buffers(offset, length);
  }
  if (r && fua) r = co_await file_->sync();
  co_return r;
}

task<> RawBackend::do_trim(std::uint64_t offset, std::uint64_t length, bool fua) {
  auto r = co_await file_->punch_hole(offset, length);
  if (!r && not_supported(r.error())) r = result<>{};  // trim is advisory
  if (r && fua) r = co_await file_->sync();
  co_return r;
}

task<> RawBackend::do_flush() { co_return co_await file_->sync(); }

// A hole found by SEEK_HOLE reads as zeros; data ranges are reported as
// plain data (we do not scan them for zeros).
std::string RawBackend::context_problem(const std::string& context) const {
  return context == kAllocationDepthContext ? std::string{}
                                            : BlockBackend::context_problem(context);
}

task<std::vector<StatusRun>> RawBackend::context_status(const std::string& context,
                                                        std::uint64_t offset,
                                                        std::uint64_t length) {
  if (context != kAllocationDepthContext) co_return make_error_code(errc::unsupported);
  std::vector<StatusRun> out;
  if (offset < size_) out.push_back({std::min(length, size_ - offset), 1});
  co_return out;
}

task<std::vector<Extent>> RawBackend::do_block_status(std::uint64_t offset, std::uint64_t length) {
  std::vector<Extent> out;
  const std::uint64_t end = std::min(size_, offset + length);
  std::uint64_t pos = offset;
  while (pos < end) {
    auto data = file_->seek_data(pos);
    if (!data) {
      if (data.error() == boost::system::errc::no_such_device_or_address) {
        out.push_back({end - pos, true, true});  // hole up to EOF
        break;
      }
      out.push_back({end - pos, false, false});  // cannot tell: all data
      break;
    }
    if (*data > pos) {
      auto n = std::min(*data, end) - pos;
      out.push_back({n, true, true});
      pos += n;
      continue;
    }
    auto hole = file_->seek_hole(pos);
    std::uint64_t stop = hole ? std::min(*hole, end) : end;
    if (stop <= pos) stop = end;
    out.push_back({stop - pos, false, false});
    pos = stop;
  }
  co_return out;
}

task<> RawBackend::do_cache(std::uint64_t, std::uint64_t) { co_return result<>{}; }

task<> RawBackend::do_close() {
  if (file_->read_only()) co_return result<>{};
  co_return co_await file_->sync();
}

}  // namespace qnbd
