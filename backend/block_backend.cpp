#include "backend/block_backend.h"

#include <algorithm>
#include <cassert>
#include <cerrno>

namespace qnbd {
namespace {

// The error or success of an operation that never reaches the backend. The
// checked operations are plain functions returning do_*'s awaitable, so the
// path that passes the checks costs no extra coroutine frame.
task<> done(error_code ec = {}) {
  if (ec) co_return ec;
  co_return result<>{};
}

}  // namespace

error_code BlockBackend::check_modify(std::uint64_t offset, std::uint64_t length, bool fua) const {
  const Capabilities c = capabilities();
  if (c.read_only) return errc::read_only;
  if (fua && !c.fua) return errc::unsupported;
  if (!range_fits(offset, length, size())) return errc::out_of_range;
  return {};
}

task<> BlockBackend::read(std::uint64_t offset, std::span<std::byte> buf) {
  if (!range_fits(offset, buf.size(), size())) return done(errc::out_of_range);
  if (buf.empty()) return done();
  return do_read(offset, buf);
}

bool BlockBackend::start_read(std::uint64_t offset, std::span<std::byte> buf, io::Completion* c,
                              io::Ring* away) {
  assert(!away || capabilities().fast_io_anywhere);
  return !buf.empty() && range_fits(offset, buf.size(), size()) &&
         do_start_read(offset, buf, c, away);
}

bool BlockBackend::start_write(std::uint64_t offset, std::span<const std::byte> buf,
                               io::Completion* c, io::Ring* away) {
  assert(!away || capabilities().fast_io_anywhere);
  return !buf.empty() && !check_modify(offset, buf.size(), false) &&
         do_start_write(offset, buf, c, away);
}

task<> BlockBackend::write(std::uint64_t offset, std::span<const std::byte> buf, bool fua) {
  if (auto ec = check_modify(offset, buf.size(), fua)) return done(ec);
  if (buf.empty()) return done();
  return do_write(offset, buf, fua);
}

task<> BlockBackend::write_zeroes(std::uint64_t offset, std::uint64_t length, bool may_trim,
                                  bool fast, bool fua) {
  if (auto ec = check_modify(offset, length, fua)) return done(ec);
  const Capabilities c = capabilities();
  if (!c.write_zeroes) return done(errc::unsupported);
  if (fast && !c.fast_zero) return done(errc::fast_zero_unsupported);
  if (length == 0) return done();
  return do_write_zeroes(offset, length, may_trim, fast, fua);
}

task<> BlockBackend::trim(std::uint64_t offset, std::uint64_t length, bool fua) {
  if (auto ec = check_modify(offset, length, fua)) return done(ec);
  if (!capabilities().trim) return done(errc::unsupported);
  if (length == 0) return done();
  return do_trim(offset, length, fua);
}

task<> BlockBackend::flush() {
  if (!capabilities().flush) return done(errc::unsupported);
  return do_flush();
}

task<> BlockBackend::cache(std::uint64_t offset, std::uint64_t length) {
  if (!capabilities().cache) return done(errc::unsupported);
  if (!range_fits(offset, length, size())) return done(errc::out_of_range);
  if (length == 0) return done();
  return do_cache(offset, length);
}

task<std::vector<Extent>> BlockBackend::block_status(std::uint64_t offset, std::uint64_t length) {
  if (length == 0 || !range_fits(offset, length, size()))
    co_return make_error_code(errc::out_of_range);
  auto extents = co_await do_block_status(offset, length);
  if (extents && (extents->empty() ||
                  std::ranges::any_of(*extents, [](const Extent& e) { return e.length == 0; })))
    co_return errno_error(EIO);
  co_return extents;
}

}  // namespace qnbd
