// The server's configuration as plain structs, filled either from the
// command line (server/cli) or from a YAML file (config/yaml_config). Both
// run validate() so the same rules hold whatever the source.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace qnbd::config {

// Thrown at start-up only; what() is one line ready for stderr, prefixed
// with "FILE:LINE: " when it comes from a config file.
struct ConfigError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class Format { detect, raw, qcow2 };
enum class CacheMode { writeback, none };
enum class LogLevel { trace, debug, info, warn, error };

struct Export {
  std::string name;  // "" is the default export
  std::string path;
  std::string description;
  Format format = Format::detect;
  bool read_only = false;
  CacheMode cache = CacheMode::writeback;
  // qcow2 metadata cache sizes in bytes; 0 = engine default.
  std::uint64_t l2_cache_size = 0;
  std::uint64_t refcount_cache_size = 0;
  bool lazy_refcounts = false;
  // Seconds a dirty metadata cache may stay unwritten while idle.
  double cache_clean_interval = 5.0;
};

struct Listen {
  std::optional<std::string> unix_path;
  bool tcp = true;
  std::string host = "127.0.0.1";
  std::uint16_t port = 10809;
};

struct Config {
  Listen listen;
  unsigned max_connections = 100;
  unsigned workers = 0;  // worker threads; 0 = one per core, at most 8
  unsigned handshake_timeout_s = 10;
  LogLevel log_level = LogLevel::info;
  std::optional<std::string> pid_file;
  bool fork = false;  // detach once listening (like qemu-nbd --fork)
  std::vector<Export> exports;
  // Absolute path of the YAML file the config came from; "" for the command
  // line. Kept so a reload (SIGHUP) can read the same file again.
  std::string config_file;
};

// Checks cross-field rules (at least one export, unique names, files exist
// and are readable). Throws ConfigError.
void validate(const Config& cfg);

}  // namespace qnbd::config
