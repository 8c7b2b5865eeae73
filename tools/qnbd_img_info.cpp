// qnbd-img info [--output=human|json] FILE: what qemu-img info shows for
// qcow2 and raw images (no backing chain walk, as qemu-img without
// --backing-chain).
#include "qcow2/format/bitmaps.h"
#include "qcow2/meta/backing.h"
#include "qcow2/meta/image_meta.h"
#include "qcow2/format/endian.h"
#include "tools/qnbd_img_common.h"
#include "tools/qnbd_img_layout.h"

#include <fmt/format.h>

#include <sys/stat.h>

#include <cstdio>
#include <ctime>

namespace qnbd::img {
namespace {

using qcow2::format::Snapshot;
using qcow2::meta::ImageMeta;

struct SnapshotInfo {
  const Snapshot* s;
  std::optional<std::uint64_t> icount;
};

std::optional<std::uint64_t> icount_of(const Snapshot& s) {
  if (s.extra_data.size() < 24) return std::nullopt;
  const std::uint64_t v = qcow2::format::load_be64(s.extra_data.data() + 16);
  if (v == ~0ull) return std::nullopt;
  return v;
}

std::uint64_t disk_usage(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) < 0) return 0;
  return static_cast<std::uint64_t>(st.st_blocks) * 512;
}

struct BitmapInfo {
  std::string name;
  std::uint64_t granularity = 0;
  std::vector<std::string> flags;  // in qemu's order: "in-use", "auto"
};

// qemu-img info shows nothing of a directory it cannot read either.
std::vector<BitmapInfo> read_bitmaps(qcow2::SyncRunner& run, io::File& file, const ImageMeta& m) {
  std::vector<BitmapInfo> out;
  const auto& b = m.header.bitmaps;
  if (!b || b->directory_size > qcow2::format::QCOW2_MAX_BITMAP_DIRECTORY_SIZE) return out;
  std::vector<std::byte> dir(b->directory_size);
  if (!run.run(file.read_at(b->directory_offset, dir))) return out;
  std::vector<qcow2::format::BitmapEntry> entries;
  try {
    entries = qcow2::format::parse_bitmap_directory(dir, m.header);
  } catch (const qcow2::format::FormatError& e) {
    std::fprintf(stderr, "qnbd-img: warning: %s\n", e.what());
    return out;
  }
  for (const auto& e : entries) {
    BitmapInfo bi;
    bi.name = e.name;
    bi.granularity = e.granularity();
    if (e.in_use()) bi.flags.push_back("in-use");
    if (e.enabled()) bi.flags.push_back("auto");
    out.push_back(std::move(bi));
  }
  return out;
}

void print_human_bitmaps(const std::vector<BitmapInfo>& bitmaps) {
  if (bitmaps.empty()) return;
  std::printf("    bitmaps:\n");
  for (std::size_t i = 0; i < bitmaps.size(); ++i) {
    std::printf("        [%zu]:\n            flags:\n", i);
    for (std::size_t j = 0; j < bitmaps[i].flags.size(); ++j)
      std::printf("                [%zu]: %s\n", j, bitmaps[i].flags[j].c_str());
    std::printf("            name: %s\n            granularity: %llu\n", bitmaps[i].name.c_str(),
                static_cast<unsigned long long>(bitmaps[i].granularity));
  }
}

std::string json_bitmaps(const std::vector<BitmapInfo>& bitmaps) {
  if (bitmaps.empty()) return "";
  std::string out = "            \"bitmaps\": [\n";
  for (std::size_t i = 0; i < bitmaps.size(); ++i) {
    out += "                {\n                    \"flags\": [";
    for (std::size_t j = 0; j < bitmaps[i].flags.size(); ++j)
      out += fmt::format("{}\n                        \"{}\"", j ? "," : "", bitmaps[i].flags[j]);
    out += bitmaps[i].flags.empty() ? "],\n" : "\n                    ],\n";
    out +=
        fmt::format("                    \"name\": {},\n                    \"granularity\": {}\n",
                    json_string(bitmaps[i].name), bitmaps[i].granularity);
    out += i + 1 < bitmaps.size() ? "                },\n" : "                }\n";
  }
  return out + "            ],\n";
}

