#include "qcow2/meta/backing.h"

#include "qcow2/format/constants.h"
#include "qcow2/format/endian.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <stdexcept>

namespace qnbd::qcow2::meta {

bool is_plain_backing_name(std::string_view name) {
  if (name.empty() || name.find('\0') != std::string_view::npos) return false;
  const auto stop = name.find_first_of(":/");
  return stop == std::string_view::npos || name[stop] != ':';
}

std::string resolve_backing(const std::string& image_path, const std::string& name) {
  if (name.empty() || name[0] == '/') return name;
  const auto slash = image_path.rfind('/');
  if (slash == std::string::npos) return name;
  return image_path.substr(0, slash + 1) + name;
}

std::string backing_path(const std::string& image_path, const std::string& name) {
  if (!is_plain_backing_name(name))
    throw std::runtime_error("backing file name '" + name +
                             "' is not a plain file path; refusing to open it");
  return resolve_backing(image_path, name);
}

void BackingChain::add(const std::string& path) {
  char buf[PATH_MAX];
  const std::string real = ::realpath(path.c_str(), buf) ? std::string(buf) : path;
  if (std::find(files_.begin(), files_.end(), real) != files_.end())
    throw std::runtime_error(path + ": backing chain loop");
  if (files_.size() >= kMaxBackingDepth)
    throw std::runtime_error(path + ": backing chain too deep");
  files_.push_back(real);
}

result<bool> probe_qcow2(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return result<bool>(boost::system::in_place_error, last_errno());
  std::byte magic[4] = {};
  const ssize_t n = ::pread(fd, magic, sizeof magic, 0);
  ::close(fd);
  return n == 4 && format::load_be32(magic) == format::QCOW_MAGIC;
}

}  // namespace qnbd::qcow2::meta
