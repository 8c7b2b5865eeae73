// The one reader of qcow2 metadata: header (with its extensions), active L1
// table, refcount table and snapshot table, read from an io::File. The
// engine (engine/load.cpp), the checker (check/) and qnbd-img's info, map
// and create all load images through here; they differ only in how much a
// damaged image is forgiven (LoadPurpose).
//
// Loading is open-time work: malformed images raise format::FormatError and
// I/O errors std::runtime_error, each with one clear line (callers add the
// file name).
#pragma once

#include "io/file.h"
#include "qcow2/format/header.h"
#include "qcow2/format/snapshot.h"

#include <boost/asio/awaitable.hpp>

#include <cstdint>
#include <vector>

namespace qnbd::qcow2::meta {

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

enum class LoadPurpose {
  // Serving: every table (and each snapshot's L1 table) must lie inside the
  // file and clear of the header; external data files are refused.
  serve,
  // Reading for qnbd-img info/map/create: as qemu-img, tables are not
  // checked against the file size (reads past EOF see zeros).
  inspect,
  // Checking: additionally an image without a refcount table
  // (refcount_table_clusters 0) and snapshots with bad L1 tables are
  // accepted, as qemu does when it opens an image to check it; the checker
  // reports (and a repair rebuilds) them.
  check,
};

// Reads and validates cluster 0 only (enough for feature bits).
boost::asio::awaitable<format::Header> load_header(io::File& file);

// Reads cluster 0 and the tables it points to.
boost::asio::awaitable<ImageMeta> load_image_meta(io::File& file, LoadPurpose purpose);

// The {offset, bytes} ranges of metadata besides the header, the active L1,
// L2 and refcount structures: the snapshot table, each snapshot's L1 table,
// the bitmap directory. The engine must never allocate over them.
std::vector<std::pair<std::uint64_t, std::uint64_t>> other_metadata(const ImageMeta& m);

}  // namespace qnbd::qcow2::meta