std::string snapshot_line(const Snapshot& s) {
  char date[32] = "";
  const std::time_t t = s.date_sec;
  std::tm tm{};
  localtime_r(&t, &tm);
  std::strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S", &tm);
  const std::uint64_t secs = s.vm_clock_nsec / 1000000000;
  const std::string clock = fmt::format("{:02}:{:02}:{:02}.{:03}", secs / 3600, (secs / 60) % 60,
                                        secs % 60, (s.vm_clock_nsec / 1000000) % 1000);
  const auto ic = icount_of(s);
  return fmt::format("{:<9} {:<16} {:>8}{:>20}{:>13}{:>11}", s.id, s.name,
                     human_size(s.vm_state_size), date, clock, ic ? std::to_string(*ic) : "");
}

void print_human_qcow2(const std::string& path, const ImageMeta& m,
                       const std::vector<BitmapInfo>& bitmaps, const std::string& layout) {
  const auto& h = m.header;
  std::printf("image: %s\nfile format: qcow2\n", path.c_str());
  std::printf("virtual size: %s (%llu bytes)\n", human_size(h.size).c_str(),
              static_cast<unsigned long long>(h.size));
  std::printf("disk size: %s\ncluster_size: %llu\n", human_size(disk_usage(path)).c_str(),
              static_cast<unsigned long long>(h.cluster_size()));
  if (h.incompatible_features & qcow2::format::QCOW2_INCOMPAT_DIRTY)
    std::printf("cleanly shut down: no\n");
  if (!h.backing_file.empty()) {
    const std::string full = qcow2::meta::resolve_backing(path, h.backing_file);
    if (full == h.backing_file)
      std::printf("backing file: %s\n", h.backing_file.c_str());
    else
      std::printf("backing file: %s (actual path: %s)\n", h.backing_file.c_str(), full.c_str());
    if (!h.backing_format.empty())
      std::printf("backing file format: %s\n", h.backing_format.c_str());
  }
  if (!m.snapshots.empty()) {
    std::printf("Snapshot list:\n%-10s%-17s%8s%20s%13s%11s\n", "ID", "TAG", "VM SIZE", "DATE",
                "VM CLOCK", "ICOUNT");
    for (const auto& s : m.snapshots) std::printf("%s\n", snapshot_line(s).c_str());
  }
  std::printf("Format specific information:\n");
  const bool v3 = h.version >= 3;
  std::printf("    compat: %s\n", v3 ? "1.1" : "0.10");
  std::printf("    compression type: %s\n", h.compression_type ? "zstd" : "zlib");
  if (v3)
    std::printf(
        "    lazy refcounts: %s\n",
        h.compatible_features & qcow2::format::QCOW2_COMPAT_LAZY_REFCOUNTS ? "true" : "false");
  print_human_bitmaps(bitmaps);
  std::printf("    refcount bits: %u\n", 1u << h.refcount_order);
  if (v3) {
    std::printf("    corrupt: %s\n",
                h.incompatible_features & qcow2::format::QCOW2_INCOMPAT_CORRUPT ? "true" : "false");
    std::printf("    extended l2: %s\n", h.extended_l2() ? "true" : "false");
  }
  std::fputs(layout.c_str(), stdout);
}

std::string json_snapshots(const ImageMeta& m) {
  std::string out = "    \"snapshots\": [\n";
  for (std::size_t i = 0; i < m.snapshots.size(); ++i) {
    const auto& s = m.snapshots[i];
    out += "        {\n";
    if (auto ic = icount_of(s)) out += fmt::format("            \"icount\": {},\n", *ic);
    out += fmt::format(
        "            \"vm-clock-nsec\": {},\n            \"name\": {},\n"
        "            \"date-sec\": {},\n            \"date-nsec\": {},\n"
        "            \"vm-clock-sec\": {},\n            \"id\": {},\n"
        "            \"vm-state-size\": {}\n",
        s.vm_clock_nsec % 1000000000, json_string(s.name), s.date_sec, s.date_nsec,
        s.vm_clock_nsec / 1000000000, json_string(s.id), s.vm_state_size);
    out += i + 1 < m.snapshots.size() ? "        },\n" : "        }\n";
  }
  return out + "    ],\n";
}

