#include "tests/lib/temp_dir.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <stdexcept>

namespace qnbd::test {

TempDir::TempDir(const std::string& prefix, const std::filesystem::path& parent) {
  const auto dir = parent.empty() ? std::filesystem::temp_directory_path() : parent;
  std::string tmpl = (dir / (prefix + "-XXXXXX")).string();
  if (::mkdtemp(tmpl.data()) == nullptr)
    throw std::runtime_error(std::string("mkdtemp: ") + std::strerror(errno));
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string TempDir::write(const std::string& name, const std::string& content) const {
  const std::filesystem::path p = path_ / name;
  std::filesystem::create_directories(p.parent_path());
  std::ofstream out(p, std::ios::binary);
  out << content;
  if (!out.flush()) throw std::runtime_error("cannot write " + p.string());
  return p.string();
}

}  // namespace qnbd::test
