// YAML config loading, value parsing and validate(): every key, every error
// message with its file:line, and the shipped example.
#include "config/validate.h"
#include "config/values.h"
#include "config/yaml_config.h"

#include "tests/lib/child.h"
#include "tests/lib/temp_dir.h"

#include <doctest/doctest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

namespace fs = std::filesystem;
using qnbd::test::TempDir;
using namespace qnbd::config;

namespace {

// Parses `yaml` as the file "test.yaml" in `dir`; returns the error text ("" if none).
std::string error_of(const TempDir& dir, const std::string& yaml) {
  try {
    parse_config_text(yaml, "test.yaml", dir.path());
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

// Config text with one export of `image` plus extra lines for that export.
std::string one_export(const std::string& extra = "") {
  return "exports:\n  - name: a\n    path: a.img\n" + extra;
}

std::string read_all(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void replace_all(std::string& s, const std::string& from, const std::string& to) {
  for (auto pos = s.find(from); pos != s.npos; pos = s.find(from, pos + to.size()))
    s.replace(pos, from.size(), to);
}

// image_file_problem() as seen by user "nobody": root may read and write any
// file, so permission errors are checked from an unprivileged child.
std::string problem_as_unprivileged(const std::string& path, bool read_only) {
  if (::geteuid() != 0) return image_file_problem(path, read_only);
  auto r = qnbd::test::run_in_child([&] {
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) return 2;
    std::string problem = image_file_problem(path, read_only);
    std::fwrite(problem.data(), 1, problem.size(), stdout);
    return 0;
  });
  REQUIRE(r.exit_code == 0);
  return r.out;
}

Export make_export(std::string name, std::string path) {
  Export e;
  e.name = std::move(name);
  e.path = std::move(path);
  return e;
}

}  // namespace

TEST_SUITE("config") {
  TEST_CASE("values: sizes take K/M/G/T suffixes as powers of 1024") {
    CHECK(parse_size("0") == 0);
    CHECK(parse_size("512") == 512);
    CHECK(parse_size("4K") == 4096);
    CHECK(parse_size("4k") == 4096);
    CHECK(parse_size("32M") == 32ull << 20);
    CHECK(parse_size("1MiB") == 1ull << 20);
    CHECK(parse_size("1MB") == 1ull << 20);
    CHECK(parse_size("3G") == 3ull << 30);
    CHECK(parse_size("2T") == 2ull << 40);
    CHECK(parse_size("100B") == 100);
    for (const char* bad : {"", "M", "1.5M", "-1", "1X", "1 M", "1MM", "0x10"})
      CHECK_MESSAGE(error_of([&] { parse_size(bad); }).find("expected a size") != std::string::npos,
                    bad);
    CHECK(error_of([] { parse_size("99999999T"); }) == "size '99999999T' is too large");
    CHECK(error_of([] { parse_size("99999999999999999999"); }).find("expected a size") == 0);
  }

  TEST_CASE("values: numbers, seconds and enums") {
    CHECK(parse_uint("10809", 1, 65535) == 10809);
    CHECK(error_of([] { parse_uint("abc", 1, 65535); }) == "expected a number 1-65535, got 'abc'");
    CHECK(error_of([] { parse_uint("0", 1, 65535); }) == "expected a number 1-65535, got '0'");
    CHECK(error_of([] { parse_uint("+5", 1, 9); }) == "expected a number 1-9, got '+5'");
    CHECK(parse_seconds("2.5", 10) == doctest::Approx(2.5));
    CHECK(parse_seconds("0", 10) == 0);
    CHECK(error_of([] { parse_seconds("-1", 10); }) ==
          "expected a number of seconds 0-10, got '-1'");
    CHECK(error_of([] { parse_seconds("11", 10); }).find("got '11'") != std::string::npos);
    CHECK(parse_format("qcow2") == Format::qcow2);
    CHECK(parse_format("raw") == Format::raw);
    CHECK(error_of([] { parse_format("vmdk"); }) == "expected raw|qcow2, got 'vmdk'");
    CHECK(parse_cache_mode("none") == CacheMode::none);
    CHECK(error_of([] { parse_cache_mode("unsafe"); }) == "expected writeback|none, got 'unsafe'");
    for (auto l :
         {LogLevel::trace, LogLevel::debug, LogLevel::info, LogLevel::warn, LogLevel::error})
      CHECK(parse_log_level(to_string(l)) == l);
    CHECK(error_of([] { parse_log_level("verbose"); }) ==
          "expected trace|debug|info|warn|error, got 'verbose'");
  }

  TEST_CASE("values: nearest suggests plausible typos only") {
    const std::string_view keys[] = {"read_only", "description", "path"};
    CHECK(nearest("readonly", keys) == "read_only");
    CHECK(nearest("descripton", keys) == "description");
    CHECK(nearest("pth", keys) == "path");
    CHECK(nearest("frobnicate", keys).empty());
  }

  TEST_CASE("yaml: a minimal file gets the defaults") {
    TempDir dir("qnbd-config");
    dir.write("a.img");
    Config c = parse_config_text(one_export(), "test.yaml", dir.path());
    CHECK(c.listen.tcp);
    CHECK(c.listen.host == "127.0.0.1");
    CHECK(c.listen.port == 10809);
    CHECK_FALSE(c.listen.unix_path);
    CHECK(c.max_connections == 100);
    CHECK(c.handshake_timeout_s == 10);
    CHECK(c.log_level == LogLevel::info);
    CHECK_FALSE(c.pid_file);
    REQUIRE(c.exports.size() == 1);
    const Export& e = c.exports[0];
    CHECK(e.name == "a");
    CHECK(e.path == (dir.path() / "a.img").string());
    CHECK(e.format == Format::detect);
    CHECK_FALSE(e.read_only);
    CHECK(e.description.empty());
    CHECK(e.cache == CacheMode::writeback);
    CHECK(e.l2_cache_size == 0);
    CHECK(e.refcount_cache_size == 0);
    CHECK_FALSE(e.lazy_refcounts);
    CHECK(e.cache_clean_interval == doctest::Approx(5.0));
  }

  TEST_CASE("yaml: every key is read") {
    TempDir dir("qnbd-config");
    std::string img1 = dir.write("images/one.qcow2"), img2 = dir.write("two.raw");
    std::string text =
        "listen: {host: '::', port: 10900, unix: " + (dir.path() / "s.sock").string() +
        ", tcp: true}\n"
        "max_connections: 7\nworkers: 3\nhandshake_timeout: 3\nlog_level: debug\n"
        "pid_file: run/q.pid\n"
        "exports:\n"
        "  - name: vm1\n    path: images/one.qcow2\n    format: qcow2\n"
        "    read_only: false\n    description: \"vm1 root disk\"\n"
        "    cache: none\n    l2_cache_size: 32M\n    refcount_cache_size: 1M\n"
        "    lazy_refcounts: true\n    cache_clean_interval: 2.5\n"
        "  - {name: '', path: " +
        img2 + ", format: raw, read_only: yes, description: ~}\n";
    Config c = parse_config_text(text, "test.yaml", dir.path());
    CHECK(c.listen.host == "::");
    CHECK(c.listen.port == 10900);
    CHECK(c.listen.unix_path == (dir.path() / "s.sock").string());
    CHECK(c.listen.tcp);
    CHECK(c.max_connections == 7);
    CHECK(c.workers == 3);
    CHECK(c.handshake_timeout_s == 3);
    CHECK(c.log_level == LogLevel::debug);
    CHECK(c.pid_file == (dir.path() / "run/q.pid").string());
    REQUIRE(c.exports.size() == 2);
    const Export& a = c.exports[0];
    CHECK(a.name == "vm1");
    CHECK(a.path == img1);
    CHECK(a.format == Format::qcow2);
    CHECK_FALSE(a.read_only);
    CHECK(a.description == "vm1 root disk");
    CHECK(a.cache == CacheMode::none);
    CHECK(a.l2_cache_size == 32ull << 20);
    CHECK(a.refcount_cache_size == 1ull << 20);
    CHECK(a.lazy_refcounts);
    CHECK(a.cache_clean_interval == doctest::Approx(2.5));
    const Export& b = c.exports[1];
    CHECK(b.name.empty());
    CHECK(b.path == img2);
    CHECK(b.format == Format::raw);
    CHECK(b.read_only);
    CHECK(b.description.empty());
  }

  TEST_CASE("yaml: tcp false with a unix socket serves only the socket") {
    TempDir dir("qnbd-config");
    dir.write("a.img");
    Config c = parse_config_text("listen: {unix: nbd.sock, tcp: false}\n" + one_export(),
                                 "test.yaml", dir.path());
    CHECK_FALSE(c.listen.tcp);
    CHECK(c.listen.unix_path == (dir.path() / "nbd.sock").string());
  }

  TEST_CASE("yaml: the shipped example parses and validates") {
    TempDir dir("qnbd-config");
    std::string text = read_all(QNBD_EXAMPLE_CONFIG);
    REQUIRE(text.find("/var/lib/qnbd/") != std::string::npos);
    replace_all(text, "/var/lib/qnbd/", (dir.path() / "lib").string() + "/");
    replace_all(text, "/run/qnbd/", (dir.path() / "run").string() + "/");
    dir.write("lib/vm1.qcow2");
    dir.write("lib/installer.iso");
    std::string path = dir.write("qnbd.yaml", text);
    Config c = load_config_file(path);
    CHECK(c.config_file == path);
    CHECK(c.listen.tcp);
    CHECK(c.listen.port == 10809);
    CHECK(c.listen.unix_path == (dir.path() / "run/qnbd.sock").string());
    CHECK(c.pid_file == (dir.path() / "run/qnbd.pid").string());
    REQUIRE(c.exports.size() == 2);
    CHECK(c.exports[0].name == "vm1");
    CHECK(c.exports[0].format == Format::qcow2);
    CHECK(c.exports[0].l2_cache_size == 32ull << 20);
    CHECK(c.exports[1].name.empty());
    CHECK(c.exports[1].read_only);
    validate(c);
  }

  TEST_CASE("yaml: unknown keys are reported with line and the nearest key") {
    TempDir dir("qnbd-config");
    dir.write("a.img");
    CHECK(error_of(dir, "exprts:\n  - path: a.img\n") ==
          "test.yaml:1: unknown key 'exprts' (did you mean 'exports'?)");
    CHECK(error_of(dir, one_export("    readonly: true\n")) ==
          "test.yaml:4: unknown key 'readonly' in exports[0] (did you mean 'read_only'?)");
    CHECK(error_of(dir, "listen:\n  prot: 1\n" + one_export()) ==
          "test.yaml:2: unknown key 'prot' in listen (did you mean 'port'?)");
    CHECK(error_of(dir, one_export("    frobnicate: 1\n")) ==
          "test.yaml:4: unknown key 'frobnicate' in exports[0]");
    CHECK(error_of(dir, one_export("    l2-cache-size: 1M\n")) ==
          "test.yaml:4: unknown key 'l2-cache-size' in exports[0] (did you mean 'l2_cache_size'?)");
    CHECK(error_of(dir, one_export("    read_only: true\n    read_only: false\n")) ==
          "test.yaml:5: exports[0].read_only: duplicate key");
  }

  TEST_CASE("yaml: wrong types and values name the key and line") {
    TempDir dir("qnbd-config");
    dir.write("a.img");
    const std::pair<std::string, std::string> cases[] = {
        {"listen: {port: abc}\n", "test.yaml:1: listen.port: expected a number 1-65535, got 'abc'"},
        {"listen:\n  port: 0\n", "test.yaml:2: listen.port: expected a number 1-65535, got '0'"},
        {"listen:\n  port: 65536\n",
         "test.yaml:2: listen.port: expected a number 1-65535, got '65536'"},
        {"listen:\n  host: 10.0.0.256\n",
         "test.yaml:2: listen.host: '10.0.0.256' is not an IP address or host name"},
        {"listen:\n  tcp: maybe\n", "test.yaml:2: listen.tcp: expected true or false, got 'maybe'"},
        {"listen: 5\n", "test.yaml:1: listen: expected a map, got a value"},
        {"listen: {tcp: false}\n",
         "test.yaml:1: listen: 'tcp: false' needs a 'unix' socket path, or nothing would listen"},
        {"listen: {unix: " + std::string(120, 's') + "}\n",
         "test.yaml:1: listen.unix: socket path '"},
        {"max_connections: [1]\n",
         "test.yaml:1: max_connections: expected a single value, got a list"},
        {"max_connections: 0\n",
         "test.yaml:1: max_connections: expected a number 1-1000000, got '0'"},
        {"handshake_timeout: 0\n",
         "test.yaml:1: handshake_timeout: expected a number 1-3600, got '0'"},
        {"log_level: verbose\n",
         "test.yaml:1: log_level: expected trace|debug|info|warn|error, got 'verbose'"},
        {"pid_file: ''\n", "test.yaml:1: pid_file: empty path"},
    };
    for (const auto& [yaml, expected] : cases) {
      std::string err = error_of(dir, yaml + one_export());
      CHECK_MESSAGE(err.find(expected) == 0, yaml, " -> ", err);
    }
  }

  TEST_CASE("yaml: bad export values name the export, key and line") {
    TempDir dir("qnbd-config");
    dir.write("a.img");
    const std::pair<std::string, std::string> cases[] = {
        {"    format: vmdk\n", "test.yaml:4: exports[0].format: expected raw|qcow2, got 'vmdk'"},
        {"    cache: directsync\n",
         "test.yaml:4: exports[0].cache: expected writeback|none, got 'directsync'"},
        {"    read_only: maybe\n",
         "test.yaml:4: exports[0].read_only: expected true or false, got 'maybe'"},
        {"    lazy_refcounts: 2\n",
         "test.yaml:4: exports[0].lazy_refcounts: expected true or false, got '2'"},
        {"    l2_cache_size: 12X\n",
         "test.yaml:4: exports[0].l2_cache_size: expected a size in bytes"},
        {"    refcount_cache_size: -1\n",
         "test.yaml:4: exports[0].refcount_cache_size: expected a size in bytes"},
        {"    cache_clean_interval: -1\n",
         "test.yaml:4: exports[0].cache_clean_interval: expected a number of seconds"},
        {"    description: [a, b]\n",
         "test.yaml:4: exports[0].description: expected a single value, got a list"},
        {"    description: " + std::string(4097, 'd') + "\n",
         "test.yaml:4: exports[0].description: longer than 4096 bytes (the NBD limit)"},
        {"    name: " + std::string(4097, 'n') + "\n",
         "test.yaml:4: exports[0].name: duplicate key"},
    };
    for (const auto& [yaml, expected] : cases) {
      std::string err = error_of(dir, one_export(yaml));
      CHECK_MESSAGE(err.find(expected) == 0, yaml.substr(0, 40), " -> ", err);
    }
  }

  TEST_CASE("yaml: export list problems") {
    TempDir dir("qnbd-config");
    dir.write("a.img");
    dir.write("b.img");
    CHECK(error_of(dir, "") == "test.yaml:1: empty config; it needs at least an 'exports' list");
    CHECK(error_of(dir, "log_level: info\n") ==
          "test.yaml:1: missing 'exports' (a list of images to serve) or 'exports_dir'");
    CHECK(error_of(dir, "log_level: info\nexports: []\n") ==
          "test.yaml:2: exports: empty list; at least one export is needed");
    CHECK(error_of(dir, "exports:\n  a: {path: a.img}\n") ==
          "test.yaml:2: exports: expected a list of exports, got a map");
    CHECK(error_of(dir, "exports:\n  - a.img\n") ==
          "test.yaml:2: exports[0]: expected a map, got a value");
    CHECK(error_of(dir, "exports:\n  - name: a\n    format: raw\n") ==
          "test.yaml:2: exports[0]: missing 'path' (the image file to serve)");
    CHECK(error_of(dir,
                   "exports:\n  - name: vm\n    path: a.img\n  - name: x\n    path: b.img\n"
                   "  - name: vm\n    path: b.img\n") ==
          "test.yaml:6: exports[2]: duplicate export name 'vm' (first defined at line 2)");
    CHECK(error_of(dir, "exports:\n  - path: a.img\n    name: " + std::string(4097, 'n') + "\n") ==
          "test.yaml:3: exports[0].name: longer than 4096 bytes (the NBD limit)");
    CHECK(error_of(dir, "exports:\n  - path: a.img\n  - path: b.img\n") ==
          "test.yaml:3: exports[1]: duplicate export name '' (first defined at line 2)");
  }

  TEST_CASE("yaml: images must exist and be regular files or block devices") {
    TempDir dir("qnbd-config");
    std::string missing = (dir.path() / "missing.img").string();
    CHECK(error_of(dir, "exports:\n  - name: a\n    path: missing.img\n") ==
          "test.yaml:3: exports[0].path: image '" + missing + "': No such file or directory");
    fs::create_directories(dir.path() / "adir");
    CHECK(error_of(dir, "exports:\n  - path: adir\n") ==
          "test.yaml:2: exports[0].path: image '" + (dir.path() / "adir").string() +
              "': is a directory, expected a regular file or block device");
    std::string fifo = (dir.path() / "fifo").string();
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    CHECK(error_of(dir, "exports:\n\n  - path: fifo\n") ==
          "test.yaml:3: exports[0].path: image '" + fifo +
              "': expected a regular file or block device");
  }

  TEST_CASE("yaml: syntax errors and unreadable files") {
    TempDir dir("qnbd-config");
    CHECK(error_of(dir, "exports:\n  - {path: a.img\n").find("test.yaml:3: invalid YAML: ") == 0);
    CHECK(error_of(dir, "a: b\n c: d: e\n").find("test.yaml:2: invalid YAML: ") == 0);
    std::string missing = (dir.path() / "nope.yaml").string();
    CHECK(error_of([&] { load_config_file(missing); }) ==
          missing + ": cannot read config: No such file or directory");
    CHECK(error_of([&] { load_config_file(dir.path().string()); }) ==
          dir.path().string() + ": is a directory, expected a YAML file");
    dir.write("a.img");
    std::string path = dir.write("sub/q.yaml", "exports:\n  - path: ../a.img\n");
    Config c = load_config_file(path);
    CHECK(c.exports.at(0).path == (dir.path() / "a.img").string());
    CHECK(c.config_file == path);
  }

  TEST_CASE("validate: cross-field rules for any source") {
    TempDir dir("qnbd-config");
    Config c;
    CHECK(error_of([&] { validate(c); }) == "no exports configured");
    c.exports.push_back(make_export("a", dir.write("a.img")));
    validate(c);
    c.exports.push_back(make_export("a", dir.write("b.img")));
    CHECK(error_of([&] { validate(c); }) == "duplicate export 'a' (exports 0 and 1)");
    c.exports[1].name = "b";
    c.exports[1].path = (dir.path() / "none").string();
    CHECK(error_of([&] { validate(c); }) ==
          "export 'b': image '" + c.exports[1].path + "': No such file or directory");
    c.exports[1].path = dir.write("b.img");
    c.exports[1].cache_clean_interval = -1;
    CHECK(error_of([&] { validate(c); }) ==
          "export 'b': cache_clean_interval must be >= 0 seconds");
    c.exports[1].cache_clean_interval = 1;
    c.exports[1].name = std::string(4097, 'n');
    CHECK(error_of([&] { validate(c); }) ==
          "export '" + std::string(64, 'n') + "...': export name is longer than 4096 bytes");
    c.exports[1].name = "b";
    validate(c);
    c.listen.tcp = false;
    CHECK(error_of([&] { validate(c); }) == "listen: neither TCP nor a Unix socket is enabled");
    c.listen.unix_path = (dir.path() / "s").string();
    validate(c);
    c.listen.tcp = true;
    c.listen.port = 0;
    CHECK(error_of([&] { validate(c); }) == "listen: port must be 1-65535");
    c.listen.port = 1;
    c.listen.host = "bad host";
    CHECK(error_of([&] { validate(c); }) ==
          "listen: host: 'bad host' is not an IP address or host name");
    c.listen.host = "localhost";
    c.max_connections = 0;
    CHECK(error_of([&] { validate(c); }) == "max_connections must be at least 1");
    c.max_connections = 1;
    c.handshake_timeout_s = 0;
    CHECK(error_of([&] { validate(c); }) == "handshake_timeout must be at least 1 second");
  }

  TEST_CASE("validate: hosts, socket paths and writability") {
    for (const char* ok :
         {"127.0.0.1", "0.0.0.0", "::", "::1", "fe80::1", "localhost", "nbd-1.example.org"})
      CHECK_MESSAGE(host_problem(ok).empty(), ok);
    for (const char* bad : {"", "10.0.0.256", "1.2.3", "a b", "-x", "[::1]", "host:10809"})
      CHECK_MESSAGE(!host_problem(bad).empty(), bad);
    CHECK(unix_path_problem("/run/qnbd/qnbd.sock").empty());
    CHECK(unix_path_problem(std::string(107, 'a')).empty());
    CHECK(unix_path_problem(std::string(108, 'a')).find("longer than 107 bytes") !=
          std::string::npos);
    TempDir dir("qnbd-config");
    ::chmod(dir.path().c_str(), 0755);
    std::string img = dir.write("ro.img");
    CHECK(image_file_problem(img, false).empty());
    ::chmod(img.c_str(), 0644);
    CHECK(problem_as_unprivileged(img, true).empty());
    CHECK(problem_as_unprivileged(img, false) ==
          "not writable (Permission denied); serve it read-only");
    ::chmod(img.c_str(), 0600);
    CHECK(problem_as_unprivileged(img, true) == "Permission denied");
    CHECK(image_file_problem("/dev/null", true) == "expected a regular file or block device");
  }

  TEST_CASE("yaml: defrag, defrag_rate and defrag_threshold") {
    TempDir dir("qnbd-config");
    dir.write("a.img");
    const Export d = parse_config_text(one_export(), "test.yaml", dir.path()).exports[0];
    CHECK_FALSE(d.defrag);
    CHECK(d.defrag_rate == 64u << 20);
    CHECK(d.defrag_threshold == 90);
    const Export e =
        parse_config_text(
            one_export("    defrag: auto\n    defrag_rate: 8M\n    defrag_threshold: 75\n"),
            "test.yaml", dir.path())
            .exports[0];
    CHECK(e.defrag);
    CHECK(e.defrag_rate == 8u << 20);
    CHECK(e.defrag_threshold == 75);
    CHECK(error_of(dir, one_export("    defrag: on\n"))
              .find("test.yaml:4: exports[0].defrag: expected off|auto, got 'on'") == 0);
    CHECK(error_of(dir, one_export("    defrag_threshold: 101\n"))
              .find("test.yaml:4: exports[0].defrag_threshold: expected a number 0-100") == 0);
  }

  TEST_CASE("yaml: exports_dir, force_share and handshake bounds") {
    TempDir dir;
    dir.write("a.img");
    dir.write("d/b.img");
    dir.write("d/c.img");
    dir.write("d/10-b.yaml",
              "exports:\n  - {name: b, path: b.img, read_only: true, force_share: true}\n");
    dir.write("d/20-c.yaml", "exports:\n  - {name: c, path: c.img}\n");
    dir.write("d/ignored.txt", "not yaml");
    Config c = parse_config_text(
        "max_handshakes: 5\nmax_handshakes_per_address: 2\nexports_dir: d\n"
        "exports:\n  - {name: a, path: a.img}\n",
        "test.yaml", dir.path());
    CHECK(c.max_handshakes == 5);
    CHECK(c.max_handshakes_per_address == 2);
    REQUIRE(c.exports.size() == 3);
    CHECK(c.exports[0].name == "a");
    CHECK(c.exports[1].name == "b");
    CHECK(c.exports[1].force_share);
    CHECK(c.exports[1].path == (dir.path() / "d" / "b.img").string());
    CHECK(c.exports[2].name == "c");
    // exports_dir alone is enough, even when it is empty
    dir.write("empty/.keep", "");
    CHECK(parse_config_text("exports_dir: empty\n", "test.yaml", dir.path()).exports.empty());
    const std::string d = (dir.path() / "d").string();
    dir.write("d/30-dup.yaml", "exports:\n  - {name: c, path: c.img}\n");
    CHECK(error_of(dir, "exports_dir: d\n") ==
          d + "/30-dup.yaml:2: exports[0]: duplicate export name 'c' (first defined at " + d +
              "/20-c.yaml:line 2)");
    fs::remove(dir.path() / "d" / "30-dup.yaml");
    dir.write("d/40-bad.yaml", "exports:\n  - {name: x, path: missing.img}\n");
    CHECK(error_of(dir, "exports_dir: d\n").find(d + "/40-bad.yaml:2: exports[0].path: image '") ==
          0);
    dir.write("d/40-bad.yaml", "listen: {port: 1}\n");
    CHECK(error_of(dir, "exports_dir: d\n") ==
          d + "/40-bad.yaml:1: expected a map with one key, 'exports' (a list of images to serve)");
    CHECK(error_of(dir, "exports_dir: nowhere\n") == "test.yaml:1: exports_dir: '" +
                                                         (dir.path() / "nowhere").string() +
                                                         "' is not a directory");
    CHECK(error_of(dir, "exports:\n  - {name: a, path: a.img, force_share: true}\n") ==
          "test.yaml: export 'a': force_share needs a read-only export");
    CHECK(error_of(dir, "max_handshakes: 0\nexports: [{path: a.img}]\n") ==
          "test.yaml:1: max_handshakes: expected a number 1-1000000, got '0'");
  }

  TEST_CASE("yaml: metrics listen address, off by default") {
    TempDir dir;
    dir.write("a.img");
    CHECK(!parse_config_text(one_export(), "test.yaml", dir.path()).metrics);
    Config c = parse_config_text("metrics: {listen: \"[::1]:9810\"}\n" + one_export(), "test.yaml",
                                 dir.path());
    REQUIRE(c.metrics);
    CHECK(c.metrics->host == "::1");
    CHECK(c.metrics->port == 9810);
    CHECK(parse_endpoint("localhost:1").host == "localhost");
    CHECK(error_of(dir, "metrics: {}\n" + one_export()) ==
          "test.yaml:1: metrics: missing 'listen' (HOST:PORT to serve /metrics on)");
    CHECK(error_of(dir, "metrics:\n  listen: 9810\n" + one_export()) ==
          "test.yaml:2: metrics.listen: expected HOST:PORT, got '9810'");
    CHECK(error_of(dir, "metrics: {listen: \"::1:9810\"}\n" + one_export()) ==
          "test.yaml:1: metrics.listen: write an IPv6 address in brackets, [ADDR]:PORT, got "
          "'::1:9810'");
    CHECK(error_of(dir, "metrics: {listen: \"h:0\"}\n" + one_export()) ==
          "test.yaml:1: metrics.listen: expected a number 1-65535, got '0'");
    CHECK(error_of(dir, "metrics: {port: 1}\n" + one_export()).find("unknown key 'port'") !=
          std::string::npos);
  }

}  // TEST_SUITE
