// The qnbd command line: every option in every spelling, the listen rules,
// --config overrides, and each error message.
#include "config/values.h"
#include "server/cli.h"

#include "tests/lib/child.h"
#include "tests/lib/temp_dir.h"

#include <doctest/doctest.h>

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <vector>

namespace fs = std::filesystem;
using qnbd::test::TempDir;
using namespace qnbd::server;
using qnbd::config::CacheMode;
using qnbd::config::Config;
using qnbd::config::ConfigError;
using qnbd::config::Format;
using qnbd::config::LogLevel;

namespace {

CliResult parse(std::vector<std::string> args) {
  std::vector<std::string_view> views(args.begin(), args.end());
  return parse_cli(views);
}

Config config_of(std::vector<std::string> args) {
  CliResult r = parse(std::move(args));
  REQUIRE(r.action == CliAction::serve);
  return r.config;
}

std::string error_of(std::vector<std::string> args) {
  try {
    parse(std::move(args));
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

// The spellings of one option with a value: "--opt v", "--opt=v" and, with a
// short letter, "-o v" and "-ov".
std::vector<std::vector<std::string>> spellings(char short_name, const std::string& long_name,
                                                const std::string& value) {
  std::vector<std::vector<std::string>> out{{"--" + long_name, value},
                                            {"--" + long_name + "=" + value}};
  if (short_name) {
    out.push_back({std::string{'-', short_name}, value});
    out.push_back({std::string{'-', short_name} + value});
  }
  return out;
}

std::vector<std::string> plus(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Runs parse_command_line() as main() would, in a child; returns its exit
// status and stdout.
std::pair<int, std::string> run_main(std::vector<std::string> args) {
  auto r = qnbd::test::run_in_child([&] {
    args.insert(args.begin(), "qnbd");
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    try {
      parse_command_line(int(args.size()), argv.data());
    } catch (const ConfigError& e) {
      std::printf("qnbd: %s", e.what());  // as main() reports it
      return 1;
    }
    return 42;  // returned a config to serve
  });
  return {r.exit_code, r.out};
}

}  // namespace

TEST_SUITE("cli") {
  TEST_CASE("cli: IMAGE alone serves it on TCP 127.0.0.1:10809 with defaults") {
    TempDir dir("qnbd-cli");
    std::string img = dir.write("disk.img");
    Config c = config_of({img});
    CHECK(c.listen.tcp);
    CHECK(c.listen.host == "127.0.0.1");
    CHECK(c.listen.port == 10809);
    CHECK_FALSE(c.listen.unix_path);
    CHECK(c.max_connections == 100);
    CHECK(c.handshake_timeout_s == 10);
    CHECK(c.log_level == LogLevel::info);
    CHECK_FALSE(c.pid_file);
    CHECK_FALSE(c.fork);
    CHECK(c.config_file.empty());
    REQUIRE(c.exports.size() == 1);
    CHECK(c.exports[0].name.empty());
    CHECK(c.exports[0].path == img);
    CHECK(c.exports[0].format == Format::detect);
    CHECK(c.exports[0].cache == CacheMode::writeback);
    CHECK_FALSE(c.exports[0].read_only);
    CHECK_FALSE(c.exports[0].lazy_refcounts);
  }

  TEST_CASE("cli: relative IMAGE and paths become absolute") {
    TempDir dir("qnbd-cli");
    dir.write("rel.img");
    fs::path old = fs::current_path();
    fs::current_path(dir.path());
    Config c = config_of({"--pid-file", "q.pid", "-k", "s.sock", "./rel.img"});
    fs::current_path(old);
    CHECK(c.exports.at(0).path == (dir.path() / "rel.img").string());
    CHECK(c.pid_file == (dir.path() / "q.pid").string());
    CHECK(c.listen.unix_path == (dir.path() / "s.sock").string());
  }

  TEST_CASE("cli: every option with a value, in every spelling") {
    TempDir dir("qnbd-cli");
    std::string img = dir.write("disk.img");
    std::string sock = (dir.path() / "nbd.sock").string(), pid = (dir.path() / "q.pid").string();
    struct Case {
      char short_name;
      std::string long_name, value;
      bool (*check)(const Config&);
    };
    const Case cases[] = {
        {'k', "socket", sock,
         [](const Config& c) { return c.listen.unix_path.value_or("").ends_with("/nbd.sock"); }},
        {'b', "bind", "::", [](const Config& c) { return c.listen.host == "::"; }},
        {'p', "port", "10900", [](const Config& c) { return c.listen.port == 10900; }},
        {'x', "export-name", "vm1", [](const Config& c) { return c.exports[0].name == "vm1"; }},
        {'D', "description", "root disk",
         [](const Config& c) { return c.exports[0].description == "root disk"; }},
        {'f', "format", "qcow2",
         [](const Config& c) { return c.exports[0].format == Format::qcow2; }},
        {0, "cache", "none", [](const Config& c) { return c.exports[0].cache == CacheMode::none; }},
        {0, "l2-cache-size", "32M",
         [](const Config& c) { return c.exports[0].l2_cache_size == 32ull << 20; }},
        {0, "refcount-cache-size", "2k",
         [](const Config& c) { return c.exports[0].refcount_cache_size == 2048; }},
        {0, "cache-clean-interval", "0.5",
         [](const Config& c) { return c.exports[0].cache_clean_interval == 0.5; }},
        {0, "max-connections", "3", [](const Config& c) { return c.max_connections == 3; }},
        {0, "workers", "2", [](const Config& c) { return c.workers == 2; }},
        {0, "handshake-timeout", "7", [](const Config& c) { return c.handshake_timeout_s == 7; }},
        {0, "pid-file", pid,
         [](const Config& c) { return c.pid_file.value_or("").ends_with("/q.pid"); }},
        {0, "log-level", "trace", [](const Config& c) { return c.log_level == LogLevel::trace; }},
    };
    for (const Case& k : cases)
      for (const auto& args : spellings(k.short_name, k.long_name, k.value)) {
        Config c = config_of(plus(args, {img}));
        CHECK_MESSAGE(k.check(c), args[0]);
      }
  }

  TEST_CASE("cli: flags, grouped short flags and --") {
    TempDir dir("qnbd-cli");
    std::string img = dir.write("disk.img");
    CHECK(config_of({"-r", img}).exports[0].read_only);
    CHECK(config_of({"--read-only", img}).exports[0].read_only);
    CHECK(config_of({"--lazy-refcounts", img}).exports[0].lazy_refcounts);
    CHECK(config_of({"--fork", img}).fork);
    CHECK(config_of({"-t", img}).exports.size() == 1);
    CHECK(config_of({"--persistent", img}).exports.size() == 1);
    Config c = config_of({"-rtk" + (dir.path() / "s").string(), img});
    CHECK(c.exports[0].read_only);
    CHECK(c.listen.unix_path == (dir.path() / "s").string());
    c = config_of({"-rx", "named", img});
    CHECK(c.exports[0].read_only);
    CHECK(c.exports[0].name == "named");
    CHECK(config_of({"-x", "", img}).exports[0].name.empty());
    CHECK(config_of({"-x", "-r", img}).exports[0].name == "-r");  // a value is taken as is
    std::string dashed = dir.write("-odd.img");
    fs::path old = fs::current_path();
    fs::current_path(dir.path());
    std::string path = config_of({"--", "-odd.img"}).exports[0].path;
    fs::current_path(old);
    CHECK(path == dashed);
    CHECK(config_of({"-p", "1", img}).listen.port == 1);
    CHECK(config_of({"-p", "65535", img}).listen.port == 65535);
    CHECK(config_of({"-p", "1", "-p", "2", img}).listen.port == 2);  // the last one wins
  }

  TEST_CASE("cli: -k alone serves only the Unix socket; with -p or -b both") {
    TempDir dir("qnbd-cli");
    std::string img = dir.write("disk.img"), sock = (dir.path() / "s").string();
    Config c = config_of({"-k", sock, img});
    CHECK_FALSE(c.listen.tcp);
    CHECK(c.listen.unix_path == sock);
    c = config_of({"-k", sock, "-p", "10900", img});
    CHECK(c.listen.tcp);
    CHECK(c.listen.port == 10900);
    CHECK(c.listen.host == "127.0.0.1");
    CHECK(c.listen.unix_path == sock);
    c = config_of({"-k", sock, "-b", "0.0.0.0", img});
    CHECK(c.listen.tcp);
    CHECK(c.listen.host == "0.0.0.0");
    CHECK(c.listen.port == 10809);
    c = config_of({"-b", "[::1]", img});
    CHECK(c.listen.host == "::1");
    CHECK_FALSE(c.listen.unix_path);
  }

  TEST_CASE("cli: each bad option is one clear line") {
    TempDir dir("qnbd-cli");
    std::string img = dir.write("disk.img");
    const std::pair<std::vector<std::string>, std::string> cases[] = {
        {{"--port", "abc", img}, "--port: expected a number 1-65535, got 'abc'"},
        {{"-p0", img}, "--port: expected a number 1-65535, got '0'"},
        {{"--port=65536", img}, "--port: expected a number 1-65535, got '65536'"},
        {{"--prot", "1", img},
         "unknown option '--prot' (did you mean '--port'?); try 'qnbd --help'"},
        {{"--readonly", img},
         "unknown option '--readonly' (did you mean '--read-only'?); try 'qnbd --help'"},
        {{"--frobnicate", img}, "unknown option '--frobnicate'; try 'qnbd --help'"},
        {{"-Z", img}, "unknown option '-Z'; try 'qnbd --help'"},
        {{img, "--port"}, "--port: missing N"},
        {{img, "-x"}, "--export-name: missing NAME"},
        {{"--read-only=yes", img}, "--read-only: takes no value, got 'yes'"},
        {{"-f", "vmdk", img}, "--format: expected raw|qcow2, got 'vmdk'"},
        {{"--cache", "unsafe", img}, "--cache: expected writeback|none, got 'unsafe'"},
        {{"--log-level", "verbose", img},
         "--log-level: expected trace|debug|info|warn|error, got 'verbose'"},
        {{"--l2-cache-size", "1X", img},
         "--l2-cache-size: expected a size in bytes with an optional K, M, G or T suffix, got "
         "'1X'"},
        {{"--refcount-cache-size=", img}, "--refcount-cache-size: expected a size in bytes"},
        {{"--cache-clean-interval", "-1", img},
         "--cache-clean-interval: expected a number of seconds 0-86400, got '-1'"},
        {{"--max-connections", "0", img},
         "--max-connections: expected a number 1-1000000, got '0'"},
        {{"--workers", "65", img}, "--workers: expected a number 1-64, got '65'"},
        {{"--handshake-timeout", "0", img},
         "--handshake-timeout: expected a number 1-3600, got '0'"},
        {{"-b", "10.1.2.300", img}, "--bind: '10.1.2.300' is not an IP address or host name"},
        {{"-k", "", img}, "--socket: expected a path, got ''"},
        {{"-k", "/" + std::string(200, 's'), img}, "--socket: socket path '/sss"},
        {{"--pid-file="}, "--pid-file: expected a path, got ''"},
        {{}, "missing IMAGE to serve (or --config FILE); try 'qnbd --help'"},
        {{"-r"}, "missing IMAGE to serve (or --config FILE); try 'qnbd --help'"},
        {{img, "b.img"}, "expected one IMAGE, got '" + img + "' and 'b.img'"},
        {{"no-such.img"}, "IMAGE 'no-such.img': No such file or directory"},
        {{dir.path().string()},
         "IMAGE '" + dir.path().string() +
             "': is a directory, expected a regular file or block device"},
        {{"-x", std::string(4097, 'n'), img},
         "--export-name: longer than 4096 bytes (the NBD limit)"},
        {{"-D", std::string(4097, 'd'), img},
         "--description: longer than 4096 bytes (the NBD limit)"},
    };
    for (const auto& [args, expected] : cases) {
      std::string err = error_of(args);
      CHECK_MESSAGE(err.find(expected) == 0, (args.empty() ? "" : args[0]), " -> ", err);
      CHECK(err.find('\n') == std::string::npos);
    }
  }

  TEST_CASE("cli: --config serves the file; global options override it") {
    TempDir dir("qnbd-cli");
    dir.write("a.img");
    dir.write("b.img");
    std::string cfg = dir.write(
        "q.yaml",
        "listen: {host: 127.0.0.2, port: 10999}\nlog_level: warn\n"
        "exports:\n  - {name: a, path: a.img}\n  - {name: b, path: b.img, read_only: true}\n");
    for (const auto& args : spellings('C', "config", cfg)) {
      Config c = config_of(args);
      CHECK(c.config_file == cfg);
      CHECK(c.listen.host == "127.0.0.2");
      CHECK(c.listen.port == 10999);
      CHECK(c.log_level == LogLevel::warn);
      REQUIRE(c.exports.size() == 2);
      CHECK(c.exports[1].read_only);
    }
    std::string sock = (dir.path() / "s").string();
    Config c = config_of({"--config", cfg, "-k", sock, "--log-level", "error", "--fork",
                          "--pid-file", (dir.path() / "p").string(), "--max-connections", "9",
                          "--handshake-timeout", "2"});
    CHECK_FALSE(c.listen.tcp);  // the command line's listen rule replaces the file's section
    CHECK(c.listen.unix_path == sock);
    CHECK(c.log_level == LogLevel::error);
    CHECK(c.fork);
    CHECK(c.pid_file == (dir.path() / "p").string());
    CHECK(c.max_connections == 9);
    CHECK(c.handshake_timeout_s == 2);
    c = config_of({"--config", cfg, "-p", "11000"});
    CHECK(c.listen.tcp);
    CHECK(c.listen.host == "127.0.0.1");
    CHECK(c.listen.port == 11000);
  }

  TEST_CASE("cli: --config errors") {
    TempDir dir("qnbd-cli");
    dir.write("a.img");
    std::string cfg = dir.write("q.yaml", "exports:\n  - {name: a, path: a.img}\n");
    CHECK(error_of({"--config", cfg, "a.img"}) ==
          "IMAGE 'a.img' cannot be combined with --config; list it in the file");
    CHECK(error_of({"--config", cfg, "-r"}) ==
          "--read-only cannot be combined with --config; set it per export in the file");
    CHECK(error_of({"-x", "n", "--config", cfg}) ==
          "--export-name cannot be combined with --config; set it per export in the file");
    CHECK(error_of({"--config", cfg, "--lazy-refcounts"}).find("--lazy-refcounts cannot be") == 0);
    CHECK(error_of({"--config="}) == "--config: expected a file name, got ''");
    std::string missing = (dir.path() / "none.yaml").string();
    CHECK(error_of({"--config", missing}) ==
          missing + ": cannot read config: No such file or directory");
    std::string bad = dir.write("bad.yaml", "exports:\n  - {name: a, path: a.img, cache: fast}\n");
    CHECK(error_of({"-C", bad}) ==
          bad + ":2: exports[0].cache: expected writeback|none, got 'fast'");
    CHECK(error_of({"--config", cfg, "--port", "x"}) ==
          "--port: expected a number 1-65535, got 'x'");
  }

  TEST_CASE("cli: --help, --version and --check-config") {
    TempDir dir("qnbd-cli");
    std::string img = dir.write("disk.img");
    CHECK(parse({"--help"}).action == CliAction::help);
    CHECK(parse({"-h"}).action == CliAction::help);
    CHECK(parse({"-r", "--help", "--port", "bad"}).action == CliAction::help);
    CHECK(parse({"--version"}).action == CliAction::version);
    CHECK(parse({"-V"}).action == CliAction::version);
    CliResult r = parse({"--check-config", "-r", img});
    CHECK(r.action == CliAction::check_config);
    CHECK(r.config.exports.at(0).read_only);
    CHECK(error_of({"--check-config", "missing.img"}) ==
          "IMAGE 'missing.img': No such file or directory");
    CHECK(version_text() == std::string("qnbd ") + QNBD_VERSION + "\n");
    std::string usage = usage_text();
    for (const char* opt : {"--socket",
                            "--bind",
                            "--port",
                            "--export-name",
                            "--description",
                            "--read-only",
                            "--format",
                            "--cache=",
                            "--l2-cache-size",
                            "--refcount-cache-size",
                            "--lazy-refcounts",
                            "--cache-clean-interval",
                            "--config",
                            "--check-config",
                            "--max-connections",
                            "--handshake-timeout",
                            "--pid-file",
                            "--fork",
                            "--log-level",
                            "--persistent",
                            "--help",
                            "--version"})
      CHECK_MESSAGE(usage.find(opt) != std::string::npos, opt);
  }

  TEST_CASE("cli: parse_command_line prints help/version/check and exits 0") {
    TempDir dir("qnbd-cli");
    std::string img = dir.write("disk.img");
    auto [help_rc, help] = run_main({"--help"});
    CHECK(help_rc == 0);
    CHECK(help == usage_text());
    auto [version_rc, version] = run_main({"--version"});
    CHECK(version_rc == 0);
    CHECK(version == version_text());
    auto [check_rc, check] = run_main({"--check-config", img});
    CHECK(check_rc == 0);
    CHECK(check == "qnbd: configuration OK (1 export)\n");
    auto [serve_rc, serve] = run_main({img});
    CHECK(serve_rc == 42);
    CHECK(serve.empty());
    auto [bad_rc, bad] = run_main({"--port", "abc", img});
    CHECK(bad_rc == 1);
    CHECK(bad == "qnbd: --port: expected a number 1-65535, got 'abc'");
  }

  TEST_CASE("cli: --defrag MODE and --defrag-rate SIZE") {
    TempDir dir("qnbd-cli");
    std::string img = dir.write("disk.img");
    const auto e = config_of({"--defrag", "auto", "--defrag-rate=16M", img}).exports[0];
    CHECK(e.defrag);
    CHECK(e.defrag_rate == 16u << 20);
    CHECK_FALSE(config_of({"--defrag=off", img}).exports[0].defrag);
    CHECK(error_of({"--defrag", "always", img}).find("--defrag: expected off|auto") == 0);
  }

}  // TEST_SUITE
