// Loading an Image from an open file: header validation, incompatible
// feature policy, snapshot/L1/refcount tables (all bounded before anything
// is allocated), then the backing image through a resolver so that path
// policy and loop detection stay in one place (open.cpp) and tests can use
// in-memory files.
#pragma once

#include "backend/block_backend.h"
#include "io/file.h"
#include "qcow2/engine/image.h"

#include <boost/asio/awaitable.hpp>

#include <memory>
#include <string>

namespace qnbd::qcow2 {

class BackingResolver {
 public:
  virtual ~BackingResolver() = default;
  // `name` as stored in the image, `format` from its backing-format
  // extension (may be empty). Throws std::runtime_error on failure.
  virtual boost::asio::awaitable<std::unique_ptr<BlockBackend>> open(const std::string& name,
                                                                     const std::string& format) = 0;
};

struct LoadOptions {
  std::string name;  // for messages: the path
  bool read_only = false;
  std::uint64_t l2_cache_size = 0;  // bytes, 0 = cover the disk up to 32 MiB
  std::uint64_t refcount_cache_size = 0;
  double writeback_interval = 5.0;  // seconds of idle before dirty metadata is written
  bool lazy_refcounts = false;      // dirty-bit mode even if the image does not ask for it
};

// Throws std::runtime_error("<name>: <reason>") on any problem.
boost::asio::awaitable<std::unique_ptr<Image>> load_image(std::unique_ptr<io::File> file,
                                                          const LoadOptions& opts,
                                                          BackingResolver* backing);

}  // namespace qnbd::qcow2
