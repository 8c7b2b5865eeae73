// qnbd-img: offline qcow2 tool with qemu-img's command line for create,
// info, map and check. Each subcommand lives in its own file.
#include "tools/qnbd_img_common.h"

#include "qcow2/format/header.h"

#include <fmt/format.h>

#include <cstdio>
#include <cstring>
#include <exception>

namespace {

constexpr const char* kUsage =
    "usage: qnbd-img COMMAND [ARGS]\n"
    "  create [-f qcow2|raw] [-b BACKING [-F FMT]] [-o OPTIONS] FILE [SIZE]\n"
    "  info [--output=human|json] FILE\n"
    "  map [--output=human|json] FILE\n"
    "  check [-r leaks|all] [--output=human|json] FILE\n"
    "  bitmap (--add [--disable] | --remove | --clear | --enable | --disable |\n"
    "          --merge SOURCE [-b FILE [-F FMT]])... [-g GRANULARITY] FILE BITMAP\n"
    "  defrag [-p] [-q] [--batch SIZE] FILE\n"
    "create options: cluster_size, compat (0.10|1.1), lazy_refcounts, refcount_bits,\n"
    "  extended_l2, compression_type (zlib|zstd), preallocation (off|metadata|falloc|full),\n"
    "  backing_file, backing_fmt. Sizes take k, M, G, T, P, E suffixes.\n";

}  // namespace

int main(int argc, char** argv) {
  using namespace qnbd::img;
  if (argc < 2) {
    std::fputs(kUsage, stderr);
    return 1;
  }
  const std::string cmd = argv[1];
  if (cmd == "-h" || cmd == "--help" || cmd == "help") {
    std::fputs(kUsage, stdout);
    return 0;
  }
  const Args args(argv + 2, argv + argc);
  for (const auto& a : args)
    if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      return 0;
    }
  try {
    if (cmd == "create") return cmd_create(args);
    if (cmd == "info") return cmd_info(args);
    if (cmd == "map") return cmd_map(args);
    if (cmd == "check") return cmd_check(args);
    if (cmd == "bitmap") return cmd_bitmap(args);
    if (cmd == "defrag") return cmd_defrag(args);
    std::fprintf(stderr, "qnbd-img: Command not found: %s\n", cmd.c_str());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qnbd-img: %s\n", e.what());
    return 1;
  }
}
