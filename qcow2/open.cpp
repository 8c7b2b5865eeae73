// Opening images from paths: the image, then its backing chain. Backing
// names from an image are untrusted: they follow the rule of
// qcow2/meta/backing.h.
#include "qcow2/open.h"

#include "backend/raw_backend.h"
#include "qcow2/check/check.h"
#include "io/uring_file.h"
#include "qcow2/engine/load.h"
#include "qcow2/format/constants.h"
#include "qcow2/meta/backing.h"
#include "qcow2/meta/image_meta.h"
#include "qcow2/qcow2_backend.h"

#include <spdlog/spdlog.h>

#include <stdexcept>
#include <vector>

namespace qnbd::qcow2 {
namespace {

// The dirty bit, from a header that must parse anyway: a malformed one
// fails here with the message load_image would give.
boost::asio::awaitable<bool> has_dirty_bit(io::File& file, const std::string& path) {
  try {
    const auto h = co_await meta::load_header(file);
    co_return (h.incompatible_features & format::QCOW2_INCOMPAT_DIRTY) != 0;
  } catch (const std::exception& e) {
    throw std::runtime_error(path + ": " + e.what());
  }
}

class ChainOpener final : public BackingResolver {
 public:
  ChainOpener(io::Ring& ring, const OpenOptions& opts) : ring_(ring), opts_(opts) {}

  boost::asio::awaitable<std::unique_ptr<BlockBackend>> open_path(const std::string& path,
                                                                  const std::string& format,
                                                                  bool read_only) {
    chain_.add(path);
    io::OpenOptions fo;
    fo.read_only = read_only;
    fo.direct = opts_.direct;
    auto file = io::UringFile::open(ring_, path, fo);
    if (!file) throw std::runtime_error(path + ": " + file.error().message());
    std::string fmt = format;
    if (fmt.empty()) fmt = has_qcow2_magic(path) ? "qcow2" : "raw";
    if (opts_.before_use) opts_.before_use(path, fmt == "qcow2", read_only);
    if (fmt == "raw") co_return std::make_unique<RawBackend>(std::move(*file));
    if (fmt != "qcow2") throw std::runtime_error(path + ": unsupported image format '" + fmt + "'");
    if (!read_only && co_await has_dirty_bit(**file, path)) {
      // Refcounts may be stale (lazy refcounts and a crash): rebuild them
      // before the first allocation trusts them, as QEMU does on open.
      spdlog::warn("{}: dirty bit set; repairing refcounts before serving", path);
      auto r = co_await check::repair_dirty_image(ring_, path);
      if (!r)
        throw std::runtime_error(path + ": could not repair dirty image: " + r.error().message());
      spdlog::info("{}: repaired ({} leaks and {} corruptions fixed)", path, r->leaks_fixed,
                   r->corruptions_fixed);
    }
    paths_.push_back(path);
    LoadOptions lo;
    lo.name = path;
    lo.read_only = read_only;
    lo.l2_cache_size = opts_.l2_cache_size;
    lo.refcount_cache_size = opts_.refcount_cache_size;
    lo.writeback_interval = opts_.cache_clean_interval;
    lo.lazy_refcounts = opts_.lazy_refcounts;
    auto image = co_await load_image(std::move(*file), lo, this);
    paths_.pop_back();
    co_return std::make_unique<Qcow2Backend>(std::move(image));
  }

  boost::asio::awaitable<std::unique_ptr<BlockBackend>> open(const std::string& name,
                                                             const std::string& format) override {
    const std::string& from = paths_.back();
    std::string path;
    try {
      path = meta::backing_path(from, name);
    } catch (const std::exception& e) {
      throw std::runtime_error(from + ": " + e.what());
    }
    if (format.empty())
      spdlog::warn("{}: backing file {} has no format recorded; probing it", from, path);
    co_return co_await open_path(path, format, true);
  }

 private:
  io::Ring& ring_;
  const OpenOptions& opts_;
  meta::BackingChain chain_;
  std::vector<std::string> paths_;  // the images being loaded, innermost last
};

}  // namespace

bool has_qcow2_magic(const std::string& path) {
  const auto r = meta::probe_qcow2(path);
  return r && *r;
}

boost::asio::awaitable<std::unique_ptr<BlockBackend>> open_image(io::Ring& ring,
                                                                 const std::string& path,
                                                                 const OpenOptions& opts) {
  ChainOpener opener(ring, opts);
  auto backend = co_await opener.open_path(path, "qcow2", opts.read_only);
  if (opts.defrag.enabled && !opts.read_only)
    static_cast<Qcow2Backend&>(*backend).start_defrag(opts.defrag,
                                                      co_await boost::asio::this_coro::executor);
  co_return backend;
}

}  // namespace qnbd::qcow2
