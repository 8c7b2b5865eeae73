// A read-only view of an image and its backing chain for `qnbd-img map`:
// opened as the server opens it (qcow2/open.h, so the one backing-name rule
// of qcow2/meta/backing.h applies) and mapped by the engine
// (Image::map_range); per range, the flags qemu's block layer reports
// (data, zero, allocated, host offset), layer by layer.
#pragma once

#include "backend/block_backend.h"
#include "qcow2/engine/image.h"
#include "tools/qnbd_img_common.h"

#include <memory>
#include <string>
#include <vector>

namespace qnbd::img {

struct BlockStatus {
  std::uint64_t length = 0;
  bool data = false;
  bool zero = false;
  bool allocated = false;  // this layer answers for the range
  bool offset_valid = false;
  std::uint64_t offset = 0;
};

struct Layer {
  std::string path;
  std::uint64_t size = 0;  // virtual size
  BlockBackend* backend = nullptr;
  qcow2::Image* image = nullptr;  // null: a raw file
  // Set for a qcow2 file with metadata preallocation: qemu asks it for holes.
  std::unique_ptr<io::UringFile> file;
  std::vector<qcow2::MapRun> runs;  // the window the engine mapped last
};

class ImageChain {
 public:
  // Opens `path` and every backing file below it, read-only.
  ImageChain(qcow2::SyncRunner& run, const std::string& path);
  std::uint64_t size() const { return layers_.front().size; }
  std::size_t depth() const { return layers_.size(); }
  const Layer& layer(std::size_t i) const { return layers_[i]; }
  // Status of layer i at `offset`, at most `max` bytes.
  BlockStatus status(std::size_t i, std::uint64_t offset, std::uint64_t max);
  void close();

 private:
  BlockStatus qcow2_status(Layer& l, std::uint64_t offset, std::uint64_t max);
  BlockStatus raw_status(Layer& l, std::uint64_t offset, std::uint64_t max);
  const qcow2::MapRun& run_at(Layer& l, std::uint64_t offset);
  void recurse_into_file(Layer& l, BlockStatus& st);

  qcow2::SyncRunner& run_;
  std::unique_ptr<BlockBackend> top_;
  std::vector<Layer> layers_;
};

}  // namespace qnbd::img
