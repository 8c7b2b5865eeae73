// Opening images from paths: the image, then its backing chain. Backing
// names from an image are untrusted: only plain file paths (no "json:" and
// no protocol prefixes, CVE-2024-4467), relative ones resolved against the
// image's directory, and a file already in the chain is a loop.
#include "qcow2/open.h"

#include "backend/raw_backend.h"
#include "qcow2/check/check.h"
#include "io/uring_file.h"
#include "qcow2/engine/load.h"
#include "qcow2/format/constants.h"
#include "qcow2/qcow2_backend.h"

#include <spdlog/spdlog.h>

#include <climits>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <vector>

namespace qnbd::qcow2 {
namespace {

constexpr std::size_t kMaxChainDepth = 256;

std::string directory_of(const std::string& path) {
  const auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

// "nbd:...", "json:{...}", "file:x" are protocol specs to QEMU; we follow
// none of them. A ':' after a '/' is part of a plain path.
bool looks_like_protocol(const std::string& name) {
  const auto colon = name.find(':');
  if (colon == std::string::npos) return false;
  return name.find('/') == std::string::npos || name.find('/') > colon;
}

// The dirty bit (v3 incompatible feature 0), read straight from the header.
bool has_dirty_bit(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  unsigned char h[80] = {};
  if (!f.read(reinterpret_cast<char*>(h), sizeof h)) return false;
  const unsigned version = (h[4] << 24) | (h[5] << 16) | (h[6] << 8) | h[7];
  return version >= 3 && (h[79] & format::QCOW2_INCOMPAT_DIRTY) != 0;
}

std::string canonical(const std::string& path) {
  char buf[PATH_MAX];
  if (!::realpath(path.c_str(), buf)) return path;
  return buf;
}

class ChainOpener final : public BackingResolver {
 public:
  ChainOpener(io::Ring& ring, const OpenOptions& opts) : ring_(ring), opts_(opts) {}

  boost::asio::awaitable<std::unique_ptr<BlockBackend>> open_path(const std::string& path,
                                                                  const std::string& format,
                                                                  bool read_only) {
    const std::string real = canonical(path);
    for (const auto& p : chain_)
      if (p == real) throw std::runtime_error(path + ": backing chain loop");
    if (chain_.size() >= kMaxChainDepth)
      throw std::runtime_error(path + ": backing chain too deep");
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
    if (!read_only && has_dirty_bit(path)) {
      // Refcounts may be stale (lazy refcounts and a crash): rebuild them
      // before the first allocation trusts them, as QEMU does on open.
      spdlog::warn("{}: dirty bit set; repairing refcounts before serving", path);
      auto r = co_await check::repair_dirty_image(ring_, path);
      if (!r)
        throw std::runtime_error(path + ": could not repair dirty image: " + r.error().message());
      spdlog::info("{}: repaired ({} leaks and {} corruptions fixed)", path, r->leaks_fixed,
                   r->corruptions_fixed);
    }
    chain_.push_back(real);
    dirs_.push_back(directory_of(path));
    LoadOptions lo;
    lo.name = path;
    lo.read_only = read_only;
    lo.l2_cache_size = opts_.l2_cache_size;
    lo.refcount_cache_size = opts_.refcount_cache_size;
    lo.writeback_interval = opts_.cache_clean_interval;
    lo.lazy_refcounts = opts_.lazy_refcounts;
    auto image = co_await load_image(std::move(*file), lo, this);
    dirs_.pop_back();
    co_return std::make_unique<Qcow2Backend>(std::move(image));
  }

  boost::asio::awaitable<std::unique_ptr<BlockBackend>> open(const std::string& name,
                                                             const std::string& format) override {
    const std::string& from = chain_.back();
    if (name.find('\0') != std::string::npos || looks_like_protocol(name))
      throw std::runtime_error(from + ": backing file name '" + name +
                               "' is not a plain file path; refusing to open it");
    const std::string path = name.front() == '/' ? name : dirs_.back() + "/" + name;
    if (format.empty())
      spdlog::warn("{}: backing file {} has no format recorded; probing it", from, path);
    co_return co_await open_path(path, format, true);
  }

 private:
  io::Ring& ring_;
  const OpenOptions& opts_;
  std::vector<std::string> chain_;
  std::vector<std::string> dirs_;
};

}  // namespace

bool has_qcow2_magic(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  unsigned char m[4] = {};
  if (!f.read(reinterpret_cast<char*>(m), 4)) return false;
  return m[0] == 'Q' && m[1] == 'F' && m[2] == 'I' && m[3] == 0xfb;
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
