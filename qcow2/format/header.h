// The qcow2 header (cluster 0): decoding with every sanity check QEMU makes,
// header extensions (known ones decoded, unknown ones kept byte for byte),
// and encoding back to a cluster-0 image for create/rewrite.
//
// Errors are FormatError exceptions with one clear line; callers add the
// file name. Opening an image is start-up work, so exceptions are allowed.
#pragma once

#include "qcow2/format/constants.h"
#include "qcow2/format/geometry.h"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace qnbd::qcow2::format {

class FormatError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct HeaderExtension {
  std::uint32_t type = 0;
  std::vector<std::byte> data;
};

// One entry of the feature name table extension.
struct FeatureName {
  enum Type : std::uint8_t { Incompatible = 0, Compatible = 1, Autoclear = 2 };
  std::uint8_t type = 0;
  std::uint8_t bit = 0;
  std::string name;
};

struct BitmapsExtension {
  std::uint32_t nb_bitmaps = 0;
  std::uint64_t directory_size = 0;
  std::uint64_t directory_offset = 0;
};

struct CryptoHeaderExtension {
  std::uint64_t offset = 0;
  std::uint64_t length = 0;
};

struct Header {
  std::uint32_t version = 3;
  std::uint64_t backing_file_offset = 0;
  std::uint32_t backing_file_size = 0;
  std::uint32_t cluster_bits = 16;
  std::uint64_t size = 0;
  std::uint32_t crypt_method = QCOW_CRYPT_NONE;
  std::uint32_t l1_size = 0;
  std::uint64_t l1_table_offset = 0;
  std::uint64_t refcount_table_offset = 0;
  std::uint32_t refcount_table_clusters = 0;
  std::uint32_t nb_snapshots = 0;
  std::uint64_t snapshots_offset = 0;
  std::uint64_t incompatible_features = 0;
  std::uint64_t compatible_features = 0;
  std::uint64_t autoclear_features = 0;
  std::uint32_t refcount_order = 4;
  std::uint32_t header_length = QCOW2_V3_HEADER_LENGTH;
  std::uint8_t compression_type = QCOW2_COMPRESSION_TYPE_ZLIB;
  // Header bytes after the fields we know, up to header_length; preserved.
  std::vector<std::byte> unknown_header_fields;

  // From header extensions and the backing file name.
  std::string backing_file;
  std::string backing_format;
  std::vector<FeatureName> feature_table;
  std::optional<BitmapsExtension> bitmaps;
  std::optional<CryptoHeaderExtension> crypto_header;
  std::optional<std::string> data_file;
  std::vector<HeaderExtension> unknown_extensions;

  std::uint64_t cluster_size() const { return 1ull << cluster_bits; }
  bool extended_l2() const { return incompatible_features & QCOW2_INCOMPAT_EXTL2; }
  Geometry geometry() const { return {cluster_bits, extended_l2(), refcount_order}; }
  // "bit 5 (name)" using the image's feature table when it names the bit.
  std::string describe_feature(FeatureName::Type type, unsigned bit) const;
};

// Bytes to read before calling parse_header: the first 104 bytes tell the
// cluster size; parse_header wants the whole of cluster 0 (or the file if
// it is shorter), since extensions and the backing name live there.
inline constexpr std::size_t kHeaderProbeSize = 512;
// Cluster size announced by a probe buffer; throws on a bad magic/version or
// cluster_bits outside 9..21.
std::uint64_t probe_cluster_size(std::span<const std::byte> probe);

// Decodes and validates cluster 0. Checks: magic, version 2..3, cluster_bits,
// header_length, refcount_order, encryption (refused), unknown incompatible
// bits (refused, naming the bit), compression type vs its feature bit,
// extended L2 cluster size, backing name bounds, extension bounds and
// duplicates, table sizes against QEMU's limits, table alignment.
Header parse_header(std::span<const std::byte> cluster0);

// Checks that need the file size: tables inside the file and not overlapping
// the header cluster. Throws FormatError.
void validate_layout(const Header& h, std::uint64_t file_size);

// Encodes the header, its extensions and the backing name into one cluster
// (cluster_size bytes). backing_file_offset/size are computed here. Throws
// FormatError if it does not fit.
std::vector<std::byte> encode_header(const Header& h);

}  // namespace qnbd::qcow2::format
