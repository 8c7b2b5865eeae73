// A read-only view of an image and its backing chain for `qnbd-img map`:
// per-range allocation status with the flags qemu's block layer reports
// (data, zero, allocated, host offset), layer by layer. Backing names are
// followed only as plain paths relative to the image, never as json: or
// protocol strings.
#pragma once

#include "qcow2/meta/image_meta.h"
#include "tools/qnbd_img_common.h"

#include <map>
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
  bool qcow2 = false;
  std::unique_ptr<io::UringFile> file;
  qcow2::meta::ImageMeta meta;
  std::uint64_t size = 0;  // virtual size
  std::uint64_t file_size = 0;
  bool metadata_prealloc = false;
  std::map<std::uint64_t, std::vector<std::byte>> l2_cache;
};

class ImageChain {
 public:
  // Opens `path` and every backing file below it (qcow2/meta/backing.h).
  ImageChain(qcow2::SyncRunner& run, const std::string& path);
  std::uint64_t size() const { return layers_.front().size; }
  std::size_t depth() const { return layers_.size(); }
  const Layer& layer(std::size_t i) const { return layers_[i]; }
  // Status of layer i at `offset`, at most `max` bytes.
  BlockStatus status(std::size_t i, std::uint64_t offset, std::uint64_t max);

 private:
  void open_layer(const std::string& path, const std::string& format);
  BlockStatus qcow2_status(Layer& l, std::uint64_t offset, std::uint64_t max);
  BlockStatus raw_status(Layer& l, std::uint64_t offset, std::uint64_t max);
  void recurse_into_file(Layer& l, BlockStatus& st);
  const std::byte* l2_table(Layer& l, std::uint64_t l2_offset);

  qcow2::SyncRunner& run_;
  std::vector<Layer> layers_;
};

}  // namespace qnbd::img
