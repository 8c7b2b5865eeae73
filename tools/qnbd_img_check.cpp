// qnbd-img check [-r leaks|all] [--output=human|json] FILE, with qemu-img
// check's output and exit status: 0 clean, 1 check failed, 2 corruptions,
// 3 leaks only, 63 format without checks (raw). After a repair the image is
// checked again and the status describes the repaired image.
#include "qcow2/check/check.h"
#include "tools/qnbd_img_common.h"

#include <fmt/format.h>

#include <cstdio>

namespace qnbd::img {
namespace {

using qcow2::check::CheckResult;
using qcow2::check::Fix;

void print_human(const CheckResult& r) {
  if (!(r.corruptions || r.leaks || r.check_errors)) {
    std::printf("No errors were found on the image.\n");
  } else {
    if (r.corruptions)
      std::printf(
          "\n%lld errors were found on the image.\n"
          "Data may be corrupted, or further writes to the image may corrupt it.\n",
          static_cast<long long>(r.corruptions));
    if (r.leaks)
      std::printf(
          "\n%lld leaked clusters were found on the image.\n"
          "This means waste of disk space, but no harm to data.\n",
          static_cast<long long>(r.leaks));
    if (r.check_errors)
      std::printf("\n%lld internal errors have occurred during the check.\n",
                  static_cast<long long>(r.check_errors));
  }
  if (r.total_clusters && r.allocated_clusters)
    std::printf("%llu/%llu = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% compressed clusters\n",
                static_cast<unsigned long long>(r.allocated_clusters),
                static_cast<unsigned long long>(r.total_clusters),
                r.allocated_clusters * 100.0 / r.total_clusters,
                r.fragmented_clusters * 100.0 / r.allocated_clusters,
                r.compressed_clusters * 100.0 / r.allocated_clusters);
  if (r.image_end_offset)
    std::printf("Image end offset: %llu\n", static_cast<unsigned long long>(r.image_end_offset));
}

void print_json(const CheckResult& r, const std::string& file) {
  std::string out = "{\n";
  auto field = [&](const char* k, std::uint64_t v, bool always = false) {
    if (v || always) out += fmt::format("    \"{}\": {},\n", k, v);
  };
  field("image-end-offset", r.image_end_offset);
  field("total-clusters", r.total_clusters);
  field("check-errors", static_cast<std::uint64_t>(r.check_errors), true);
  field("leaks", static_cast<std::uint64_t>(r.leaks));
  field("leaks-fixed", static_cast<std::uint64_t>(r.leaks_fixed));
  field("corruptions", static_cast<std::uint64_t>(r.corruptions));
  field("corruptions-fixed", static_cast<std::uint64_t>(r.corruptions_fixed));
  field("allocated-clusters", r.allocated_clusters);
  field("fragmented-clusters", r.fragmented_clusters);
  field("compressed-clusters", r.compressed_clusters);
  out += fmt::format("    \"filename\": {},\n    \"format\": \"qcow2\"\n}}\n", json_string(file));
  std::fputs(out.c_str(), stdout);
}

CheckResult run_check(const std::string& path, Fix fix, bool quiet_log) {
  qcow2::SyncRunner run;
  auto file = open_file(run, path, fix != Fix::none);
  qcow2::check::CheckOptions o;
  o.fix = fix;
  // A dirty image can produce millions of lines: write them in large
  // blocks rather than one unbuffered write each.
  std::string pending;
  auto flush = [&] {
    std::fwrite(pending.data(), 1, pending.size(), stderr);
    pending.clear();
  };
  if (!quiet_log)
    o.log = [&](const std::string& line) {
      pending += line;
      pending += '\n';
      if (pending.size() >= (1u << 16)) flush();
    };
  CheckResult r = run.run(qcow2::check::check_image(*file, o));
  flush();
  return r;
}

}  // namespace

int cmd_check(const Args& args) {
  const ParsedArgs a = parse_args(args, {"-r", "-f", "--output", "-T"}, {"-q"});
  if (a.positional.size() != 1) throw Fatal("Expecting one image file name");
  const bool json = json_output(a);
  const bool quiet = a.has("-q");
  Fix fix = Fix::none;
  if (const auto* r = a.last("-r")) {
    if (*r == "leaks")
      fix = Fix::leaks;
    else if (*r == "all")
      fix = Fix::all;
    else
      throw Fatal(fmt::format("Unknown option value for -r (expecting 'leaks' or 'all'): {}", *r));
  }
  const std::string& path = a.positional[0];
  if (const auto* f = a.last("-f"); f && *f != "qcow2" && *f != "raw")
    throw Fatal(fmt::format("Unknown file format '{}'", *f));
  if (!is_qcow2(path)) {
    if (const auto* f = a.last("-f"); f && *f == "qcow2")
      throw Fatal(fmt::format("Could not open '{}': Image is not in qcow2 format", path));
    std::fprintf(stderr, "qnbd-img: This image format does not support checks\n");
    return 63;
  }
  CheckResult r = run_check(path, fix, quiet);
  // Like qemu-img: a repair that stopped early is not double-checked.
  if (r.failure.empty() && (r.corruptions_fixed || r.leaks_fixed)) {
    if (!json && !quiet)
      std::printf(
          "The following inconsistencies were found and repaired:\n\n"
          "    %lld leaked clusters\n    %lld corruptions\n\n"
          "Double checking the fixed image now...\n",
          static_cast<long long>(r.leaks_fixed), static_cast<long long>(r.corruptions_fixed));
    const CheckResult fixed = r;
    r = run_check(path, Fix::none, quiet);
    r.leaks_fixed = fixed.leaks_fixed;
    r.corruptions_fixed = fixed.corruptions_fixed;
  }
  if (!r.failure.empty()) {
    // The check stopped early (qemu: bdrv_check returned an error): no report.
    if (r.total_clusters == 0 && r.image_end_offset == 0 && r.allocated_clusters == 0)
      std::fprintf(stderr, "qnbd-img: Could not open '%s': %s\n", path.c_str(), r.failure.c_str());
    else
      std::fprintf(stderr, "qnbd-img: Check failed: %s\n", r.failure.c_str());
    return 1;
  }
  if (!quiet) {
    if (json)
      print_json(r, path);
    else
      print_human(r);
  }
  if (r.check_errors) {
    std::fprintf(stderr, "qnbd-img: Check failed\n");
    return 1;
  }
  return qcow2::check::exit_code(r);
}

}  // namespace qnbd::img
