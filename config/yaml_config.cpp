#include "config/yaml_config.h"

#include "config/access.h"
#include "config/validate.h"
#include "config/values.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <vector>

namespace qnbd::config {
namespace {

namespace fs = std::filesystem;

struct Reader;

// One YAML key of a map and how it fills the target struct.
template <class T>
struct Field {
  std::string_view key;
  void (*read)(const Reader&, const YAML::Node& value, const std::string& where, T& out);
};

struct Reader {
  std::string file;
  fs::path base_dir;

  int line_of(const YAML::Node& n) const { return n.Mark().line < 0 ? 0 : n.Mark().line + 1; }

  [[noreturn]] void fail(const YAML::Node& at, const std::string& what) const {
    throw ConfigError(file + ":" + std::to_string(line_of(at)) + ": " + what);
  }

  // Runs `parse` on the scalar text, turning a ValueError into "FILE:LINE: where: ...".
  template <class F>
  auto scalar(const YAML::Node& n, const std::string& where, F parse) const {
    if (!n.IsScalar()) fail(n, where + ": expected a single value, got " + kind(n));
    try {
      return parse(n.Scalar());
    } catch (const ValueError& e) {
      fail(n, where + ": " + e.what());
    }
  }

  static std::string kind(const YAML::Node& n) {
    return n.IsMap() ? "a map" : n.IsSequence() ? "a list" : n.IsNull() ? "nothing" : "a value";
  }

  std::string string(const YAML::Node& n, const std::string& where) const {
    return scalar(n, where, [](const std::string& s) { return s; });
  }

  std::string nbd_string(const YAML::Node& n, const std::string& where) const {
    return scalar(n, where, [](const std::string& s) {
      if (s.size() > max_nbd_string)
        throw ValueError("longer than " + std::to_string(max_nbd_string) +
                         " bytes (the NBD limit)");
      return s;
    });
  }

  std::optional<std::string> optional_path(const YAML::Node& n, const std::string& where) const {
    if (n.IsNull()) return std::nullopt;
    return path(n, where);
  }

  std::string path(const YAML::Node& n, const std::string& where) const {
    std::string p = string(n, where);
    if (p.empty()) fail(n, where + ": empty path");
    return (base_dir / p).lexically_normal().string();
  }

  bool boolean(const YAML::Node& n, const std::string& where) const {
    return scalar(n, where, [&](const std::string& s) {
      bool b = false;
      if (!YAML::convert<bool>::decode(n, b))
        throw ValueError("expected true or false, got '" + s + "'");
      return b;
    });
  }

  std::uint64_t uint(const YAML::Node& n, const std::string& where, std::uint64_t lo,
                     std::uint64_t hi) const {
    return scalar(n, where, [&](const std::string& s) { return parse_uint(s, lo, hi); });
  }

  // Checks every key of `map` against `fields` (unknown and duplicate keys
  // are errors) and lets each field read its value.
  template <class T, std::size_t N>
  void read_map(const YAML::Node& map, const std::string& where,
                const std::array<Field<T>, N>& fields, T& out) const {
    if (!map.IsMap())
      fail(map, (where.empty() ? "config" : where) + ": expected a map, got " + kind(map));
    std::set<std::string> seen;
    for (const auto& kv : map) {
      const YAML::Node& key = kv.first;
      if (!key.IsScalar()) fail(key, where + ": keys must be plain words");
      const std::string& name = key.Scalar();
      std::string sub = where.empty() ? name : where + "." + name;
      if (!seen.insert(name).second) fail(key, sub + ": duplicate key");
      const Field<T>* field = nullptr;
      for (const auto& f : fields)
        if (f.key == name) field = &f;
      if (!field) fail(key, unknown_key(name, where, fields));
      field->read(*this, kv.second, sub, out);
    }
  }

  template <class T, std::size_t N>
  static std::string unknown_key(const std::string& name, const std::string& where,
                                 const std::array<Field<T>, N>& fields) {
    std::array<std::string_view, N> keys;
    for (std::size_t i = 0; i < N; ++i) keys[i] = fields[i].key;
    std::string msg = "unknown key '" + name + "'" + (where.empty() ? "" : " in " + where);
    if (auto guess = nearest(name, keys); !guess.empty())
      msg += " (did you mean '" + std::string(guess) + "'?)";
    return msg;
  }

  // Where each export name was first defined ("line 3" or "FILE:3"), across
  // the main file and the exports_dir files.
  using Seen = std::map<std::string, std::pair<std::string, int>>;

