// The metadata every offline qcow2 tool needs before walking tables: the
// parsed header, the file size, the active L1 table, the snapshot table and
// the refcount table, read from an io::File.
//
// Loading is open-time work: malformed images raise format::FormatError and
// I/O errors std::runtime_error, each with one clear line.
#pragma once

#include "io/file.h"
#include "qcow2/format/header.h"
#include "qcow2/format/snapshot.h"

#include <boost/asio/awaitable.hpp>

#include <cstdint>
#include <vector>

namespace qnbd::qcow2::check {

struct ImageMeta {
  format::Header header;
  format::Geometry geo;
  std::uint64_t file_size = 0;
  std::vector<std::uint64_t> l1;  // active L1, host byte order
  std::vector<format::Snapshot> snapshots;
  std::uint64_t snapshots_size = 0;  // bytes of the snapshot table
  std::vector<std::uint64_t> reftable;

  std::uint64_t cluster_size() const { return geo.cluster_size(); }
};

// Reads cluster 0 and the tables it points to. With `for_check`, an image
// without a refcount table (refcount_table_clusters 0) is accepted, as qemu
// does when it opens an image to check it: every refcount then reads as 0
// and a repair rebuilds the structure.
boost::asio::awaitable<ImageMeta> load_image_meta(io::File& file, bool for_check = false);

// Reads `count` big-endian 64-bit entries at `offset` (zeros past EOF).
boost::asio::awaitable<std::vector<std::uint64_t>> read_u64_table(io::File& file,
                                                                  std::uint64_t offset,
                                                                  std::uint64_t count);

// Reads the snapshot table into meta.snapshots / meta.snapshots_size;
// `for_check` keeps entries with bad L1 tables for the checker to report.
boost::asio::awaitable<void> load_snapshots(io::File& file, ImageMeta& meta,
                                            bool for_check = false);

// Writes one 64-bit table entry (L1 entry, reftable entry...) in place.
task<> write_u64(io::File& file, std::uint64_t offset, std::uint64_t value);

}  // namespace qnbd::qcow2::check