void print_json_qcow2(const std::string& path, const ImageMeta& m,
                      const std::vector<BitmapInfo>& bitmaps, const std::string& layout) {
  const auto& h = m.header;
  const bool v3 = h.version >= 3;
  std::string out = "{\n";
  if (!h.backing_format.empty())
    out += fmt::format("    \"backing-filename-format\": {},\n", json_string(h.backing_format));
  if (!m.snapshots.empty()) out += json_snapshots(m);
  out +=
      fmt::format("    \"virtual-size\": {},\n    \"filename\": {},\n", h.size, json_string(path));
  out += fmt::format("    \"cluster-size\": {},\n    \"format\": \"qcow2\",\n", h.cluster_size());
  out += fmt::format("    \"actual-size\": {},\n", disk_usage(path));
  out += "    \"format-specific\": {\n        \"type\": \"qcow2\",\n        \"data\": {\n";
  out += fmt::format("            \"compat\": \"{}\",\n", v3 ? "1.1" : "0.10");
  out += fmt::format("            \"compression-type\": \"{}\",\n",
                     h.compression_type ? "zstd" : "zlib");
  if (v3)
    out += fmt::format(
        "            \"lazy-refcounts\": {},\n",
        h.compatible_features & qcow2::format::QCOW2_COMPAT_LAZY_REFCOUNTS ? "true" : "false");
  out += json_bitmaps(bitmaps);
  out +=
      fmt::format("            \"refcount-bits\": {}{}\n", 1u << h.refcount_order, v3 ? "," : "");
  if (v3) {
    out += fmt::format(
        "            \"corrupt\": {},\n",
        h.incompatible_features & qcow2::format::QCOW2_INCOMPAT_CORRUPT ? "true" : "false");
    out += fmt::format("            \"extended-l2\": {}\n", h.extended_l2() ? "true" : "false");
  }
  out += "        }\n    },\n";
  if (!h.backing_file.empty()) {
    out += fmt::format("    \"full-backing-filename\": {},\n",
                       json_string(qcow2::meta::resolve_backing(path, h.backing_file)));
    out += fmt::format("    \"backing-filename\": {},\n", json_string(h.backing_file));
  }
  out += layout;
  out +=
      fmt::format("    \"dirty-flag\": {}\n}}\n",
                  h.incompatible_features & qcow2::format::QCOW2_INCOMPAT_DIRTY ? "true" : "false");
  std::fputs(out.c_str(), stdout);
}

void print_raw(const std::string& path, std::uint64_t size, bool json) {
  if (json) {
    std::printf(
        "{\n    \"virtual-size\": %llu,\n    \"filename\": %s,\n    \"format\": \"raw\",\n"
        "    \"actual-size\": %llu,\n    \"dirty-flag\": false\n}\n",
        static_cast<unsigned long long>(size), json_string(path).c_str(),
        static_cast<unsigned long long>(disk_usage(path)));
    return;
  }
  std::printf("image: %s\nfile format: raw\nvirtual size: %s (%llu bytes)\ndisk size: %s\n",
              path.c_str(), human_size(size).c_str(), static_cast<unsigned long long>(size),
              human_size(disk_usage(path)).c_str());
}

}  // namespace

int cmd_info(const Args& args) {
  const ParsedArgs a = parse_args(args, {"-f", "--output"}, {"-U", "--force-share"});
  if (a.positional.size() != 1) throw Fatal("Expecting one image file name");
  const bool json = json_output(a);
  const std::string& path = a.positional[0];
  const std::string* fmt_opt = a.last("-f");
  if (fmt_opt && *fmt_opt != "qcow2" && *fmt_opt != "raw")
    throw Fatal(fmt::format("Unknown driver '{}'", *fmt_opt));
  qcow2::SyncRunner run;
  auto file = open_file(run, path, false);
  const bool qcow2 = fmt_opt ? *fmt_opt == "qcow2" : is_qcow2(path);
  if (!qcow2) {
    auto size = file->size();
    if (!size) throw Fatal(fmt::format("Could not open '{}': {}", path, size.error().message()));
    print_raw(path, *size, json);
    return 0;
  }
  ImageMeta meta;
  try {
    meta = run.run(qcow2::meta::load_image_meta(*file, qcow2::meta::LoadPurpose::inspect));
  } catch (const std::exception& e) {
    throw Fatal(fmt::format("Could not open '{}': {}", path, e.what()));
  }
  const auto bitmaps = read_bitmaps(run, *file, meta);
  const auto stats = layout_stats(path);
  const std::uint64_t cs = meta.cluster_size();
  if (json)
    print_json_qcow2(path, meta, bitmaps, stats ? layout_json(*stats, cs) : "");
  else
    print_human_qcow2(path, meta, bitmaps, stats ? layout_human(*stats, cs) : "");
  return 0;
}

}  // namespace qnbd::img
