#include "server/metrics_render.h"

#include <fmt/format.h>

#include <algorithm>
#include <iterator>

namespace qnbd::metrics {

std::string escape_label(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

namespace {

class Writer {
 public:
  void family(std::string_view name, std::string_view type, std::string_view help) {
    fmt::format_to(std::back_inserter(out_), "# HELP {} {}\n# TYPE {} {}\n", name, help, name,
                   type);
  }
  // `labels` is the text between the braces, already escaped.
  template <class V>
  void sample(std::string_view name, std::string_view labels, V value) {
    fmt::format_to(std::back_inserter(out_), "{}{{{}}} {}\n", name, labels, value);
  }
  std::string take() { return std::move(out_); }

 private:
  std::string out_;
};

using Requests = std::map<std::string, ExportTotals>;
using Images = std::map<std::string, BackendStats>;

double seconds(std::uint64_t ns) { return static_cast<double>(ns) / 1e9; }

std::string export_label(const std::string& name) {
  return "export=\"" + escape_label(name) + "\"";
}

void per_command(Writer& w, const Requests& rq, std::string_view name, std::string_view help,
                 std::uint64_t ExportTotals::Cmd::*field) {
  w.family(name, "counter", help);
  for (const auto& [exp, t] : rq)
    for (std::size_t c = 0; c < kCommands; ++c)
      w.sample(name, fmt::format("{},command=\"{}\"", export_label(exp), name_of(Command(c))),
               t.commands[c].*field);
}

void latency(Writer& w, const Requests& rq) {
  constexpr std::string_view name = "qnbd_request_duration_seconds";
  w.family(name, "histogram", "Time from reading a request to queueing its reply.");
  for (const auto& [exp, t] : rq) {
    for (std::size_t c = 0; c < kCommands; ++c) {
      const ExportTotals::Cmd& cmd = t.commands[c];
      const std::string base =
          fmt::format("{},command=\"{}\"", export_label(exp), name_of(Command(c)));
      std::uint64_t cumulative = 0;
      for (std::size_t b = 0; b < kBuckets; ++b) {
        cumulative += cmd.buckets[b];
        const std::string le =
            b < kLatencyBoundsNs.size() ? fmt::format("{}", seconds(kLatencyBoundsNs[b])) : "+Inf";
        w.sample("qnbd_request_duration_seconds_bucket", base + ",le=\"" + le + "\"", cumulative);
      }
      w.sample("qnbd_request_duration_seconds_sum", base, seconds(cmd.duration_ns));
      w.sample("qnbd_request_duration_seconds_count", base, cumulative);
    }
  }
}

void requests(Writer& w, const Requests& rq) {
  per_command(w, rq, "qnbd_requests_total", "NBD requests answered, by command.",
              &ExportTotals::Cmd::requests);
  per_command(w, rq, "qnbd_request_bytes_total",
              "Bytes the requests covered (read and write payloads; the range of trim, "
              "write_zeroes, cache and block_status).",
              &ExportTotals::Cmd::bytes);
  w.family("qnbd_request_errors_total", "counter", "Requests answered with an error, by errno.");
  for (const auto& [exp, t] : rq)
    for (std::size_t e = 0; e < kErrors; ++e)
      w.sample("qnbd_request_errors_total",
               fmt::format("{},errno=\"{}\"", export_label(exp), error_name(e)), t.errors[e]);
  latency(w, rq);
  w.family("qnbd_requests_in_flight", "gauge", "Requests read and not yet answered.");
  for (const auto& [exp, t] : rq)
    w.sample("qnbd_requests_in_flight", export_label(exp), t.in_flight);
  w.family("qnbd_connections", "gauge", "Clients connected to the export now.");
  for (const auto& [exp, t] : rq) w.sample("qnbd_connections", export_label(exp), t.connections);
  w.family("qnbd_connections_total", "counter", "Clients that connected to the export.");
  for (const auto& [exp, t] : rq)
    w.sample("qnbd_connections_total", export_label(exp), t.connections_total);
}

void cache_family(Writer& w, const Images& im, std::string_view name, std::string_view type,
                  std::string_view help, std::uint64_t MetadataCacheStats::*field) {
  w.family(name, type, help);
  for (const auto& [exp, s] : im) {
    if (s.l2_cache) w.sample(name, export_label(exp) + ",cache=\"l2\"", (*s.l2_cache).*field);
    if (s.refcount_cache)
      w.sample(name, export_label(exp) + ",cache=\"refcount\"", (*s.refcount_cache).*field);
  }
}

void image_family(Writer& w, const Images& im, std::string_view name, std::string_view type,
                  std::string_view help, std::uint64_t BackendStats::*field) {
  w.family(name, type, help);
  for (const auto& [exp, s] : im) w.sample(name, export_label(exp), s.*field);
}

template <class V>
void defrag_family(Writer& w, const Images& im, std::string_view name, std::string_view type,
                   std::string_view help, V DefragStats::*field) {
  // Only exports with defrag: auto have these series; no empty families.
  if (std::none_of(im.begin(), im.end(), [](const auto& e) { return e.second.defrag; })) return;
  w.family(name, type, help);
  for (const auto& [exp, s] : im)
    if (s.defrag) w.sample(name, export_label(exp), (*s.defrag).*field);
}

void defrag(Writer& w, const Images& im) {
  defrag_family(w, im, "qnbd_defrag_passes_total", "counter",
                "Online defragmentation passes finished (compaction included).",
                &DefragStats::passes);
  defrag_family(w, im, "qnbd_defrag_clusters_moved_total", "counter",
                "Clusters the online defragmenter moved.", &DefragStats::clusters_moved);
  defrag_family(w, im, "qnbd_defrag_active", "gauge", "1 while a defragmentation pass runs.",
                &DefragStats::active);
  defrag_family(w, im, "qnbd_defrag_contiguous_ratio", "gauge",
                "Guest runs of data that are host-contiguous, at the last layout check.",
                &DefragStats::contiguous_fraction);
  defrag_family(w, im, "qnbd_defrag_reclaimable_bytes", "gauge",
                "Bytes compaction would give back, at the last layout check.",
                &DefragStats::reclaimable_bytes);
}

void images(Writer& w, const Images& im) {
  cache_family(w, im, "qnbd_metadata_cache_hits_total", "counter",
               "qcow2 metadata table lookups served from the cache.", &MetadataCacheStats::hits);
  cache_family(w, im, "qnbd_metadata_cache_misses_total", "counter",
               "qcow2 metadata table lookups that read the image.", &MetadataCacheStats::misses);
  cache_family(w, im, "qnbd_metadata_cache_evictions_total", "counter",
               "qcow2 metadata tables dropped to make room.", &MetadataCacheStats::evictions);
  cache_family(w, im, "qnbd_metadata_cache_dirty_entries", "gauge",
               "qcow2 metadata tables changed and not yet written back.",
               &MetadataCacheStats::dirty);
  image_family(w, im, "qnbd_metadata_flushes_total", "counter",
               "qcow2 metadata write-back sequences (FLUSH, FUA, idle write-back, close).",
               &BackendStats::metadata_flushes);
  image_family(w, im, "qnbd_data_syncs_total", "counter", "fdatasync calls on the image file.",
               &BackendStats::data_syncs);
  image_family(w, im, "qnbd_image_file_size_bytes", "gauge", "Size of the image file.",
               &BackendStats::file_size);
  image_family(w, im, "qnbd_image_allocated_bytes", "gauge",
               "Bytes the file system allocated to the image file.",
               &BackendStats::allocated_bytes);
  defrag(w, im);
}

}  // namespace

std::string render(const Requests& rq, const Images& im,
                   const std::array<std::uint64_t, kRefusals>& refused) {
  // Exports served now but never connected to still show zeros.
  Requests all = rq;
  for (const auto& [name, s] : im) all.try_emplace(name);
  Writer w;
  w.family("qnbd_build_info", "gauge", "Always 1; the labels name the qnbd build.");
  w.sample("qnbd_build_info", "version=\"" QNBD_VERSION "\"", 1);
  w.family("qnbd_refusals_total", "counter",
           "Clients turned away before a session, by reason (each is also logged).");
  for (std::size_t i = 0; i < kRefusals; ++i)
    w.sample("qnbd_refusals_total", fmt::format("reason=\"{}\"", name_of(Refusal(i))), refused[i]);
  requests(w, all);
  images(w, im);
  return w.take();
}

}  // namespace qnbd::metrics
