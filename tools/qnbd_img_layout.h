// The layout figures `qnbd-img info` adds to qemu-img's output: how
// fragmented the data is and how many bytes a defragmentation would give
// back (qcow2/defrag/plan.h computes them).
#pragma once

#include "qcow2/defrag/plan.h"

#include <optional>
#include <string>

namespace qnbd::img {

// The figures of a qcow2 image opened read-only through the engine; none if
// it cannot be opened (a missing backing file: qemu-img info shows the rest).
std::optional<qcow2::defrag::Stats> layout_stats(const std::string& path);
// "qnbd layout:" and indented lines, after qemu-img's human output.
std::string layout_human(const qcow2::defrag::Stats& s, std::uint64_t cluster_size);
// A "qnbd-layout" member (with its trailing comma) for the JSON object.
std::string layout_json(const qcow2::defrag::Stats& s, std::uint64_t cluster_size);

}  // namespace qnbd::img
