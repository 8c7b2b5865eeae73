// libFuzzer target for qcow2 check and repair (qcow2/check/check.h, what
// `qnbd-img check [-r all]` and the engine's dirty-image repair run) on
// untrusted images: the input is a whole image file in an io::MemoryFile.
//
// Allowed: any report, including "check failed". Not allowed: a crash, a
// sanitizer report, an exception (check_image promises never to throw), a
// hang, an unbounded allocation, a check without repair that writes, or a
// repair that claims success but leaves an image that a second check does
// not find clean.
#include "tests/fuzz/fuzz_check.h"
#include "common/run_sync.h"
#include "qcow2/check/check.h"
#include "tests/fuzz/limited_file.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <optional>
#include <typeinfo>
#include <vector>

namespace {

using namespace qnbd;

// The image file never grows past this (see limited_file.h).
constexpr std::uint64_t kFileLimit = 64u << 20;

template <class T>
T run(boost::asio::io_context& ctx, boost::asio::awaitable<T> aw, const char* what) {
  std::optional<T> out;
  try {
    out = run_until_done(ctx, std::move(aw));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s threw %s: %s\n", what, typeid(e).name(), e.what());
    std::abort();
  }
  FUZZ_CHECK(out.has_value());  // the event loop ran dry with the coroutine suspended
  return std::move(*out);
}

std::unique_ptr<fuzz::LimitedFile> memory_file(std::vector<std::byte> bytes) {
  return std::make_unique<fuzz::LimitedFile>(std::move(bytes), kFileLimit);
}

void check_result(const qcow2::check::CheckResult& r) {
  FUZZ_CHECK(r.corruptions >= 0 && r.leaks >= 0 && r.check_errors >= 0);
  FUZZ_CHECK(r.corruptions_fixed >= 0 && r.leaks_fixed >= 0);
  if (r.check_errors) FUZZ_CHECK(!r.failure.empty());
  const int code = qcow2::check::exit_code(r);
  FUZZ_CHECK(code >= 0 && code <= 3);
}

qcow2::check::CheckResult check(boost::asio::io_context& ctx, fuzz::LimitedFile& f,
                                qcow2::check::Fix fix) {
  qcow2::check::CheckOptions o;
  o.fix = fix;
  o.max_log_lines = 100;
  // FUZZ_VERBOSE=1 prints the findings (when reproducing a failure).
  static const bool verbose = std::getenv("FUZZ_VERBOSE") != nullptr;
  o.log = [](const std::string& line) {
    FUZZ_CHECK(!line.empty());
    if (verbose) std::fprintf(stderr, "  check: %s\n", line.c_str());
  };
  auto r = run(ctx, qcow2::check::check_image(f, std::move(o)), "check_image");
  check_result(r);
  return r;
}

void fuzz_image(const std::uint8_t* data, std::size_t size) {
  boost::asio::io_context ctx;
  const std::vector<std::byte> bytes(reinterpret_cast<const std::byte*>(data),
                                     reinterpret_cast<const std::byte*>(data) + size);
  {
    auto f = memory_file(bytes);
    (void)check(ctx, *f, qcow2::check::Fix::none);
    FUZZ_CHECK(f->contents() == bytes);  // a check without -r writes nothing
  }
  auto f = memory_file(bytes);
  const auto repaired = check(ctx, *f, qcow2::check::Fix::all);
  if (qcow2::check::exit_code(repaired) != 0) return;

  // The repair says the image is now clean: a second check must agree.
  const std::vector<std::byte> after = f->contents();
  if (const char* dump = std::getenv("FUZZ_DUMP_REPAIRED")) {  // for reproducers
    if (FILE* out = std::fopen(dump, "wb")) {
      std::fwrite(after.data(), 1, after.size(), out);
      std::fclose(out);
    }
  }
  auto g = memory_file(after);
  const auto again = check(ctx, *g, qcow2::check::Fix::none);
  if (qcow2::check::exit_code(again) != 0)
    std::fprintf(stderr, "after repair: %lld corruptions, %lld leaks, %lld check errors (%s)\n",
                 static_cast<long long>(again.corruptions), static_cast<long long>(again.leaks),
                 static_cast<long long>(again.check_errors), again.failure.c_str());
  FUZZ_CHECK(qcow2::check::exit_code(again) == 0);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  spdlog::set_level(spdlog::level::off);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz_image(data, size);
  return 0;
}
