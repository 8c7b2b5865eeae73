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

}  // namespace

boost::asio::awaitable<std::unique_ptr<BlockBackend>> open_image(io::Ring& ring,
                                                                 const config::Export& e) {
  bool qcow2 = e.format == config::Format::qcow2;
  if (e.format == config::Format::detect) {
    qcow2 = qcow2::has_qcow2_magic(e.path);
    spdlog::info("{}: detected format {}", e.path, qcow2 ? "qcow2" : "raw");
  }
  if (!qcow2) co_return open_raw(ring, e);
  qcow2::OpenOptions o;
  o.read_only = e.read_only;
  o.direct = e.cache == config::CacheMode::none;
  o.l2_cache_size = e.l2_cache_size;
  o.refcount_cache_size = e.refcount_cache_size;
  o.lazy_refcounts = e.lazy_refcounts;
  o.cache_clean_interval = e.cache_clean_interval;
  o.defrag.enabled = e.defrag;
  o.defrag.rate = std::max<std::uint64_t>(e.defrag_rate, 1);
  o.defrag.threshold = e.defrag_threshold / 100.0;
  co_return co_await qcow2::open_image(ring, e.path, o);
}

}  // namespace qnbd
