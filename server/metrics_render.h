// Prometheus text exposition format (version 0.0.4) of the process's
// metrics. Pure: the caller gathers the values (metrics_http.cpp).
#pragma once

#include "backend/backend_stats.h"
#include "server/metrics.h"

#include <map>
#include <string>

namespace qnbd::metrics {

inline constexpr const char* kContentType = "text/plain; version=0.0.4; charset=utf-8";

// Request counters of every export seen so far (`requests`) and the image
// statistics of the exports served now (`images`), by export name, and the
// process's refusals by reason.
std::string render(const std::map<std::string, ExportTotals>& requests,
                   const std::map<std::string, BackendStats>& images,
                   const std::array<std::uint64_t, kRefusals>& refused = {});

// `s` as a label value: backslash, double quote and newline escaped.
std::string escape_label(std::string_view s);

}  // namespace qnbd::metrics
