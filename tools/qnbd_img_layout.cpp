#include "tools/qnbd_img_layout.h"

#include "qcow2/engine/defrag.h"
#include "qcow2/open.h"
#include "qcow2/qcow2_backend.h"
#include "tools/qnbd_img_common.h"

#include <fmt/format.h>

namespace qnbd::img {

std::optional<qcow2::defrag::Stats> layout_stats(const std::string& path) {
  qcow2::SyncRunner run;
  qcow2::OpenOptions o;
  o.read_only = true;
  const QuietLog quiet;  // qemu-img info's output only
  std::optional<qcow2::defrag::Stats> out;
  try {
    auto backend = run.run(qcow2::open_image(run.ring(), path, o));
    auto& img = static_cast<qcow2::Qcow2Backend&>(*backend).image();
    auto plan = run.run(qcow2::Defragmenter(img).plan());
    if (plan) out = plan->stats;
    (void)run.run(backend->close());
  } catch (const std::exception&) {
  }
  return out;
}

namespace {
std::uint64_t reclaimable(const qcow2::defrag::Stats& s) {
  return s.file_clusters - std::min(s.file_clusters, s.target_clusters);
}
}  // namespace

std::string layout_human(const qcow2::defrag::Stats& s, std::uint64_t cs) {
  return fmt::format(
      "qnbd layout:\n"
      "    host-contiguous runs: {}/{} ({:.2f}%)\n"
      "    fragment breaks: {}\n"
      "    free inside the file: {}\n"
      "    reclaimable by compaction: {}\n",
      s.contiguous_runs, s.guest_runs, s.contiguous_fraction() * 100, s.breaks,
      human_size(s.free_clusters * cs), human_size(reclaimable(s) * cs));
}

std::string layout_json(const qcow2::defrag::Stats& s, std::uint64_t cs) {
  return fmt::format(
      "    \"qnbd-layout\": {{\n"
      "        \"data-clusters\": {},\n        \"guest-runs\": {},\n"
      "        \"host-contiguous-runs\": {},\n        \"contiguous-fraction\": {:.4f},\n"
      "        \"breaks\": {},\n        \"free-bytes\": {},\n"
      "        \"reclaimable-bytes\": {}\n    }},\n",
      s.data_clusters, s.guest_runs, s.contiguous_runs, s.contiguous_fraction(), s.breaks,
      s.free_clusters * cs, reclaimable(s) * cs);
}

}  // namespace qnbd::img
