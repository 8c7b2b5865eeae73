// A scratch directory for one test, removed with everything in it.
#pragma once

#include <filesystem>
#include <string>

namespace qnbd::test {

class TempDir {
 public:
  // Under `parent` (default $TMPDIR, or /tmp), named prefix-XXXXXX.
  explicit TempDir(const std::string& prefix = "qnbd-test",
                   const std::filesystem::path& parent = {});
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  // The path of `name` inside; nothing is created.
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  // Writes `content` to `name` inside (creating its directories); returns the
  // path. The default content makes a small valid raw image.
  std::string write(const std::string& name,
                    const std::string& content = std::string(4096, 'x')) const;

 private:
  std::filesystem::path path_;
};

}  // namespace qnbd::test
