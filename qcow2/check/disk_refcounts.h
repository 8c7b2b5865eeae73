// The refcounts as the image stores them: refcount table + refcount blocks,
// read on demand and cached; repairs write single counters back.
#pragma once

#include "common/task.h"
#include "io/file.h"
#include "qcow2/meta/image_meta.h"
#include "qcow2/meta/tables.h"

#include <cstdint>
#include <map>
#include <optional>
#include <vector>

namespace qnbd::qcow2::check {

class DiskRefcounts {
 public:
  DiskRefcounts(io::File& file, const meta::ImageMeta& meta) : file_(file), meta_(meta) {}

  // The refcount block describing `cluster`: nullptr when it has none (all
  // its refcounts are 0). Fails with EIO if the reftable entry is unaligned.
  task<const std::byte*> block_for(std::uint64_t cluster);
  task<std::uint64_t> get(std::uint64_t cluster);
  // The refcount without I/O when its block is cached (or absent): the fast
  // path for loops over millions of clusters.
  std::optional<std::uint64_t> cached(std::uint64_t cluster) const;
  // Sets one counter in an existing refcount block and writes the block.
  task<> set(std::uint64_t cluster, std::uint64_t value);
  // Forgets cached blocks (after the refcount structure was replaced).
  void reset() { blocks_.clear(); }

 private:
  io::File& file_;
  const meta::ImageMeta& meta_;
  std::map<std::uint64_t, std::vector<std::byte>> blocks_;  // by reftable index
};

}  // namespace qnbd::qcow2::check