  Config read(const YAML::Node& root) const;
  void read_exports(const YAML::Node& list, Config& cfg, Seen& seen) const;
  void read_exports_dir(const YAML::Node& at, Config& cfg, Seen& seen) const;
  void check_export(const YAML::Node& map, const std::string& where, const Export& e) const;
};

const std::array<Field<Tls>, 4> tls_fields{{
    {"mode",
     [](const Reader& r, const YAML::Node& n, const std::string& w, Tls& t) {
       t.mode = r.scalar(n, w, [](const std::string& s) { return parse_tls_mode(s); });
     }},
    {"certificates", [](const Reader& r, const YAML::Node& n, const std::string& w,
                        Tls& t) { t.certificates = r.path(n, w); }},
    {"psk_file", [](const Reader& r, const YAML::Node& n, const std::string& w,
                    Tls& t) { t.psk_file = r.path(n, w); }},
    {"verify_peer", [](const Reader& r, const YAML::Node& n, const std::string& w,
                       Tls& t) { t.verify_peer = r.boolean(n, w); }},
}};

const std::array<Field<Listen>, 5> listen_fields{{
    {"host",
     [](const Reader& r, const YAML::Node& n, const std::string& w, Listen& l) {
       l.host = r.string(n, w);
       if (auto p = host_problem(l.host); !p.empty()) r.fail(n, w + ": " + p);
     }},
    {"port", [](const Reader& r, const YAML::Node& n, const std::string& w,
                Listen& l) { l.port = static_cast<std::uint16_t>(r.uint(n, w, 1, 65535)); }},
    {"unix",
     [](const Reader& r, const YAML::Node& n, const std::string& w, Listen& l) {
       l.unix_path = r.optional_path(n, w);
       if (l.unix_path)
         if (auto p = unix_path_problem(*l.unix_path); !p.empty()) r.fail(n, w + ": " + p);
     }},
    {"tcp", [](const Reader& r, const YAML::Node& n, const std::string& w,
               Listen& l) { l.tcp = r.boolean(n, w); }},
    {"tls",
     [](const Reader& r, const YAML::Node& n, const std::string& w, Listen& l) {
       r.read_map(n, w, tls_fields, l.tls);
       if (auto p = tls_problem(l.tls); !p.empty()) r.fail(n, w + ": " + p);
     }},
}};

// `allow:` entries are rule strings, or one-key maps ({dn: "CN=x"}) so that
// subjects need no quoting around their prefix.
void read_allow(const Reader& r, const YAML::Node& n, const std::string& w, Export& e) {
  if (!n.IsSequence()) r.fail(n, w + ": expected a list of rules, got " + Reader::kind(n));
  for (std::size_t i = 0; i < n.size(); ++i) {
    const YAML::Node& item = n[i];
    const std::string at = w + "[" + std::to_string(i) + "]";
    std::string text;
    if (item.IsMap() && item.size() == 1)
      text = item.begin()->first.as<std::string>() + ":" + r.string(item.begin()->second, at);
    else
      text = r.string(item, at);
    e.allow.push_back(r.scalar(item.IsMap() ? item.begin()->second : item, at,
                               [&](const std::string&) { return parse_allow_rule(text); }));
  }
}

const std::array<Field<Export>, 18> export_fields{{
    {"force_share", [](const Reader& r, const YAML::Node& n, const std::string& w,
                       Export& e) { e.force_share = r.boolean(n, w); }},
    {"name", [](const Reader& r, const YAML::Node& n, const std::string& w,
                Export& e) { e.name = r.nbd_string(n, w); }},
    {"path", [](const Reader& r, const YAML::Node& n, const std::string& w,
                Export& e) { e.path = r.path(n, w); }},
    {"format",
     [](const Reader& r, const YAML::Node& n, const std::string& w, Export& e) {
       e.format = r.scalar(n, w, [](const std::string& s) { return parse_format(s); });
     }},
    {"read_only", [](const Reader& r, const YAML::Node& n, const std::string& w,
                     Export& e) { e.read_only = r.boolean(n, w); }},
    {"description",
     [](const Reader& r, const YAML::Node& n, const std::string& w, Export& e) {
       e.description = n.IsNull() ? std::string() : r.nbd_string(n, w);
     }},
    {"cache",
     [](const Reader& r, const YAML::Node& n, const std::string& w, Export& e) {
       e.cache = r.scalar(n, w, [](const std::string& s) { return parse_cache_mode(s); });
     }},
    {"l2_cache_size",
     [](const Reader& r, const YAML::Node& n, const std::string& w, Export& e) {
       e.l2_cache_size = r.scalar(n, w, [](const std::string& s) { return parse_size(s); });
     }},
    {"refcount_cache_size",
     [](const Reader& r, const YAML::Node& n, const std::string& w, Export& e) {
       e.refcount_cache_size = r.scalar(n, w, [](const std::string& s) { return parse_size(s); });
     }},
    {"lazy_refcounts", [](const Reader& r, const YAML::Node& n, const std::string& w,
                          Export& e) { e.lazy_refcounts = r.boolean(n, w); }},
    {"cache_clean_interval",
     [](const Reader& r, const YAML::Node& n, const std::string& w, Export& e) {
       e.cache_clean_interval = r.scalar(
           n, w, [](const std::string& s) { return parse_seconds(s, max_clean_interval); });
     }},
    {"allow", read_allow},
    {"defrag",
     [](const Reader& r, const YAML::Node& n, const std::string& w, Export& e) {
       e.defrag = r.scalar(n, w, [](const std::string& s) { return parse_defrag_mode(s); });
     }},
    {"defrag_rate",
     [](const Reader& r, const YAML::Node& n, const std::string& w, Export& e) {
       e.defrag_rate = r.scalar(n, w, [](const std::string& s) { return parse_size(s); });
     }},
    {"defrag_threshold",
     [](const Reader& r, const YAML::Node& n, const std::string& w, Export& e) {
       e.defrag_threshold = static_cast<unsigned>(r.uint(n, w, 0, 100));
     }},
    {"bitmaps",
     [](const Reader& r, const YAML::Node& n, const std::string& w, Export& e) {
       if (!n.IsSequence()) r.fail(n, w + ": expected a list of bitmap names, got " + r.kind(n));
       for (const auto& item : n) e.bitmaps.push_back(r.nbd_string(item, w));
     }},
    {"allocation_depth", [](const Reader& r, const YAML::Node& n, const std::string& w,
                            Export& e) { e.allocation_depth = r.boolean(n, w); }},
    {"detect_zeroes",
     [](const Reader& r, const YAML::Node& n, const std::string& w, Export& e) {
       e.detect_zeroes =
           r.scalar(n, w, [](const std::string& s) { return parse_detect_zeroes(s); });
     }},
}};

const std::array<Field<std::optional<Endpoint>>, 1> metrics_fields{{
    {"listen",
     [](const Reader& r, const YAML::Node& n, const std::string& w, std::optional<Endpoint>& m) {
       m = r.scalar(n, w, [](const std::string& s) { return parse_endpoint(s); });
     }},
}};

const std::array<Field<Config>, 11> config_fields{{
    {"max_handshakes",
     [](const Reader& r, const YAML::Node& n, const std::string& w, Config& c) {
       c.max_handshakes = static_cast<unsigned>(r.uint(n, w, 1, max_connections_limit));
     }},
    {"max_handshakes_per_address",
     [](const Reader& r, const YAML::Node& n, const std::string& w, Config& c) {
       c.max_handshakes_per_address = static_cast<unsigned>(r.uint(n, w, 1, max_connections_limit));
     }},
    {"exports_dir",
     [](const Reader& r, const YAML::Node& n, const std::string& w, Config& c) {
       c.exports_dir = r.path(n, w);
       std::error_code ec;
       if (!fs::is_directory(*c.exports_dir, ec))
         r.fail(n, w + ": '" + *c.exports_dir + "' is not a directory");
     }},
    {"listen",
     [](const Reader& r, const YAML::Node& n, const std::string& w, Config& c) {
       r.read_map(n, w, listen_fields, c.listen);
       if (!c.listen.tcp && !c.listen.unix_path)
         r.fail(n, w + ": 'tcp: false' needs a 'unix' socket path, or nothing would listen");
     }},
    {"max_connections",
     [](const Reader& r, const YAML::Node& n, const std::string& w, Config& c) {
       c.max_connections = static_cast<unsigned>(r.uint(n, w, 1, max_connections_limit));
     }},
    {"workers", [](const Reader& r, const YAML::Node& n, const std::string& w,
                   Config& c) { c.workers = static_cast<unsigned>(r.uint(n, w, 1, max_workers)); }},
    {"handshake_timeout",
     [](const Reader& r, const YAML::Node& n, const std::string& w, Config& c) {
       c.handshake_timeout_s = static_cast<unsigned>(r.uint(n, w, 1, max_handshake_timeout));
     }},
    {"log_level",
     [](const Reader& r, const YAML::Node& n, const std::string& w, Config& c) {
       c.log_level = r.scalar(n, w, [](const std::string& s) { return parse_log_level(s); });
     }},
    {"pid_file", [](const Reader& r, const YAML::Node& n, const std::string& w,
                    Config& c) { c.pid_file = r.optional_path(n, w); }},
    {"exports", [](const Reader&, const YAML::Node&, const std::string&, Config&) {}},
    {"metrics",
     [](const Reader& r, const YAML::Node& n, const std::string& w, Config& c) {
       r.read_map(n, w, metrics_fields, c.metrics);
       if (!c.metrics) r.fail(n, w + ": missing 'listen' (HOST:PORT to serve /metrics on)");
     }},
}};

Config Reader::read(const YAML::Node& root) const {
  if (!root.IsDefined() || root.IsNull())
    throw ConfigError(file + ":1: empty config; it needs at least an 'exports' list");
  Config cfg;
  read_map(root, "", config_fields, cfg);
  // Exports are read after the other keys so that exports_dir is known.
  Seen seen;
  if (root["exports"])
    read_exports(root["exports"], cfg, seen);
  else if (!cfg.exports_dir)
    fail(root, "missing 'exports' (a list of images to serve) or 'exports_dir'");
  if (cfg.exports_dir) read_exports_dir(root["exports_dir"], cfg, seen);
  return cfg;
}

YAML::Node load_yaml(const std::string& text, const std::string& file_name) {
  try {
    return YAML::Load(text);
  } catch (const YAML::ParserException& e) {
    throw ConfigError(file_name + ":" + std::to_string(e.mark.line + 1) +
                      ": invalid YAML: " + e.msg);
  }
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError(path + ": cannot read config: " + std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw ConfigError(path + ": cannot read config: " + std::strerror(errno));
  return text.str();
}

// Each *.yaml file of the directory, in name order, is a map with one key,
// 'exports'; its relative paths are resolved against the directory.
void Reader::read_exports_dir(const YAML::Node& at, Config& cfg, Seen& seen) const {
  std::vector<fs::path> files;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(*cfg.exports_dir, ec))
    if (entry.path().extension() == ".yaml" && !entry.is_directory()) files.push_back(entry.path());
  if (ec) fail(at, "exports_dir: '" + *cfg.exports_dir + "': " + ec.message());
  std::sort(files.begin(), files.end());
  for (const auto& f : files) {
    Reader sub{f.string(), f.parent_path()};
    const YAML::Node root = load_yaml(read_text(f.string()), sub.file);
    if (!root.IsMap() || root.size() != 1 || !root["exports"])
      sub.fail(root, "expected a map with one key, 'exports' (a list of images to serve)");
    sub.read_exports(root["exports"], cfg, seen);
  }
}

void Reader::read_exports(const YAML::Node& list, Config& cfg, Seen& seen) const {
  if (!list.IsSequence()) fail(list, "exports: expected a list of exports, got " + kind(list));
  if (list.size() == 0) fail(list, "exports: empty list; at least one export is needed");
  for (std::size_t i = 0; i < list.size(); ++i) {
    const YAML::Node& map = list[i];
    std::string where = "exports[" + std::to_string(i) + "]";
    Export e;
    read_map(map, where, export_fields, e);
    check_export(map, where, e);
    const YAML::Node name = map["name"];
    if (auto [it, fresh] = seen.emplace(e.name, std::pair(file, line_of(name ? name : map)));
        !fresh) {
      const auto& [first_file, first_line] = it->second;
      fail(name ? name : map, where + ": duplicate export name '" + e.name +
                                  "' (first defined at " +
                                  (first_file == file ? "" : first_file + ":") + "line " +
                                  std::to_string(first_line) + ")");
    }
    cfg.exports.push_back(std::move(e));
  }
}

void Reader::check_export(const YAML::Node& map, const std::string& where, const Export& e) const {
  const YAML::Node path = map["path"];
  if (!path) fail(map, where + ": missing 'path' (the image file to serve)");
  if (auto p = image_file_problem(e.path, e.read_only); !p.empty())
    fail(path, where + ".path: image '" + e.path + "': " + p);
}

}  // namespace

Config parse_config_text(const std::string& text, const std::string& file_name,
                         const fs::path& base_dir) {
  const YAML::Node root = load_yaml(text, file_name);
  Reader reader{file_name, base_dir};
  Config cfg = reader.read(root);
  try {
    validate(cfg);
  } catch (const ConfigError& e) {
    throw ConfigError(file_name + ": " + e.what());
  }
  return cfg;
}

Config load_config_file(const std::string& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec))
    throw ConfigError(path + ": is a directory, expected a YAML file");
  fs::path base = fs::absolute(fs::path(path), ec).parent_path();
  Config cfg = parse_config_text(read_text(path), path, base);
  cfg.config_file = fs::absolute(fs::path(path), ec).lexically_normal().string();
  return cfg;
}

}  // namespace qnbd::config
