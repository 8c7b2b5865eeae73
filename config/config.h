// The server's configuration as plain structs, filled either from the
// command line (server/cli) or from a YAML file (config/yaml_config). Both
// run validate() so the same rules hold whatever the source.
#pragma once

#include <array>
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
enum class TlsMode { off, on, require };
// qemu's detect-zeroes: an all-zero WRITE becomes WRITE_ZEROES (unmap: one
// that may deallocate).
enum class DetectZeroes { off, on, unmap };

// One entry of an export's `allow:` list (grammar in config/access.h).
struct AllowRule {
  enum class Kind { address, uid, dn, psk };
  Kind kind = Kind::address;
  // address: IPv6 form (IPv4 as ::ffff:a.b.c.d) and prefix length over 128 bits
  std::array<unsigned char, 16> addr{};
  unsigned prefix = 0;
  std::uint32_t uid = 0;
  std::string name;  // dn (normalised) or PSK user name
  std::string text;  // as written, for messages
  bool operator==(const AllowRule&) const = default;
};

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
  // Online defragmentation (qcow2/engine/defrag_task.h): off or auto; bytes
  // moved per second at most; a pass starts when fewer than this percentage
  // of the guest-contiguous runs are host-contiguous (or space is reclaimable).
  bool defrag = false;
  std::uint64_t defrag_rate = 64ull << 20;
  unsigned defrag_threshold = 90;
  // Empty: every client may use the export; else a client matching any rule.
  std::vector<AllowRule> allow;
  // Read-only exports only: take no lock that keeps writers out, as qemu's
  // -U / force-share (the client may then see the image change under it).
  bool force_share = false;
  // Persistent bitmaps exported as qemu:dirty-bitmap:NAME (qemu-nbd -B).
  std::vector<std::string> bitmaps;
  // Export qemu:allocation-depth (qemu-nbd -A).
  bool allocation_depth = false;
  DetectZeroes detect_zeroes = DetectZeroes::off;
  bool operator==(const Export&) const = default;
};

// TLS of a listener (server/tls_context.h). Without an explicit mode, TLS is
// required as soon as credentials are given (effective_mode in access.h).
struct Tls {
  std::optional<TlsMode> mode;
  std::string certificates;  // directory: ca-cert.pem, server-cert.pem, server-key.pem
  std::string psk_file;      // psktool's username:hexkey lines
  bool verify_peer = false;  // require a client certificate signed by ca-cert.pem
};

struct Listen {
  std::optional<std::string> unix_path;
  bool tcp = true;
  std::string host = "127.0.0.1";
  std::uint16_t port = 10809;
  Tls tls;
};

// A TCP address to listen on, written "HOST:PORT" ("[V6]:PORT" for IPv6).
struct Endpoint {
  std::string host;
  std::uint16_t port = 0;
};

struct Config {
  Listen listen;
  unsigned max_connections = 100;
  unsigned workers = 0;  // worker threads; 0 = one per core, at most 8
  unsigned handshake_timeout_s = 10;
  // Connections still negotiating, bounded apart from max_connections; when
  // full the oldest is closed. Per client IP address too (not Unix sockets).
  unsigned max_handshakes = 128;
  unsigned max_handshakes_per_address = 16;
  // Every *.yaml in this directory holds more exports (conf.d style).
  std::optional<std::string> exports_dir;
  LogLevel log_level = LogLevel::info;
  std::optional<std::string> pid_file;
  bool fork = false;  // detach once listening (like qemu-nbd --fork)
  std::vector<Export> exports;
  // Prometheus metrics at http://HOST:PORT/metrics; off when unset.
  std::optional<Endpoint> metrics;
  // Absolute path of the YAML file the config came from; "" for the command
  // line. Kept so a reload (SIGHUP) can read the same file again.
  std::string config_file;
};

// Checks cross-field rules (at least one export unless exports_dir is set, unique names, files
// exist and are readable). Throws ConfigError.
void validate(const Config& cfg);

}  // namespace qnbd::config
