// qnbd-img create [-f qcow2|raw] [-b BACKING [-F FMT]] [-o OPTIONS] FILE [SIZE]
#include "qcow2/meta/backing.h"
#include "qcow2/meta/image_meta.h"
#include "qcow2/create/create.h"
#include "tools/qnbd_img_common.h"

#include <fmt/format.h>

#include <cstdio>

namespace qnbd::img {
namespace {

using qcow2::create::CreateOptions;
using qcow2::create::Prealloc;

Prealloc parse_prealloc(const std::string& v) {
  if (v == "off") return Prealloc::off;
  if (v == "metadata") return Prealloc::metadata;
  if (v == "falloc") return Prealloc::falloc;
  if (v == "full") return Prealloc::full;
  throw Fatal(fmt::format("Invalid preallocation mode: '{}'", v));
}

const char* prealloc_name(Prealloc p) {
  switch (p) {
    case Prealloc::off:
      return "off";
    case Prealloc::metadata:
      return "metadata";
    case Prealloc::falloc:
      return "falloc";
    case Prealloc::full:
      return "full";
  }
  return "off";
}

struct Request {
  std::string format = "qcow2";
  CreateOptions opts;
  bool size_given = false;
};

void apply_option(Request& r, const std::string& k, const std::string& v) {
  CreateOptions& o = r.opts;
  const bool qcow2_only = k != "size" && k != "preallocation";
  if (r.format == "raw" && qcow2_only)
    throw Fatal(fmt::format("Invalid parameter '{}' for format 'raw'", k));
  if (k == "cluster_size")
    o.cluster_size = parse_size(v);
  else if (k == "compat") {
    if (v == "0.10" || v == "v2")
      o.version = 2;
    else if (v == "1.1" || v == "v3")
      o.version = 3;
    else
      throw Fatal(fmt::format("Invalid compatibility level: '{}'", v));
  } else if (k == "lazy_refcounts")
    o.lazy_refcounts = parse_bool(k, v);
  else if (k == "extended_l2")
    o.extended_l2 = parse_bool(k, v);
  else if (k == "refcount_bits") {
    const std::uint64_t b = parse_size(v);
    if (b == 0 || b > 64)
      throw Fatal("Refcount width must be a power of two and may not exceed 64 bits");
    o.refcount_bits = static_cast<std::uint32_t>(b);
  } else if (k == "compression_type") {
    if (v == "zlib")
      o.compression_type = qcow2::format::QCOW2_COMPRESSION_TYPE_ZLIB;
    else if (v == "zstd")
      o.compression_type = qcow2::format::QCOW2_COMPRESSION_TYPE_ZSTD;
    else
      throw Fatal(fmt::format("Invalid compression type: '{}'", v));
  } else if (k == "preallocation")
    o.prealloc = parse_prealloc(v);
  else if (k == "backing_file")
    o.backing_file = v;
  else if (k == "backing_fmt")
    o.backing_format = v;
  else if (k == "size") {
    o.size = parse_size(v);
    r.size_given = true;
  } else
    throw Fatal(fmt::format("Invalid parameter '{}'", k));
}

// Virtual size and format of a backing file (resolved next to the image).
std::pair<std::uint64_t, std::string> probe_backing(const std::string& image,
                                                    const std::string& backing,
                                                    const std::string& fmt) {
  const std::string path = qcow2::meta::resolve_backing(image, backing);
  qcow2::SyncRunner run;
  auto file = open_file(run, path, false);
  const bool qcow2 = is_qcow2(path);
  const std::string detected = qcow2 ? "qcow2" : "raw";
  const std::string use = fmt.empty() ? detected : fmt;
  if (use != "qcow2" && use != "raw") throw Fatal(fmt::format("Unknown driver '{}'", use));
  if (use == "qcow2") {
    if (!qcow2)
      throw Fatal(
          fmt::format("Could not open backing image '{}': Image is not in qcow2 format", path));
    auto meta = run.run(qcow2::meta::load_image_meta(*file, qcow2::meta::LoadPurpose::inspect));
    return {meta.header.size, use};
  }
  auto size = file->size();
  if (!size) throw Fatal(fmt::format("Could not open '{}': {}", path, size.error().message()));
  return {*size, use};
}

void print_formatting(const std::string& file, const Request& r) {
  const CreateOptions& o = r.opts;
  if (r.format == "raw") {
    std::printf("Formatting '%s', fmt=raw size=%llu\n", file.c_str(),
                static_cast<unsigned long long>(o.size));
    return;
  }
  std::string line = fmt::format(
      "Formatting '{}', fmt=qcow2 cluster_size={} extended_l2={} compression_type={} size={}", file,
      o.cluster_size, o.extended_l2 ? "on" : "off", o.compression_type ? "zstd" : "zlib", o.size);
  if (!o.backing_file.empty()) line += " backing_file=" + o.backing_file;
  if (!o.backing_format.empty()) line += " backing_fmt=" + o.backing_format;
  if (o.prealloc != Prealloc::off)
    line += fmt::format(" preallocation={}", prealloc_name(o.prealloc));
  line += fmt::format(" lazy_refcounts={} refcount_bits={}", o.lazy_refcounts ? "on" : "off",
                      o.refcount_bits);
  std::printf("%s\n", line.c_str());
}

void create_raw(const std::string& path, const CreateOptions& o) {
  if (o.prealloc == Prealloc::metadata) throw Fatal("Invalid preallocation mode: 'metadata'");
  qcow2::SyncRunner run;
  auto f = io::UringFile::open(run.ring(), path, {.create = true});
  if (!f) throw Fatal(fmt::format("{}: Could not create file: {}", path, f.error().message()));
  auto& file = **f;
  if (auto t = file.truncate(0); !t) throw Fatal(fmt::format("{}: {}", path, t.error().message()));
  if (auto t = file.truncate(o.size); !t)
    throw Fatal(fmt::format("{}: Could not resize file: {}", path, t.error().message()));
  if (o.prealloc == Prealloc::falloc || o.prealloc == Prealloc::full) {
    auto r = run.run(file.allocate(0, o.size));
    if (!r)
      throw Fatal(fmt::format("{}: Could not preallocate data: {}", path, r.error().message()));
  }
}

void create_qcow2(const std::string& path, const CreateOptions& o) {
  qcow2::create::plan_layout(o);  // validate before touching the file
  qcow2::SyncRunner run;
  auto f = io::UringFile::open(run.ring(), path, {.create = true});
  if (!f) throw Fatal(fmt::format("{}: Could not create file: {}", path, f.error().message()));
  auto r = run.run(qcow2::create::create_image(**f, o));
  if (!r) throw Fatal(fmt::format("{}: Could not create image: {}", path, r.error().message()));
}

}  // namespace

constexpr const char* kOptionHelp =
    "Supported options:\n"
    "  backing_file=<str>     - File name of a base image\n"
    "  backing_fmt=<str>      - Image format of the base image (qcow2 or raw)\n"
    "  cluster_size=<size>    - qcow2 cluster size (512 to 2M, default 64k)\n"
    "  compat=<str>           - Compatibility level (0.10 or v2, 1.1 or v3)\n"
    "  compression_type=<str> - Compression method used for image cluster compression (zlib, "
    "zstd)\n"
    "  extended_l2=<bool (on/off)> - Extended L2 tables (subclusters)\n"
    "  lazy_refcounts=<bool (on/off)> - Postpone refcount updates\n"
    "  preallocation=<str>    - Preallocation mode (allowed values: off, metadata, falloc, full)\n"
    "  refcount_bits=<num>    - Width of a reference count entry in bits (1..64, power of two)\n"
    "  size=<size>            - Virtual disk size\n";

int cmd_create(const Args& args) {
  const ParsedArgs a = parse_args(args, {"-f", "-b", "-F", "-o"}, {"-q", "-u"});
  for (const auto& [k, v] : a.options)
    if (k == "-o" && (v == "help" || v == "?")) {
      std::fputs(kOptionHelp, stdout);
      return 0;
    }
  if (a.positional.empty()) throw Fatal("Expecting image file name");
  if (a.positional.size() > 2) throw Fatal(fmt::format("Unexpected argument: {}", a.positional[2]));
  Request r;
  if (const auto* f = a.last("-f")) r.format = *f;
  if (r.format != "qcow2" && r.format != "raw")
    throw Fatal(fmt::format("Unknown file format '{}'", r.format));
  for (const auto& [k, v] : a.options) {
    if (k == "-o")
      for (const auto& [ok, ov] : parse_options(v)) apply_option(r, ok, ov);
    else if (k == "-b")
      apply_option(r, "backing_file", v);
    else if (k == "-F")
      apply_option(r, "backing_fmt", v);
  }
  const std::string& path = a.positional[0];
  if (a.positional.size() == 2) {
    r.opts.size = parse_size(a.positional[1]);
    r.size_given = true;
  }
  CreateOptions& o = r.opts;
  if (!o.backing_format.empty() && o.backing_file.empty())
    throw Fatal("Backing format specified without a backing file");
  if (!o.backing_file.empty() && a.has("-u")) {
    // Unsafe: the backing file is not opened (it may not exist yet).
    if (!r.size_given) throw Fatal("Image creation needs a size parameter");
    if (o.backing_format.empty()) throw Fatal("Backing format must be given with -F when using -u");
  } else if (!o.backing_file.empty()) {
    if (o.backing_file == path)
      throw Fatal("Error: Trying to create an image with the same filename as the backing file");
    auto [size, fmt] = probe_backing(path, o.backing_file, o.backing_format);
    o.backing_format = fmt;
    if (!r.size_given) o.size = size;
  } else if (!r.size_given) {
    throw Fatal("Image creation needs a size parameter");
  }
  if (!a.has("-q")) print_formatting(path, r);
  std::fflush(stdout);
  try {
    if (r.format == "raw")
      create_raw(path, o);
    else
      create_qcow2(path, o);
  } catch (const qcow2::create::OptionError& e) {
    throw Fatal(fmt::format("{}: {}", path, e.what()));
  }
  return 0;
}

}  // namespace qnbd::img
