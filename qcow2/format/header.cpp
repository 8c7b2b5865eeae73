#include "qcow2/format/header.h"

#include "qcow2/format/endian.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

namespace qnbd::qcow2::format {
namespace {

[[noreturn]] void fail(const std::string& msg) { throw FormatError(msg); }

std::uint64_t align8(std::uint64_t n) { return (n + 7) & ~7ull; }

std::string as_string(std::span<const std::byte> b) {
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

const char* builtin_feature_name(FeatureName::Type type, unsigned bit) {
  static const char* incompat[] = {"dirty bit", "corrupt bit", "external data file",
                                   "compression type", "extended L2 entries"};
  if (type == FeatureName::Incompatible && bit < 5) return incompat[bit];
  if (type == FeatureName::Compatible && bit == 0) return "lazy refcounts";
  if (type == FeatureName::Autoclear && bit == 0) return "bitmaps";
  if (type == FeatureName::Autoclear && bit == 1) return "raw external data";
  return nullptr;
}

void parse_fixed_fields(std::span<const std::byte> c, Header& h) {
  const std::byte* p = c.data();
  h.version = load_be32(p + 4);
  h.backing_file_offset = load_be64(p + 8);
  h.backing_file_size = load_be32(p + 16);
  h.cluster_bits = load_be32(p + 20);
  h.size = load_be64(p + 24);
  h.crypt_method = load_be32(p + 32);
  h.l1_size = load_be32(p + 36);
  h.l1_table_offset = load_be64(p + 40);
  h.refcount_table_offset = load_be64(p + 48);
  h.refcount_table_clusters = load_be32(p + 56);
  h.nb_snapshots = load_be32(p + 60);
  h.snapshots_offset = load_be64(p + 64);
  if (h.version == 2) {
    h.incompatible_features = h.compatible_features = h.autoclear_features = 0;
    h.refcount_order = 4;
    h.header_length = QCOW2_V2_HEADER_LENGTH;
    return;
  }
  if (c.size() < QCOW2_V3_HEADER_LENGTH) fail("header truncated");
  h.incompatible_features = load_be64(p + 72);
  h.compatible_features = load_be64(p + 80);
  h.autoclear_features = load_be64(p + 88);
  h.refcount_order = load_be32(p + 96);
  h.header_length = load_be32(p + 100);
}

void check_header_length(std::span<const std::byte> c, Header& h) {
  if (h.version == 2) return;
  if (h.header_length < QCOW2_V3_HEADER_LENGTH) fail("qcow2 header too short");
  if (h.header_length % 8) fail("qcow2 header length is not a multiple of 8");
  if (h.header_length > h.cluster_size()) fail("qcow2 header exceeds cluster size");
  if (h.header_length > c.size()) fail("header truncated");
  std::size_t known = QCOW2_V3_HEADER_LENGTH;
  if (h.header_length > QCOW2_COMPRESSION_TYPE_OFFSET) {
    h.compression_type = std::to_integer<std::uint8_t>(c[QCOW2_COMPRESSION_TYPE_OFFSET]);
    known = QCOW2_COMPRESSION_TYPE_OFFSET + 8;  // type + 7 padding bytes
  }
  if (h.header_length > known)
    h.unknown_header_fields.assign(c.begin() + known, c.begin() + h.header_length);
}

void check_features(const Header& h) {
  if (h.refcount_order > MAX_REFCOUNT_ORDER)
    fail(fmt::format("reference count entry width too large ({} bits)",
                     1ull << std::min(h.refcount_order, 63u)));
  const std::uint64_t unknown = h.incompatible_features & ~QCOW2_INCOMPAT_MASK;
  if (unknown) {
    unsigned bit = static_cast<unsigned>(__builtin_ctzll(unknown));
    fail("unsupported incompatible feature " + h.describe_feature(FeatureName::Incompatible, bit));
  }
  if (h.crypt_method != QCOW_CRYPT_NONE)
    fail(fmt::format("encrypted images are not supported (crypt_method {})", h.crypt_method));
  const bool comp_bit = h.incompatible_features & QCOW2_INCOMPAT_COMPRESSION;
  if (h.compression_type > QCOW2_COMPRESSION_TYPE_ZSTD)
    fail(fmt::format("unknown compression type {}", h.compression_type));
  if (comp_bit != (h.compression_type != QCOW2_COMPRESSION_TYPE_ZLIB))
    fail("compression type field and compression type feature bit disagree");
  if (h.extended_l2() && h.cluster_bits < MIN_EXTL2_CLUSTER_BITS)
    fail("extended L2 entries need a cluster size of at least 16 KiB");
}

void check_backing_name_bounds(const Header& h, std::size_t available) {
  if (!h.backing_file_offset) return;
  if (h.backing_file_offset > h.cluster_size()) fail("invalid backing file offset");
  if (h.backing_file_size > MAX_BACKING_FILE_NAME ||
      h.backing_file_size > h.cluster_size() - h.backing_file_offset)
    fail("backing file name too long");
  if (h.backing_file_offset + h.backing_file_size > available) fail("header truncated");
}

void parse_feature_table(std::span<const std::byte> d, Header& h) {
  for (std::size_t i = 0; i + 48 <= d.size(); i += 48) {
    FeatureName f;
    f.type = std::to_integer<std::uint8_t>(d[i]);
    f.bit = std::to_integer<std::uint8_t>(d[i + 1]);
    auto name = d.subspan(i + 2, 46);
    auto nul = std::find(name.begin(), name.end(), std::byte{0});
    f.name = as_string(name.first(static_cast<std::size_t>(nul - name.begin())));
    h.feature_table.push_back(std::move(f));
  }
}

void parse_bitmaps_ext(std::span<const std::byte> d, Header& h) {
  if (d.size() != 24) fail("bitmaps header extension has an invalid length");
  BitmapsExtension b;
  b.nb_bitmaps = load_be32(d.data());
  b.directory_size = load_be64(d.data() + 8);
  b.directory_offset = load_be64(d.data() + 16);
  if (h.version < 3) fail("bitmaps header extension in a version 2 image");
  // Like QEMU: an extension whose autoclear bit is clear was left behind by a
  // writer that does not know bitmaps; it is kept, but not interpreted.
  if (!(h.autoclear_features & QCOW2_AUTOCLEAR_BITMAPS)) {
    h.unknown_extensions.push_back({QCOW2_EXT_MAGIC_BITMAPS, {d.begin(), d.end()}});
    return;
  }
  if (b.nb_bitmaps == 0 || b.nb_bitmaps > QCOW2_MAX_BITMAPS)
    fail("invalid number of bitmaps in the bitmaps extension");
  if (b.directory_offset % h.cluster_size()) fail("bitmap directory offset is not aligned");
  h.bitmaps = b;
}

void parse_extension(std::uint32_t type, std::span<const std::byte> d, Header& h) {
  switch (type) {
    case QCOW2_EXT_MAGIC_BACKING_FORMAT:
      if (d.size() > MAX_BACKING_FORMAT_NAME) fail("backing format name too long");
      h.backing_format = as_string(d);
      return;
    case QCOW2_EXT_MAGIC_FEATURE_TABLE:
      parse_feature_table(d, h);
      return;
    case QCOW2_EXT_MAGIC_BITMAPS:
      parse_bitmaps_ext(d, h);
      return;
    case QCOW2_EXT_MAGIC_CRYPTO_HEADER:
      if (d.size() != 16) fail("crypto header extension has an invalid length");
      h.crypto_header = CryptoHeaderExtension{load_be64(d.data()), load_be64(d.data() + 8)};
      return;
    case QCOW2_EXT_MAGIC_DATA_FILE:
      h.data_file = as_string(d);
      return;
    default:
      h.unknown_extensions.push_back({type, {d.begin(), d.end()}});
      return;
  }
}

void parse_extensions(std::span<const std::byte> c, Header& h) {
  std::uint64_t end = h.backing_file_offset ? h.backing_file_offset : h.cluster_size();
  end = std::min<std::uint64_t>(end, c.size());
  std::uint64_t pos = h.header_length;
  std::vector<std::uint32_t> seen;
  while (pos + 8 <= end) {
    const std::uint32_t type = load_be32(c.data() + pos);
    const std::uint32_t len = load_be32(c.data() + pos + 4);
    pos += 8;
    if (type == QCOW2_EXT_MAGIC_END) return;
    if (len > end - pos) fail(fmt::format("header extension 0x{:08x} too large", type));
    if (std::find(seen.begin(), seen.end(), type) != seen.end())
      fail(fmt::format("header extension 0x{:08x} appears twice", type));
    seen.push_back(type);
    parse_extension(type, c.subspan(pos, len), h);
    pos += align8(len);
  }
}

void check_table(const char* what, std::uint64_t offset, std::uint64_t entries,
                 std::uint64_t entry_len, std::uint64_t max_bytes, std::uint64_t cluster_size) {
  if (entries > max_bytes / entry_len) fail(fmt::format("{} too large", what));
  if (offset % cluster_size || offset > QCOW_MAX_CLUSTER_OFFSET)
    fail(fmt::format("{} offset invalid", what));
}

void check_tables(const Header& h) {
  const Geometry g = h.geometry();
  const std::uint64_t cs = h.cluster_size();
  if (h.refcount_table_clusters == 0) fail("image does not contain a reference count table");
  check_table("reference count table", h.refcount_table_offset,
              std::uint64_t{h.refcount_table_clusters} * cs / 8, 8, QCOW_MAX_REFTABLE_SIZE, cs);
  check_table("snapshot table", h.snapshots_offset, h.nb_snapshots, 40,
              std::uint64_t{QCOW_MAX_SNAPSHOTS} * 40, cs);
  check_table("active L1 table", h.l1_table_offset, h.l1_size, 8, QCOW_MAX_L1_SIZE, cs);
  if (h.size > (1ull << 62)) fail("image is too big");
  if (h.l1_size < g.l1_entries_for(h.size)) fail("L1 table is too small");
}

void write_extension(std::vector<std::byte>& out, std::size_t& pos, std::uint32_t type,
                     std::span<const std::byte> data) {
  const std::size_t need = 8 + align8(data.size());
  if (pos + need + 8 > out.size()) fail("header extensions do not fit in cluster 0");
  store_be32(out.data() + pos, type);
  store_be32(out.data() + pos + 4, static_cast<std::uint32_t>(data.size()));
  std::copy(data.begin(), data.end(), out.begin() + static_cast<std::ptrdiff_t>(pos + 8));
  pos += need;
}

std::span<const std::byte> bytes_of(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

void write_known_extensions(const Header& h, std::vector<std::byte>& out, std::size_t& pos) {
  if (!h.backing_format.empty())
    write_extension(out, pos, QCOW2_EXT_MAGIC_BACKING_FORMAT, bytes_of(h.backing_format));
  if (h.data_file) write_extension(out, pos, QCOW2_EXT_MAGIC_DATA_FILE, bytes_of(*h.data_file));
  if (h.crypto_header) {
    std::byte b[16];
    store_be64(b, h.crypto_header->offset);
    store_be64(b + 8, h.crypto_header->length);
    write_extension(out, pos, QCOW2_EXT_MAGIC_CRYPTO_HEADER, b);
  }
  if (h.bitmaps) {
    std::byte b[24] = {};
    store_be32(b, h.bitmaps->nb_bitmaps);
    store_be64(b + 8, h.bitmaps->directory_size);
    store_be64(b + 16, h.bitmaps->directory_offset);
    write_extension(out, pos, QCOW2_EXT_MAGIC_BITMAPS, b);
  }
  if (!h.feature_table.empty()) {
    std::vector<std::byte> t(h.feature_table.size() * 48);
    for (std::size_t i = 0; i < h.feature_table.size(); ++i) {
      const auto& f = h.feature_table[i];
      t[i * 48] = std::byte{f.type};
      t[i * 48 + 1] = std::byte{f.bit};
      std::memcpy(t.data() + i * 48 + 2, f.name.data(), std::min<std::size_t>(f.name.size(), 46));
    }
    write_extension(out, pos, QCOW2_EXT_MAGIC_FEATURE_TABLE, t);
  }
}

}  // namespace

std::string Header::describe_feature(FeatureName::Type type, unsigned bit) const {
  for (const auto& f : feature_table)
    if (f.type == type && f.bit == bit && !f.name.empty())
      return fmt::format("bit {} ({})", bit, f.name);
  if (const char* n = builtin_feature_name(type, bit)) return fmt::format("bit {} ({})", bit, n);
  return fmt::format("bit {} (unknown)", bit);
}

std::uint64_t probe_cluster_size(std::span<const std::byte> c) {
  if (c.size() < QCOW2_V2_HEADER_LENGTH) fail("file too short for a qcow2 header");
  if (load_be32(c.data()) != QCOW_MAGIC) fail("not a qcow2 image (bad magic)");
  const std::uint32_t version = load_be32(c.data() + 4);
  if (version < QCOW_VERSION_MIN || version > QCOW_VERSION_MAX)
    fail(fmt::format("unsupported qcow2 version {}", version));
  const std::uint32_t bits = load_be32(c.data() + 20);
  if (bits < MIN_CLUSTER_BITS || bits > MAX_CLUSTER_BITS)
    fail(fmt::format("unsupported cluster size: 2^{}", bits));
  return 1ull << bits;
}

Header parse_header(std::span<const std::byte> c) {
  probe_cluster_size(c);
  Header h;
  parse_fixed_fields(c, h);
  check_header_length(c, h);
  check_backing_name_bounds(h, c.size());
  parse_extensions(c, h);  // first, so errors can use the feature names
  check_features(h);
  check_tables(h);
  if (h.backing_file_offset)
    h.backing_file = as_string(c.subspan(h.backing_file_offset, h.backing_file_size));
  return h;
}

void validate_layout(const Header& h, std::uint64_t file_size) {
  const std::uint64_t cs = h.cluster_size();
  auto inside = [&](const char* what, std::uint64_t off, std::uint64_t bytes) {
    if (bytes == 0) return;
    if (off < cs) fail(fmt::format("{} overlaps the qcow2 header", what));
    if (off > file_size || bytes > file_size - off)
      fail(fmt::format("{} lies beyond the end of the file", what));
  };
  inside("active L1 table", h.l1_table_offset, std::uint64_t{h.l1_size} * 8);
  inside("reference count table", h.refcount_table_offset,
         std::uint64_t{h.refcount_table_clusters} * cs);
  inside("snapshot table", h.snapshots_offset,
         h.nb_snapshots ? std::uint64_t{h.nb_snapshots} * 40 : 0);
  if (h.bitmaps) {
    if (h.bitmaps->directory_size > 64ull << 20) fail("bitmap directory too large");
    inside("bitmap directory", h.bitmaps->directory_offset, h.bitmaps->directory_size);
  }
}

std::vector<std::byte> encode_header(const Header& h) {
  std::vector<std::byte> out(h.cluster_size());
  std::byte* p = out.data();
  const bool v3 = h.version >= 3;
  const std::uint32_t header_length =
      v3 ? static_cast<std::uint32_t>(std::max<std::size_t>(
               QCOW2_V3_HEADER_LENGTH + 8 + h.unknown_header_fields.size(), h.header_length))
         : QCOW2_V2_HEADER_LENGTH;
  if (header_length > out.size()) fail("qcow2 header exceeds cluster size");
  store_be32(p, QCOW_MAGIC);
  store_be32(p + 4, h.version);
  store_be32(p + 20, h.cluster_bits);
  store_be64(p + 24, h.size);
  store_be32(p + 32, h.crypt_method);
  store_be32(p + 36, h.l1_size);
  store_be64(p + 40, h.l1_table_offset);
  store_be64(p + 48, h.refcount_table_offset);
  store_be32(p + 56, h.refcount_table_clusters);
  store_be32(p + 60, h.nb_snapshots);
  store_be64(p + 64, h.snapshots_offset);
  if (v3) {
    store_be64(p + 72, h.incompatible_features);
    store_be64(p + 80, h.compatible_features);
    store_be64(p + 88, h.autoclear_features);
    store_be32(p + 96, h.refcount_order);
    store_be32(p + 100, header_length);
    p[QCOW2_COMPRESSION_TYPE_OFFSET] = std::byte{h.compression_type};
    std::copy(h.unknown_header_fields.begin(), h.unknown_header_fields.end(),
              out.begin() + QCOW2_V3_HEADER_LENGTH + 8);
  }
  std::size_t pos = header_length;
  write_known_extensions(h, out, pos);
  for (const auto& e : h.unknown_extensions) write_extension(out, pos, e.type, e.data);
  pos += 8;  // end-of-extensions marker (zeros)
  if (!h.backing_file.empty()) {
    if (h.backing_file.size() > MAX_BACKING_FILE_NAME || pos + h.backing_file.size() > out.size())
      fail("backing file name too long");
    std::memcpy(out.data() + pos, h.backing_file.data(), h.backing_file.size());
    store_be64(p + 8, pos);
    store_be32(p + 16, static_cast<std::uint32_t>(h.backing_file.size()));
  }
  return out;
}

}  // namespace qnbd::qcow2::format
