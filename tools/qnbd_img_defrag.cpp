// qnbd-img defrag [-p] [-q] [--batch SIZE] FILE: moves data clusters so that
// guest-contiguous data is host-contiguous in guest order, gathers the free
// space at the end and truncates the file there. Every move goes through
// the engine with its crash ordering (qcow2/engine/defrag.h): a kill at any
// point leaves an image that reads the same and has at worst leaked clusters.
#include "qcow2/engine/defrag.h"
#include "qcow2/open.h"
#include "qcow2/qcow2_backend.h"
#include "tools/qnbd_img_common.h"

#include <fmt/format.h>

#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace qnbd::img {
namespace {

std::uint64_t file_size(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? static_cast<std::uint64_t>(st.st_size) : 0;
}

// qemu-img's progress line.
void progress(double fraction) {
  std::printf("    (%3.2f/100%%)\r", fraction * 100);
  std::fflush(stdout);
}

std::string runs(const qcow2::defrag::Stats& s) {
  return fmt::format("{}/{} host-contiguous runs ({:.2f}%)", s.contiguous_runs, s.guest_runs,
                     s.contiguous_fraction() * 100);
}

}  // namespace

int cmd_defrag(const Args& args) {
  const ParsedArgs a = parse_args(args, {"--batch", "-f"}, {"-p", "-q"});
  if (a.positional.size() != 1) throw Fatal("Expecting one image file name");
  const std::string& path = a.positional[0];
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    throw Fatal(fmt::format("Could not open '{}': {}", path, std::strerror(errno)));
  if (const auto* f = a.last("-f"); (f && *f != "qcow2") || !is_qcow2(path))
    throw Fatal(fmt::format("{}: defrag needs a qcow2 image", path));
  const bool show = a.has("-p") && !a.has("-q");
  qcow2::SyncRunner run;
  qcow2::OpenOptions o;
  auto backend = run.run(qcow2::open_image(run.ring(), path, o));
  auto& img = static_cast<qcow2::Qcow2Backend&>(*backend).image();
  const std::uint64_t cs = img.geometry().cluster_size();
  const std::uint64_t batch = a.has("--batch") ? parse_size(*a.last("--batch")) : 16 << 20;
  const std::size_t steps = std::max<std::uint64_t>(1, batch / cs);
  qcow2::Defragmenter d(img);
  const std::uint64_t size_before = file_size(path);
  std::uint64_t total = 0, moved = 0;
  qcow2::defrag::Stats first{};
  if (show) progress(0);
  for (bool start = true;; start = false) {
    auto c = run.run(d.cycle(steps));
    if (!c) throw Fatal(fmt::format("{}: defragmentation failed: {}", path, c.error().message()));
    if (start) first = c->stats;
    total = std::max(total, moved + c->remaining);
    if (c->remaining == 0) break;
    moved += c->moved;
    if (show) progress(static_cast<double>(moved) / total);
  }
  auto end = run.run(d.compact());
  if (!end) throw Fatal(fmt::format("{}: compaction failed: {}", path, end.error().message()));
  auto after = run.run(d.plan());
  if (auto r = run.run(backend->close()); !r)
    throw Fatal(fmt::format("{}: cannot close the image: {}", path, r.error().message()));
  if (show) std::printf("    (100.00/100%%)\n");
  if (!a.has("-q"))
    std::printf("Moved %llu clusters (%s); %s -> %s; file %s -> %s\n",
                static_cast<unsigned long long>(moved), human_size(moved * cs).c_str(),
                runs(first).c_str(), after ? runs(after->stats).c_str() : "?",
                human_size(size_before).c_str(), human_size(file_size(path)).c_str());
  return 0;
}

}  // namespace qnbd::img
