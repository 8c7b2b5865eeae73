// qnbd-img bitmap (--add | --remove | --clear | --enable | --disable |
// --merge SOURCE [-b FILE [-F FMT]]...) [-g GRANULARITY] FILE BITMAP, as
// qemu-img bitmap: the operations apply in order, and the image is written
// once, at close, through the engine's bitmap store (crash-ordered like
// every metadata update of qnbd).
#include "qcow2/open.h"
#include "qcow2/qcow2_backend.h"
#include "tools/qnbd_img_common.h"

#include <fmt/format.h>

#include <bit>

namespace qnbd::img {
namespace {

using qcow2::BitmapSet;
using qcow2::DirtyBitmap;
using qcow2::Image;

std::unique_ptr<BlockBackend> open_qcow2(qcow2::SyncRunner& run, const std::string& path,
                                         bool read_only) {
  if (!is_qcow2(path)) throw Fatal(fmt::format("{}: bitmaps need a qcow2 image", path));
  qcow2::OpenOptions o;
  o.read_only = read_only;
  return run.run(qcow2::open_image(run.ring(), path, o));
}

Image& image_of(BlockBackend& b) { return static_cast<qcow2::Qcow2Backend&>(b).image(); }

// QEMU's default: the cluster size, within 4 KiB..64 KiB.
unsigned default_granularity_bits(const Image& img) {
  return std::clamp(img.geometry().cluster_bits(), 12u, 16u);
}

unsigned granularity_bits(const std::string& g) {
  const std::uint64_t v = parse_size(g);
  if (v < 512 || !std::has_single_bit(v))
    throw Fatal("Granularity must be power of 2 and at least 512");
  return static_cast<unsigned>(std::countr_zero(v));
}

DirtyBitmap& usable(BitmapSet& set, const std::string& name, const std::string& file) {
  DirtyBitmap* b = set.find(name);
  if (!b) throw Fatal(fmt::format("Dirty bitmap '{}' not found", name));
  if (b->inconsistent)
    throw Fatal(
        fmt::format("Bitmap '{}' is inconsistent and cannot be used\n"
                    "Try block-dirty-bitmap-remove to delete this bitmap from disk ({})",
                    name, file));
  return *b;
}

// dst |= src, whatever their granularities.
void merge_into(DirtyBitmap& dst, const DirtyBitmap& src, std::uint64_t size) {
  std::uint64_t pos = 0;
  for (auto [len, dirty] : src.runs(0, size, size)) {
    if (dirty) dst.mark(pos, len);
    pos += len;
  }
}

struct Op {
  std::string name, value, file, fmt;
};

void apply(const Op& op, Image& img, const std::string& file, const std::string& bitmap,
           const std::string* gran, qcow2::SyncRunner& run) {
  auto& set = img.bitmaps();
  const std::uint64_t cs = img.geometry().cluster_size();
  if (op.name == "--add") {
    const unsigned bits = gran ? granularity_bits(*gran) : default_granularity_bits(img);
    auto err = set.add(bitmap, bits, true, img.header());
    if (!err.empty()) throw Fatal(err);
  } else if (op.name == "--remove") {
    if (!set.remove(bitmap, cs)) throw Fatal(fmt::format("Dirty bitmap '{}' not found", bitmap));
  } else if (op.name == "--clear") {
    usable(set, bitmap, file).fill(false, img.size());
  } else if (op.name == "--enable" || op.name == "--disable") {
    DirtyBitmap& b = usable(set, bitmap, file);
    b.entry.flags = op.name == "--enable" ? b.entry.flags | qcow2::format::BME_FLAG_AUTO
                                          : b.entry.flags & ~qcow2::format::BME_FLAG_AUTO;
    set.set_directory_changed();
  } else if (op.name == "--merge") {
    DirtyBitmap& dst = usable(set, bitmap, file);
    if (op.file.empty() || op.file == file) {
      merge_into(dst, usable(set, op.value, file), img.size());
      return;
    }
    if (!op.fmt.empty() && op.fmt != "qcow2")
      throw Fatal(fmt::format("{}: bitmaps need a qcow2 image", op.file));
    auto other = open_qcow2(run, op.file, true);
    Image& src_img = image_of(*other);
    if (src_img.size() != img.size()) throw Fatal("Bitmaps are of different sizes");
    merge_into(dst, usable(src_img.bitmaps(), op.value, op.file), img.size());
    (void)run.run(other->close());
  }
}

}  // namespace

int cmd_bitmap(const Args& args) {
  const auto a = parse_args(args, {"--merge", "-b", "-F", "-g", "-f"},
                            {"--add", "--remove", "--clear", "--enable", "--disable"});
  if (a.positional.size() != 2) throw Fatal("Expecting filename and bitmap name");
  if (const auto* f = a.last("-f"); f && *f != "qcow2")
    throw Fatal(fmt::format("Format '{}' does not support bitmaps", *f));
  const std::string& file = a.positional[0];
  const std::string& bitmap = a.positional[1];
  // -b/-F belong to the --merge before them.
  std::vector<Op> ops;
  for (const auto& [name, value] : a.options) {
    if (name == "-b" || name == "-F") {
      if (ops.empty() || ops.back().name != "--merge") throw Fatal("-b and -F require --merge");
      (name == "-b" ? ops.back().file : ops.back().fmt) = value;
    } else if (name != "-g" && name != "-f") {
      ops.push_back({name, value, {}, {}});
    }
  }
  if (ops.empty())
    throw Fatal(
        "Need at least one of --add, --remove, --clear, --enable, "
        "--disable, or --merge");
  qcow2::SyncRunner run;
  auto backend = open_qcow2(run, file, false);
  Image& img = image_of(*backend);
  for (const auto& op : ops) {
    try {
      apply(op, img, file, bitmap, a.last("-g"), run);
    } catch (const Fatal& e) {
      throw Fatal(
          fmt::format("Operation {} on bitmap {} failed: {}", op.name.substr(2), bitmap, e.what()));
    }
  }
  if (auto r = run.run(backend->close()); !r)
    throw Fatal(fmt::format("{}: cannot write the bitmaps: {}", file, r.error().message()));
  return 0;
}

}  // namespace qnbd::img
