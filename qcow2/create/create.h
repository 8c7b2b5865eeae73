// Creating qcow2 images (what `qemu-img create -f qcow2` does): header v2 or
// v3 with the feature name table, backing file and format, refcount table and
// blocks, the L1 table, and with preallocation every L2 table and data
// cluster reserved in the refcounts (the file grows sparsely; falloc/full
// then allocate or write the data area).
//
// plan_layout is pure; create_image does the I/O through io::File.
#pragma once

#include "common/task.h"
#include "io/file.h"
#include "qcow2/format/header.h"

#include <cstdint>
#include <stdexcept>
#include <string>

namespace qnbd::qcow2::create {

enum class Prealloc { off, metadata, falloc, full };

struct CreateOptions {
  std::uint64_t size = 0;
  std::uint64_t cluster_size = 65536;
  std::uint32_t version = 3;  // compat=1.1; 2 is compat=0.10
  bool lazy_refcounts = false;
  std::uint32_t refcount_bits = 16;
  bool extended_l2 = false;
  std::uint8_t compression_type = format::QCOW2_COMPRESSION_TYPE_ZLIB;
  Prealloc prealloc = Prealloc::off;
  std::string backing_file;
  std::string backing_format;
};

// Invalid option combinations, with a one-line message in qemu's words.
class OptionError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// Throws OptionError when the options cannot make an image.
void validate(const CreateOptions& o);

// Where everything goes. Clusters in file order: header, refcount table,
// refcount blocks, L1 table, then (preallocated) L2 tables and data.
struct Layout {
  format::Header header;
  std::uint64_t reftable_offset = 0, reftable_clusters = 0;
  std::uint64_t refblocks_offset = 0, refblock_count = 0;
  std::uint64_t l1_offset = 0, l1_clusters = 0;
  std::uint64_t l2_offset = 0, l2_count = 0;  // preallocated L2 tables
  std::uint64_t data_offset = 0, data_clusters = 0;
  std::uint64_t used_clusters = 0;  // every cluster above has refcount 1
  std::uint64_t file_size = 0;
};

Layout plan_layout(const CreateOptions& o);

// Writes a new image into `file` (truncated to 0 first).
task<> create_image(io::File& file, const CreateOptions& o);

}  // namespace qnbd::qcow2::create
