// main() for the fuzz targets in the g++ meson build, where they run in the
// suite without libFuzzer (which needs clang): the target's
// LLVMFuzzerTestOneInput runs on every seed, on the regression inputs kept
// for it, then on inputs made from the seeds by mutator.h, for a bounded
// count and time. Coverage-guided long runs stay with libFuzzer (soak.sh).
//
//   <target> [--runs N] [--seconds S] [--artifacts DIR] [--regressions DIR]
//            [--max-len BYTES] PATH...
// PATH is a seed corpus directory or one input file (to reproduce a
// finding: `<target> FILE`). --regressions DIR adds the files of DIR named
// after the target without "fuzz_" (tests/fuzz/crashes/qcow2_open-*).
// FUZZ_SEED (default 1) seeds the mutations and is printed. --artifacts
// defaults to $TMPDIR or /tmp.
//
// A crash, abort (FUZZ_CHECK), sanitizer report or hang (an input running
// over kTimeoutSeconds) writes the input to <artifacts>/<target>-failing,
// prints its path and how to reproduce it, and fails the process.
#include "tests/fuzz/mutator.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);
extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) __attribute__((weak));
extern "C" void __sanitizer_set_death_callback(void (*)()) __attribute__((weak));

#ifdef __SANITIZE_ADDRESS__
// libFuzzer's limits in run.sh: a single allocation over 1 GiB or an RSS
// over 2 GiB is "allocates without bound" (ASAN_OPTIONS still override).
extern "C" const char* __asan_default_options() {
  return "max_allocation_size_mb=1024:allocator_may_return_null=0:hard_rss_limit_mb=2048";
}
#endif
// UBSan findings must stop the run (GCC's default is to print and go on).
extern "C" const char* __ubsan_default_options() { return "halt_on_error=1:print_stacktrace=1"; }

namespace {

namespace fs = std::filesystem;
using qnbd::fuzz::Bytes;

constexpr unsigned kTimeoutSeconds = 10;
constexpr rlim_t kAddressSpaceLimit = rlim_t{4} << 30;  // release builds (no ASan)

// What a failure report needs, set before each input runs. Read from
// signal handlers, so plain data only.
struct Current {
  bool active = false;  // an input is running
  const std::uint8_t* data = nullptr;
  std::size_t size = 0;
  const char* origin = "";  // the seed file the input is, or was made from
  long run = -1;            // the mutation run, or -1 for a file as it is
  std::uint64_t seed = 0;
  char artifact[4096] = {};
  char program[1024] = {};
};
Current current;

void say(const char* text) {
  for (std::size_t left = std::strlen(text); left > 0;) {
    const ssize_t n = ::write(STDERR_FILENO, text, left);
    if (n <= 0) return;
    text += n;
    left -= static_cast<std::size_t>(n);
  }
}

// Async-signal-safe apart from snprintf, which is acceptable on the way out.
void report_failure() {
  if (!current.active) return;  // e.g. a leak report at exit: no input to blame
  char line[4200];
  const int fd = ::open(current.artifact, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  bool saved = fd >= 0;
  for (std::size_t off = 0; saved && off < current.size;) {
    const ssize_t n = ::write(fd, current.data + off, current.size - off);
    saved = n > 0;
    off += saved ? static_cast<std::size_t>(n) : 0;
  }
  if (fd >= 0) ::close(fd);
  if (current.run < 0)
    std::snprintf(line, sizeof line, "\nfuzz driver: failing input: %s (%zu bytes)\n",
                  current.origin, current.size);
  else
    std::snprintf(line, sizeof line,
                  "\nfuzz driver: failing input: mutation run %ld of seed %s (%zu bytes, "
                  "FUZZ_SEED=%llu)\n",
                  current.run, current.origin, current.size,
                  static_cast<unsigned long long>(current.seed));
  say(line);
  say(saved ? "fuzz driver: written to " : "fuzz driver: COULD NOT WRITE ");
  say(current.artifact);
  say("\n  reproduce: ");
  say(current.program);
  say(" ");
  say(current.artifact);
  say("\n");
}

void on_fatal_signal(int sig) {
  report_failure();
  ::raise(sig);  // the handler was reset (SA_RESETHAND): the default action ends the process
}

void on_timeout(int) {
  say("\nfuzz driver: timeout: an input ran for too long\n");
  report_failure();
  ::_exit(1);
}

void install_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_fatal_signal;
  sa.sa_flags = SA_RESETHAND | SA_NODEFER;
  ::sigaction(SIGABRT, &sa, nullptr);
#ifndef __SANITIZE_ADDRESS__
  // Under ASan its own handlers report these; the death callback saves the input.
  for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL}) ::sigaction(sig, &sa, nullptr);
  const rlimit as{kAddressSpaceLimit, kAddressSpaceLimit};
  ::setrlimit(RLIMIT_AS, &as);
