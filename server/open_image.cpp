#include "server/open_image.h"

#include "backend/raw_backend.h"
#include "io/uring_file.h"
#include "qcow2/open.h"

#include <spdlog/spdlog.h>

#include <stdexcept>

namespace qnbd {
namespace {

std::unique_ptr<BlockBackend> open_raw(io::Ring& ring, const config::Export& e) {
  auto f = io::UringFile::open(
      ring, e.path,
      {.read_only = e.read_only, .direct = e.cache == config::CacheMode::none, .create = false});
  if (!f) throw std::runtime_error(e.path + ": " + f.error().message());
  return std::make_unique<RawBackend>(std::move(*f));
}

// Opens with `read_only` (the access) while locking as `e` says (the use).
boost::asio::awaitable<std::unique_ptr<BlockBackend>> open_locked(
    io::Ring& ring, const config::Export& e, bool read_only,
    const std::function<void(const std::string&, const io::LockRole&)>& lock) {
  bool qcow2 = e.format == config::Format::qcow2;
  if (e.format == config::Format::detect) {
    qcow2 = qcow2::has_qcow2_magic(e.path);
    spdlog::info("{}: detected format {}", e.path, qcow2 ? "qcow2" : "raw");
  }
  config::Export access = e;
  access.read_only = read_only;
  if (!qcow2) {
    lock(e.path, {.read_only = e.read_only, .force_share = e.force_share});
    co_return open_raw(ring, access);
  }
  qcow2::OpenOptions o;
  o.read_only = read_only;
  o.direct = e.cache == config::CacheMode::none;
  o.l2_cache_size = e.l2_cache_size;
  o.refcount_cache_size = e.refcount_cache_size;
  o.lazy_refcounts = e.lazy_refcounts;
  o.cache_clean_interval = e.cache_clean_interval;
  o.defrag.enabled = e.defrag;
  o.defrag.rate = std::max<std::uint64_t>(e.defrag_rate, 1);
  o.defrag.threshold = e.defrag_threshold / 100.0;
  // The chain opener reports backing files read-only; the first call is the
  // image itself, locked as the export uses it.
  bool top = true;
  o.before_use = [&](const std::string& path, bool is_qcow2, bool) {
    lock(path, {.qcow2 = is_qcow2,
                .read_only = top ? e.read_only : true,
                .backing = !top,
                .force_share = e.force_share});
    top = false;
  };
  co_return co_await qcow2::open_image(ring, e.path, o);
}

// Throws unless every bitmap `e` exports (-B) is one the image can serve.
// The image is closed first: opening a writable one marked its bitmaps in use.
boost::asio::awaitable<void> check_bitmaps(BlockBackend& backend, const config::Export& e) {
  std::string problem;
  for (const auto& name : e.bitmaps) {
    problem = backend.context_problem("qemu:dirty-bitmap:" + name);
    if (!problem.empty()) break;
  }
  if (problem.empty()) co_return;
  (void)co_await backend.close();
  throw std::runtime_error(e.path + ": " + problem);
}

}  // namespace

boost::asio::awaitable<OpenedImage> open_image(io::Ring& ring, const config::Export& e) {
  OpenedImage out;
  out.backend = co_await open_locked(
      ring, e, e.read_only, [&](const std::string& path, const io::LockRole& role) {
        out.locks.push_back(io::ImageLock::acquire(path, io::qemu_lock_perms(role)));
      });
  co_await check_bitmaps(*out.backend, e);
  co_return out;
}

boost::asio::awaitable<void> probe_image(io::Ring& ring, const config::Export& e,
                                         std::function<bool(const std::string&)> excuse) {
  auto backend =
      co_await open_locked(ring, e, true, [&](const std::string& path, const io::LockRole& role) {
        try {
          io::ImageLock::acquire(path, io::qemu_lock_perms(role));
        } catch (const std::runtime_error& err) {
          if (!excuse(path)) throw;
          spdlog::warn("{}: lock held by the running qnbd, which serves it", path);
        }
      });
  co_await check_bitmaps(*backend, e);
  auto closed = co_await backend->close();
  if (!closed) throw std::runtime_error(e.path + ": " + closed.error().message());
}

}  // namespace qnbd
