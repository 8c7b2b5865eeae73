#include "config/validate.h"

#include "config/access.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <map>

namespace qnbd::config {
namespace {

// Names are echoed in messages, so a huge one is shortened to stay one line.
std::string export_label(const Export& e) {
  if (e.name.empty()) return "default export ''";
  return "export '" + (e.name.size() > 64 ? e.name.substr(0, 64) + "..." : e.name) + "'";
}

void check_listen(const Listen& l) {
  if (!l.tcp && !l.unix_path) throw ConfigError("listen: neither TCP nor a Unix socket is enabled");
  if (l.tcp) {
    if (l.port == 0) throw ConfigError("listen: port must be 1-65535");
    if (auto p = host_problem(l.host); !p.empty()) throw ConfigError("listen: host: " + p);
  }
  if (l.unix_path)
    if (auto p = unix_path_problem(*l.unix_path); !p.empty())
      throw ConfigError("listen: unix: " + p);
  if (auto p = tls_problem(l.tls); !p.empty()) throw ConfigError("listen: tls: " + p);
}

void check_export(const Export& e) {
  if (auto p = export_strings_problem(e); !p.empty()) throw ConfigError(export_label(e) + ": " + p);
  if (e.path.empty()) throw ConfigError(export_label(e) + ": no image path");
  if (auto p = image_file_problem(e.path, e.read_only); !p.empty())
    throw ConfigError(export_label(e) + ": image '" + e.path + "': " + p);
  if (e.force_share && !e.read_only)
    throw ConfigError(export_label(e) + ": force_share needs a read-only export");
  if (!std::isfinite(e.cache_clean_interval) || e.cache_clean_interval < 0)
    throw ConfigError(export_label(e) + ": cache_clean_interval must be >= 0 seconds");
}

}  // namespace

std::string image_file_problem(const std::string& path, bool read_only) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return std::strerror(errno);
  if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
    return S_ISDIR(st.st_mode) ? "is a directory, expected a regular file or block device"
                               : "expected a regular file or block device";
  if (::access(path.c_str(), R_OK) != 0) return std::strerror(errno);
  if (!read_only && ::access(path.c_str(), W_OK) != 0)
    return std::string("not writable (") + std::strerror(errno) + "); serve it read-only";
  return {};
}

std::string host_problem(const std::string& host) {
  unsigned char buf[sizeof(in6_addr)];
  if (::inet_pton(AF_INET, host.c_str(), buf) == 1 || ::inet_pton(AF_INET6, host.c_str(), buf) == 1)
    return {};
  // Host names: letters, digits, '-' and '.', with at least one letter so that
  // a mistyped IPv4 address ("10.0.0.256") is not taken for a name.
  bool charset_ok = !host.empty() && host.size() <= 253 &&
                    std::all_of(host.begin(), host.end(), [](unsigned char c) {
                      return std::isalnum(c) || c == '-' || c == '.';
                    });
  bool has_letter =
      std::any_of(host.begin(), host.end(), [](unsigned char c) { return std::isalpha(c); });
  if (charset_ok && has_letter && host.front() != '-' && host.front() != '.') return {};
  return "'" + host + "' is not an IP address or host name";
}

std::string unix_path_problem(const std::string& path) {
  if (path.empty()) return "empty socket path";
  if (path.size() >= sizeof(sockaddr_un::sun_path))
    return "socket path '" + path + "' is longer than " +
           std::to_string(sizeof(sockaddr_un::sun_path) - 1) + " bytes";
  return {};
}

std::string export_strings_problem(const Export& e) {
  if (e.name.size() > max_nbd_string)
    return "export name is longer than " + std::to_string(max_nbd_string) + " bytes";
  if (e.description.size() > max_nbd_string)
    return "description is longer than " + std::to_string(max_nbd_string) + " bytes";
  if (e.name.find('\0') != std::string::npos) return "export name contains a NUL byte";
  return {};
}

void validate(const Config& cfg) {
  check_listen(cfg.listen);
  if (cfg.max_connections == 0) throw ConfigError("max_connections must be at least 1");
  if (cfg.handshake_timeout_s == 0)
    throw ConfigError("handshake_timeout must be at least 1 second");
  if (cfg.exports.empty() && !cfg.exports_dir) throw ConfigError("no exports configured");
  if (cfg.max_handshakes == 0) throw ConfigError("max_handshakes must be at least 1");
  if (cfg.max_handshakes_per_address == 0)
    throw ConfigError("max_handshakes_per_address must be at least 1");
  std::map<std::string, std::size_t> seen;
  for (std::size_t i = 0; i < cfg.exports.size(); ++i) {
    const Export& e = cfg.exports[i];
    if (auto [it, fresh] = seen.emplace(e.name, i); !fresh)
      throw ConfigError("duplicate " + export_label(e) + " (exports " + std::to_string(it->second) +
                        " and " + std::to_string(i) + ")");
    check_export(e);
    if (auto p = allow_problem(e, cfg.listen.tls); !p.empty())
      throw ConfigError(export_label(e) + ": " + p);
  }
}

}  // namespace qnbd::config