#endif
  sa.sa_handler = on_timeout;
  ::sigaction(SIGALRM, &sa, nullptr);
  if (__sanitizer_set_death_callback) __sanitizer_set_death_callback(report_failure);
}

void run_one(const Bytes& input, const char* origin, long run) {
  current.origin = origin;
  current.run = run;
  current.data = input.data();
  current.size = input.size();
  current.active = true;
  ::alarm(kTimeoutSeconds);
  try {
    LLVMFuzzerTestOneInput(input.data(), input.size());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz driver: the target threw: %s\n", e.what());
    std::abort();  // a finding: the handler saves the input
  } catch (...) {
    std::fprintf(stderr, "fuzz driver: the target threw a non-std exception\n");
    std::abort();
  }
  current.active = false;
}

Bytes read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + p.string());
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

struct Input {
  std::string name;
  Bytes bytes;
};

// Files of a directory in name order (the run order is part of the seed),
// or the file itself.
void add_inputs(std::vector<Input>& out, const fs::path& p, const std::string& prefix = "") {
  std::vector<fs::path> files;
  if (fs::is_directory(p)) {
    for (const auto& e : fs::directory_iterator(p))
      if (e.is_regular_file() && e.path().filename().string().starts_with(prefix))
        files.push_back(e.path());
  } else {
    files.push_back(p);
  }
  std::sort(files.begin(), files.end());
  for (const auto& f : files) out.push_back({f.string(), read_file(f)});
}

struct Options {
  long runs = 0;
  double seconds = 1e9;
  std::size_t max_len = 65536;
  std::string artifacts = std::filesystem::temp_directory_path().string();
  std::string regressions;
  std::vector<std::string> paths;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    if (a == "--runs" && has_value)
      o.runs = std::stol(argv[++i]);
    else if (a == "--seconds" && has_value)
      o.seconds = std::stod(argv[++i]);
    else if (a == "--max-len" && has_value)
      o.max_len = std::stoul(argv[++i]);
    else if (a == "--artifacts" && has_value)
      o.artifacts = argv[++i];
    else if (a == "--regressions" && has_value)
      o.regressions = argv[++i];
    else if (a.starts_with("--"))
      throw std::runtime_error("unknown option " + a);
    else
      o.paths.push_back(a);
  }
  return o;
}

int fuzz(int argc, char** argv) {
  const Options o = parse(argc, argv);
  const std::string target = fs::path(argv[0]).filename().string();
  const char* seed_env = std::getenv("FUZZ_SEED");
  current.seed = seed_env ? std::stoull(seed_env) : 1;
  fs::create_directories(o.artifacts);
  std::snprintf(current.artifact, sizeof current.artifact, "%s/%s-failing",
                fs::absolute(o.artifacts).c_str(), target.c_str());
  std::snprintf(current.program, sizeof current.program, "%s", argv[0]);

  std::vector<Input> seeds, regressions;
  for (const auto& p : o.paths) add_inputs(seeds, p);
  if (!o.regressions.empty()) {
    const std::string prefix = target.substr(target.starts_with("fuzz_") ? 5 : 0) + "-";
    add_inputs(regressions, o.regressions, prefix);
  }
  std::printf(
      "%s: FUZZ_SEED=%llu, %zu seeds, %zu regression inputs, up to %ld new inputs or %g s\n",
      target.c_str(), static_cast<unsigned long long>(current.seed), seeds.size(),
      regressions.size(), o.runs, o.seconds);
  std::fflush(stdout);
  if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);
  install_handlers();

  const auto start = std::chrono::steady_clock::now();
  for (const auto& in : seeds) run_one(in.bytes, in.name.c_str(), -1);
  for (const auto& in : regressions) run_one(in.bytes, in.name.c_str(), -1);
  long done = 0;
  if (o.runs > 0 && seeds.empty()) throw std::runtime_error("no seeds to mutate");
  std::vector<Bytes> pool;
  for (const auto& in : seeds) pool.push_back(in.bytes);
  qnbd::fuzz::Mutator mutator(current.seed, o.max_len);
  const auto deadline = start + std::chrono::duration<double>(o.seconds);
  for (; done < o.runs && std::chrono::steady_clock::now() < deadline; ++done) {
    const std::size_t base = static_cast<std::size_t>(done) % pool.size();
    run_one(mutator.next(pool, base), seeds[base].name.c_str(), done);
  }
  ::alarm(0);
  const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
  std::printf(
      "%s: %zu seeds, %zu regression inputs and %ld new inputs (%s) in %.1f s: no findings\n",
      target.c_str(), seeds.size(), regressions.size(), done,
      done < o.runs ? "stopped by the time limit" : "all", took.count());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return fuzz(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz driver: %s\n", e.what());
    return 2;
  }
}
