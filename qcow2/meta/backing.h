// The one rule for backing files named by an image. The name in an image
// is untrusted input, so it is followed only as a plain file path:
//   - a NUL byte anywhere is refused (the name would be cut short);
//   - a ':' before the first '/' is a protocol spec to QEMU ("json:{...}",
//     "nbd:host:port", "http://...", "file:x"; qemu's path_has_protocol)
//     and is refused, even "file:" (CVE-2024-4467: a json: name can make
//     qemu-img open any file or connect anywhere);
//   - a relative name is resolved against the directory of the image that
//     names it (qemu's path_combine); "dir/x:y" is a plain path.
// The server (qcow2/open.cpp) and qnbd-img (tools/) both apply it, and a
// chain may hold each file once, at most kMaxBackingDepth deep.
#pragma once

#include "common/result.h"

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace qnbd::qcow2::meta {

inline constexpr std::size_t kMaxBackingDepth = 256;

// True if `name` may be followed (see above).
bool is_plain_backing_name(std::string_view name);

// The path of backing file `name` named by the image at `image_path`.
// Throws std::runtime_error("backing file name '...' is not a plain file
// path; refusing to open it") if the rule refuses it.
std::string backing_path(const std::string& image_path, const std::string& name);

// `name` resolved against the directory of `image_path`, without the rule
// (for display: qemu-img info's "actual path").
std::string resolve_backing(const std::string& image_path, const std::string& name);

// The files of one chain being opened, top first.
class BackingChain {
 public:
  // Adds the next file; throws std::runtime_error("<path>: backing chain
  // loop") if the file is already in the chain, or "...too deep".
  void add(const std::string& path);

 private:
  std::vector<std::string> files_;  // canonical paths
};

// Whether the file at `path` starts with the qcow2 magic "QFI\xfb"; an
// error if it cannot be opened.
result<bool> probe_qcow2(const std::string& path);

}  // namespace qnbd::qcow2::meta
