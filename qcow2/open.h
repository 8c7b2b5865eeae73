// Entry point for the front end: open a qcow2 image (and its backing chain)
// as a BlockBackend.
#pragma once

#include "backend/block_backend.h"
#include "io/uring.h"
#include "qcow2/engine/defrag_task.h"

#include <boost/asio/awaitable.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace qnbd::qcow2 {

struct OpenOptions {
  bool read_only = false;
  bool direct = false;              // O_DIRECT for the image (and backing files)
  std::uint64_t l2_cache_size = 0;  // bytes, 0 = default
  std::uint64_t refcount_cache_size = 0;
  bool lazy_refcounts = false;  // dirty-bit mode: refcounts written at close only
  double cache_clean_interval = 5.0;
  DefragOptions defrag;  // online defragmentation of the image (not of backing files)
  // Called for the image and each backing file once its format is known and
  // before anything is read or repaired (the server takes QEMU's image
  // locks here); may throw std::runtime_error to refuse the file.
  std::function<void(const std::string& path, bool qcow2, bool read_only)> before_use;
};

// True if the file starts with the qcow2 magic "QFI\xfb".
bool has_qcow2_magic(const std::string& path);

// Opens the image and its backing chain. Throws std::runtime_error with one
// clear line (e.g. "image.qcow2: unsupported incompatible feature bit 5
// (unknown)") on failure. Runs on the io_context that owns `ring`.
boost::asio::awaitable<std::unique_ptr<BlockBackend>> open_image(io::Ring& ring,
                                                                 const std::string& path,
                                                                 const OpenOptions& opts);

}  // namespace qnbd::qcow2
