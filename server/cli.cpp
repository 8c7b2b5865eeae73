#include "server/cli.h"

#include "config/access.h"
#include "config/validate.h"
#include "config/values.h"
#include "config/yaml_config.h"

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <utility>
#include <vector>

namespace qnbd::server {
namespace {

using config::ConfigError;
using config::ValueError;

// -k/-b/-p as given; turned into a Listen once all options are read, because
// "-k alone means Unix only" depends on which of them appear.
struct ListenOptions {
  std::optional<std::string> unix_path;
  std::optional<std::string> host;
  std::optional<std::uint16_t> port;
};

struct Targets {
  config::Config& cfg;
  config::Export& exp;
  ListenOptions& listen;
};

enum class Scope { global, listen, per_export, action };

struct Option {
  char short_name;  // 0: long only
  std::string_view long_name;
  std::string_view value_name;  // "": a flag without value
  Scope scope;
  void (*apply)(Targets&, std::string_view value);
};

std::string absolute(std::string_view p) {
  return std::filesystem::absolute(std::filesystem::path(p)).lexically_normal().string();
}

std::string checked_path(std::string_view p) {
  if (p.empty()) throw ValueError("expected a path, got ''");
  return absolute(p);
}

std::string nbd_string(std::string_view v) {
  if (v.size() > config::max_nbd_string)
    throw ValueError("longer than " + std::to_string(config::max_nbd_string) +
                     " bytes (the NBD limit)");
  return std::string(v);
}

const Option options[] = {
    {'k', "socket", "PATH", Scope::listen,
     [](Targets& t, std::string_view v) {
       t.listen.unix_path = checked_path(v);
       if (auto p = config::unix_path_problem(*t.listen.unix_path); !p.empty()) throw ValueError(p);
     }},
    {'b', "bind", "ADDR", Scope::listen,
     [](Targets& t, std::string_view v) {
       std::string host(
           v.size() > 2 && v.front() == '[' && v.back() == ']' ? v.substr(1, v.size() - 2) : v);
       if (auto p = config::host_problem(host); !p.empty()) throw ValueError(p);
       t.listen.host = host;
     }},
    {'p', "port", "N", Scope::listen,
     [](Targets& t, std::string_view v) {
       t.listen.port = static_cast<std::uint16_t>(config::parse_uint(v, 1, 65535));
     }},
    {0, "tls", "MODE", Scope::global,
     [](Targets& t, std::string_view v) { t.cfg.listen.tls.mode = config::parse_tls_mode(v); }},
    {0, "tls-certificates", "DIR", Scope::global,
     [](Targets& t, std::string_view v) { t.cfg.listen.tls.certificates = checked_path(v); }},
    {0, "tls-psk", "FILE", Scope::global,
     [](Targets& t, std::string_view v) { t.cfg.listen.tls.psk_file = checked_path(v); }},
    {0, "tls-verify-peer", "", Scope::global,
     [](Targets& t, std::string_view) { t.cfg.listen.tls.verify_peer = true; }},
    {'x', "export-name", "NAME", Scope::per_export,
     [](Targets& t, std::string_view v) { t.exp.name = nbd_string(v); }},
    {'D', "description", "TEXT", Scope::per_export,
     [](Targets& t, std::string_view v) { t.exp.description = nbd_string(v); }},
    {'r', "read-only", "", Scope::per_export,
     [](Targets& t, std::string_view) { t.exp.read_only = true; }},
    {0, "force-share", "", Scope::per_export,
     [](Targets& t, std::string_view) { t.exp.force_share = true; }},
    {'B', "bitmap", "NAME", Scope::per_export,
     [](Targets& t, std::string_view v) { t.exp.bitmaps.push_back(nbd_string(v)); }},
    {'A', "allocation-depth", "", Scope::per_export,
     [](Targets& t, std::string_view) { t.exp.allocation_depth = true; }},
    {0, "detect-zeroes", "MODE", Scope::per_export,
     [](Targets& t, std::string_view v) { t.exp.detect_zeroes = config::parse_detect_zeroes(v); }},
    {'f', "format", "FMT", Scope::per_export,
     [](Targets& t, std::string_view v) { t.exp.format = config::parse_format(v); }},
    {0, "cache", "MODE", Scope::per_export,
     [](Targets& t, std::string_view v) { t.exp.cache = config::parse_cache_mode(v); }},
    {0, "l2-cache-size", "SIZE", Scope::per_export,
     [](Targets& t, std::string_view v) { t.exp.l2_cache_size = config::parse_size(v); }},
    {0, "refcount-cache-size", "SIZE", Scope::per_export,
     [](Targets& t, std::string_view v) { t.exp.refcount_cache_size = config::parse_size(v); }},
    {0, "lazy-refcounts", "", Scope::per_export,
     [](Targets& t, std::string_view) { t.exp.lazy_refcounts = true; }},
    {0, "cache-clean-interval", "SECONDS", Scope::per_export,
     [](Targets& t, std::string_view v) {
       t.exp.cache_clean_interval = config::parse_seconds(v, config::max_clean_interval);
     }},
    {0, "defrag", "MODE", Scope::per_export,
     [](Targets& t, std::string_view v) { t.exp.defrag = config::parse_defrag_mode(v); }},
    {0, "defrag-rate", "SIZE", Scope::per_export,
     [](Targets& t, std::string_view v) { t.exp.defrag_rate = config::parse_size(v); }},
    {0, "max-connections", "N", Scope::global,
     [](Targets& t, std::string_view v) {
       t.cfg.max_connections =
           static_cast<unsigned>(config::parse_uint(v, 1, config::max_connections_limit));
     }},
    {0, "workers", "N", Scope::global,
     [](Targets& t, std::string_view v) {
       t.cfg.workers = static_cast<unsigned>(config::parse_uint(v, 1, config::max_workers));
     }},
    {0, "handshake-timeout", "SECONDS", Scope::global,
     [](Targets& t, std::string_view v) {
       t.cfg.handshake_timeout_s =
           static_cast<unsigned>(config::parse_uint(v, 1, config::max_handshake_timeout));
     }},
    {0, "pid-file", "PATH", Scope::global,
     [](Targets& t, std::string_view v) { t.cfg.pid_file = checked_path(v); }},
    {0, "fork", "", Scope::global, [](Targets& t, std::string_view) { t.cfg.fork = true; }},
    {0, "metrics", "ADDR:PORT", Scope::global,
     [](Targets& t, std::string_view v) { t.cfg.metrics = config::parse_endpoint(v); }},
    {0, "log-level", "LEVEL", Scope::global,
     [](Targets& t, std::string_view v) { t.cfg.log_level = config::parse_log_level(v); }},
    // qnbd always keeps serving after a client leaves; -t is accepted so
    // qemu-nbd command lines work unchanged.
    {'t', "persistent", "", Scope::global, [](Targets&, std::string_view) {}},
    // Actions are handled by the parser itself, never applied.
    {'C', "config", "FILE", Scope::action, nullptr},
    {0, "check-config", "", Scope::action, nullptr},
    {'h', "help", "", Scope::action, nullptr},
    {'V', "version", "", Scope::action, nullptr},
};

// What the arguments say, before anything is applied or read from disk.
struct Parsed {
  CliAction action = CliAction::serve;
  std::optional<std::string> config_file;
  std::vector<std::pair<const Option*, std::string>> settings;  // in command-line order
  std::vector<std::string> images;
};

// main() prints "qnbd: " + what(), so messages carry no program name.
[[noreturn]] void fail(const std::string& msg) { throw ConfigError(msg); }

std::string label(const Option& o) { return "--" + std::string(o.long_name); }

const Option& find_long(std::string_view name) {
  for (const Option& o : options)
    if (o.long_name == name) return o;
  std::vector<std::string_view> names;
  for (const Option& o : options) names.push_back(o.long_name);
  std::string msg = "unknown option '--" + std::string(name) + "'";
  if (auto guess = config::nearest(name, names); !guess.empty())
    msg += " (did you mean '--" + std::string(guess) + "'?)";
  fail(msg + "; try 'qnbd --help'");
}

const Option& find_short(char c) {
  for (const Option& o : options)
    if (o.short_name == c) return o;
  fail(std::string("unknown option '-") + c + "'; try 'qnbd --help'");
}

// Records one option; returns true when parsing stops (--help, --version).
bool record(Parsed& p, const Option& o, std::string value) {
  if (o.scope != Scope::action) {
    p.settings.emplace_back(&o, std::move(value));
    return false;
  }
  if (o.long_name == "config") {
    if (value.empty()) fail("--config: expected a file name, got ''");
    p.config_file = std::move(value);
  } else if (o.long_name == "check-config") {
    p.action = CliAction::check_config;
  } else {
    p.action = o.long_name == "help" ? CliAction::help : CliAction::version;
    return true;
  }
  return false;
}

// The value of `o`: the text after '=' (or after the short letter), else the
// next argument, as getopt_long takes it.
std::string take_value(const Option& o, std::optional<std::string_view> attached,
                       std::span<const std::string_view> args, std::size_t& i) {
  if (attached) return std::string(*attached);
  if (i + 1 >= args.size()) fail(label(o) + ": missing " + std::string(o.value_name));
  return std::string(args[++i]);
}

bool scan_long(Parsed& p, std::span<const std::string_view> args, std::size_t& i) {
  std::string_view body = args[i].substr(2);
  std::optional<std::string_view> attached;
  if (auto eq = body.find('='); eq != body.npos) {
    attached = body.substr(eq + 1);
    body = body.substr(0, eq);
  }
  const Option& o = find_long(body);
  if (o.value_name.empty()) {
    if (attached) fail(label(o) + ": takes no value, got '" + std::string(*attached) + "'");
    return record(p, o, {});
  }
  return record(p, o, take_value(o, attached, args, i));
}

// "-rk PATH", "-kPATH", "-p 10809": flags may be grouped; a letter that takes
// a value takes the rest of the group or the next argument.
bool scan_short(Parsed& p, std::span<const std::string_view> args, std::size_t& i) {
  std::string_view group = args[i].substr(1);
  for (std::size_t j = 0; j < group.size(); ++j) {
    const Option& o = find_short(group[j]);
    if (o.value_name.empty()) {
      if (record(p, o, {})) return true;
      continue;
    }
    std::optional<std::string_view> attached;
    if (j + 1 < group.size()) attached = group.substr(j + 1);
    return record(p, o, take_value(o, attached, args, i));
  }
  return false;
}

Parsed scan(std::span<const std::string_view> args) {
  Parsed p;
  bool options_done = false;
  for (std::size_t i = 0; i < args.size(); ++i) {
    std::string_view a = args[i];
    if (options_done || a.size() < 2 || a[0] != '-') {
      p.images.emplace_back(a);
    } else if (a == "--") {
      options_done = true;
    } else if (a.starts_with("--") ? scan_long(p, args, i) : scan_short(p, args, i)) {
      break;
    }
  }
  return p;
}

void apply(const Option& o, const std::string& value, Targets& t) {
  try {
    o.apply(t, value);
  } catch (const ValueError& e) {
    fail(label(o) + ": " + e.what());
  }
}

// qemu-nbd's rule: -k alone serves only the Unix socket; -k with -b or -p
// serves both; none of them serves TCP on the defaults.
config::Listen make_listen(const ListenOptions& l, config::Tls tls) {
  config::Listen out;
  out.tls = std::move(tls);
  out.unix_path = l.unix_path;
  out.tcp = !l.unix_path || l.host || l.port;
  if (l.host) out.host = *l.host;
  if (l.port) out.port = *l.port;
  return out;
}

bool listen_given(const ListenOptions& l) { return l.unix_path || l.host || l.port; }

void check_config_mode(const Parsed& p) {
  if (!p.images.empty())
    fail("IMAGE '" + p.images.front() + "' cannot be combined with --config; list it in the file");
  for (const auto& [o, value] : p.settings)
    if (o->scope == Scope::per_export)
      fail(label(*o) + " cannot be combined with --config; set it per export in the file");
}

config::Export single_export(const Parsed& p, const config::Export& options_export) {
  if (p.images.empty()) fail("missing IMAGE to serve (or --config FILE); try 'qnbd --help'");
  if (p.images.size() > 1)
    fail("expected one IMAGE, got '" + p.images[0] + "' and '" + p.images[1] + "'");
  config::Export e = options_export;
  if (p.images[0].empty()) fail("IMAGE: expected a path, got ''");
  e.path = absolute(p.images[0]);
  if (auto problem = config::image_file_problem(e.path, e.read_only); !problem.empty())
    fail("IMAGE '" + p.images[0] + "': " + problem);
  return e;
}

config::Config build(const Parsed& p) {
  // Values are checked against defaults first, so a bad option is reported
  // before the config file is read; global ones are applied again on top of
  // the file's values below.
  config::Config cfg;
  config::Export exp;
  ListenOptions listen;
  Targets t{cfg, exp, listen};
  for (const auto& [o, value] : p.settings) apply(*o, value, t);
  if (p.config_file) {
    check_config_mode(p);
    cfg = config::load_config_file(*p.config_file);
    for (const auto& [o, value] : p.settings) apply(*o, value, t);
  } else {
    cfg.exports.push_back(single_export(p, exp));
  }
  if (listen_given(listen) || !p.config_file) cfg.listen = make_listen(listen, cfg.listen.tls);
  try {
    config::validate(cfg);
  } catch (const ConfigError& e) {
    fail(e.what());
  }
  return cfg;
}

}  // namespace

CliResult parse_cli(std::span<const std::string_view> args) {
  Parsed p = scan(args);
  CliResult r;
  r.action = p.action;
  if (p.action == CliAction::help || p.action == CliAction::version) return r;
  r.config = build(p);
  return r;
}

std::string version_text() { return "qnbd " QNBD_VERSION "\n"; }

std::string usage_text() {
  return R"(Usage: qnbd [OPTIONS] IMAGE
       qnbd [OPTIONS] --config FILE
Serve a raw or qcow2 IMAGE, or the exports listed in a YAML FILE, over NBD.

Listening (default: TCP 127.0.0.1:10809; -k alone: only the Unix socket):
  -k, --socket=PATH          listen on a Unix socket
  -b, --bind=ADDR            TCP address (127.0.0.1, ::, 0.0.0.0, a host name)
  -p, --port=N               TCP port, 1-65535 (default 10809)

Export (single-image mode only; with --config set them per export):
  -x, --export-name=NAME     export name (default: the empty name)
  -D, --description=TEXT     export description shown to clients
  -B, --bitmap=NAME          export the persistent bitmap NAME as the meta context
                             qemu:dirty-bitmap:NAME (repeatable)
  -A, --allocation-depth     export the meta context qemu:allocation-depth (which
                             layer of the backing chain holds each range)
      --detect-zeroes=MODE   off (default), on: an all-zero write is done as
                             write-zeroes; unmap: one that may deallocate
  -r, --read-only            refuse writes
      --force-share          with -r: let other processes write the image
                             (take no lock that keeps them out, as qemu -U)
  -f, --format=raw|qcow2     image format (default: detect by magic)
      --cache=writeback|none none = O_DIRECT, bypassing the page cache
      --l2-cache-size=SIZE   qcow2 L2 table cache in bytes; K, M, G, T suffixes
      --refcount-cache-size=SIZE  qcow2 refcount block cache in bytes
      --lazy-refcounts       defer refcount writes (qcow2 dirty-bit mode)
      --cache-clean-interval=SECONDS  write back idle dirty metadata after this
      --defrag=off|auto      qcow2: defragment and compact while serving
      --defrag-rate=SIZE     bytes/s the online defragmenter moves at most (64M)

TLS (STARTTLS; files as qemu's tls-creds-x509 and nbdkit read them):
      --tls=off|on|require   on: offer TLS; require: refuse clients without it
                             (default: require when credentials are given)
      --tls-certificates=DIR ca-cert.pem, server-cert.pem, server-key.pem
      --tls-verify-peer      require a client certificate signed by ca-cert.pem
      --tls-psk=FILE         pre-shared keys, psktool's username:hexkey lines

Server:
  -C, --config=FILE          serve the exports of a YAML file
      --check-config         validate the options or FILE (opening every image
                             and testing its locks), print OK and exit
      --max-connections=N    limit simultaneous clients (default 100)
      --workers=N            I/O threads (default: one per core, at most 8)
      --handshake-timeout=SECONDS  drop clients that do not finish (default 10)
      --pid-file=PATH        write the server's PID to PATH
      --fork                 return once listening, serving in the background
      --log-level=LEVEL      trace, debug, info (default), warn or error
      --metrics=ADDR:PORT    serve Prometheus metrics at http://ADDR:PORT/metrics
  -t, --persistent           accepted for qemu-nbd compatibility (always on)
  -h, --help                 print this help and exit
  -V, --version              print the version and exit

qnbd serves until SIGINT or SIGTERM, then finishes in-flight requests.
SIGHUP re-reads the config file: exports added, removed or changed live.
Started by systemd with a listening socket (LISTEN_FDS), it serves that socket.
)";
}

config::Config parse_command_line(int argc, char** argv,
                                  const std::function<void(const config::Config&)>& deep_check) {
  std::vector<std::string_view> args(argv + (argc > 0 ? 1 : 0), argv + argc);
  CliResult r = parse_cli(args);
  switch (r.action) {
    case CliAction::serve:
      return std::move(r.config);
    case CliAction::help:
      std::fputs(usage_text().c_str(), stdout);
      break;
    case CliAction::version:
      std::fputs(version_text().c_str(), stdout);
      break;
    case CliAction::check_config:
      if (deep_check) deep_check(r.config);
      std::printf("qnbd: configuration OK (%zu export%s)\n", r.config.exports.size(),
                  r.config.exports.size() == 1 ? "" : "s");
      break;
  }
  std::fflush(stdout);
  std::exit(0);
}

}  // namespace qnbd::server
