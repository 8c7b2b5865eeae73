// The order of a check (qemu's qcow2_check_refcounts and
// qcow2_co_check_locked), the public entry points, and the exit code.
#include "qcow2/check/checker.h"

#include "io/uring_file.h"

#include <spdlog/spdlog.h>

#include <climits>
#include <exception>

namespace qnbd::qcow2::check {

task<> Checker::run() {
  const std::uint64_t nb_clusters = (meta_.file_size + cs() - 1) / cs();
  if (nb_clusters > INT_MAX) {
    ++res_.check_errors;
    co_return errno_error(EFBIG);
  }
  res_.total_clusters = (meta_.header.size + cs() - 1) / cs();
  imrt_.resize(nb_clusters);

  bool rebuild = false;
  const Fix fix = opts_.fix;
  QNBD_CO_TRY(co_await calculate_refcounts(fix, rebuild));
  // Without a rebuild, a fix re-runs the comparison; this first pass only
  // decides whether a rebuild is needed.
  const CheckResult pre_compare = res_;
  std::uint64_t highest = 0;
  QNBD_CO_TRY(co_await compare_refcounts(Fix::none, rebuild, highest));

  if (rebuild && fixes(fix, Fix::errors)) {
    const CheckResult old = res_;
    std::int64_t fresh_leaks = 0;
    say("Rebuilding refcount structure");
    if (auto r = co_await rebuild_refcount_structure(); !r) {
      ++res_.check_errors;
      if (res_.failure.empty())
        res_.failure =
            fmt::format("rebuilding the refcount structure failed: {}", r.error().message());
      co_return r.error();
    }
    res_.corruptions = 0;
    res_.leaks = 0;
    // Refcounts that could not be read belonged to the replaced structure.
    res_.check_errors = pre_compare.check_errors;
    // The references changed with the new structure: count them again.
    rebuild = false;
    imrt_.clear();
    past_eof_.clear();
    imrt_.resize((meta_.file_size + cs() - 1) / cs());
    QNBD_CO_TRY(co_await calculate_refcounts(Fix::none, rebuild));
    // The old structure is leaked now; with Fix::leaks, free it. Leaks left
    // here were made by the rebuild itself. qemu restores the earlier
    // counters here and relies on qemu-img's second check; the engine's
    // repair on open has no second check, so a rebuild that did not produce
    // a consistent structure is reported as a failed check.
    const CheckResult saved = res_;
    res_ = CheckResult{};
    QNBD_CO_TRY(co_await compare_refcounts(fixes(fix, Fix::leaks) ? Fix::leaks : Fix::none, rebuild,
                                           highest));
    const CheckResult after = res_;
    res_ = saved;
    fresh_leaks = after.leaks;
    if (rebuild || after.corruptions || after.check_errors) {
      say("ERROR rebuilt refcount structure is still broken");
      res_.corruptions += after.corruptions;
      res_.check_errors += after.check_errors + 1;
      res_.failure = "rebuilt refcount structure is still broken";
      // Keep it from being opened read-write (by qemu, too) until repaired.
      (void)co_await signal_corruption("rebuilt refcount structure is still broken");
      co_return errno_error(EIO);
    }
    if (res_.corruptions < old.corruptions)
      res_.corruptions_fixed += old.corruptions - res_.corruptions;
    if (res_.leaks < old.leaks) res_.leaks_fixed += old.leaks - res_.leaks;
    res_.leaks += fresh_leaks;
  } else if (fix != Fix::none) {
    if (rebuild) {
      say("ERROR need to rebuild refcount structures");
      ++res_.check_errors;
      co_return errno_error(EIO);
    }
    if (res_.leaks || res_.corruptions) {
      res_ = pre_compare;
      QNBD_CO_TRY(co_await compare_refcounts(fix, rebuild, highest));
    }
  }
  QNBD_CO_TRY(co_await check_oflag_copied(fix));
  res_.image_end_offset = (highest + 1) * cs();
  co_return result<>{};
}

namespace {

// Clears the dirty and corrupt bits once everything they guard is durable.
task<> mark_clean(io::File& file, meta::ImageMeta& m) {
  const std::uint64_t bits = format::QCOW2_INCOMPAT_DIRTY | format::QCOW2_INCOMPAT_CORRUPT;
  if (m.header.version < 3 || !(m.header.incompatible_features & bits)) co_return result<>{};
  QNBD_CO_TRY(co_await file.sync());
  m.header.incompatible_features &= ~bits;
  QNBD_CO_TRY(co_await meta::write_u64(file, format::HDR_INCOMPATIBLE_FEATURES,
                                       m.header.incompatible_features));
  co_return co_await file.sync();
}

}  // namespace

boost::asio::awaitable<CheckResult> check_image(io::File& file, CheckOptions opts) {
  CheckResult res;
  meta::ImageMeta im;
  try {
    im = co_await meta::load_image_meta(file, meta::LoadPurpose::check);
  } catch (const std::exception& e) {
    res.check_errors = 1;
    res.failure = e.what();
    co_return res;
  }
  if (opts.fix != Fix::none && file.read_only()) {
    res.check_errors = 1;
    res.failure = "cannot repair a read-only image";
    co_return res;
  }
  try {
    Checker checker(file, im, opts, res);
    if (auto r = co_await checker.run(); !r) {
      res.check_errors = std::max<std::int64_t>(res.check_errors, 1);
      // A step that failed with a reason of its own has set it.
      if (res.failure.empty()) res.failure = r.error().message();
      co_return res;
    }
  } catch (const std::bad_alloc&) {
    res.check_errors += 1;
    res.failure = "Cannot allocate memory";
    co_return res;
  }
  if (opts.fix != Fix::none && res.check_errors == 0 && res.corruptions == 0) {
    if (auto r = co_await mark_clean(file, im); !r) {
      res.check_errors += 1;
      res.failure = r.error().message();
    }
  }
  co_return res;
}

task<CheckResult> repair_dirty_image(io::File& file) {
  CheckOptions o;
  o.fix = Fix::all;
  o.max_log_lines = 100;
  o.log = [](const std::string& line) { spdlog::warn("qcow2 repair: {}", line); };
  CheckResult r = co_await check_image(file, o);
  spdlog::info("qcow2 repair: {} corruptions and {} leaks fixed", r.corruptions_fixed,
               r.leaks_fixed);
  if (r.check_errors || r.corruptions) {
    spdlog::error("qcow2 repair failed: {}", r.failure.empty()
                                                 ? fmt::format("{} corruptions left", r.corruptions)
                                                 : r.failure);
    co_return make_error_code(errc::corrupt_image);
  }
  co_return r;
}

task<CheckResult> repair_dirty_image(io::Ring& ring, const std::string& path) {
  auto file = io::UringFile::open(ring, path, {.read_only = false});
  if (!file) {
    spdlog::error("qcow2 repair: cannot open {}: {}", path, file.error().message());
    co_return file.error();
  }
  co_return co_await repair_dirty_image(**file);
}

int exit_code(const CheckResult& r) {
  if (r.check_errors) return 1;
  if (r.corruptions) return 2;
  if (r.leaks) return 3;
  return 0;
}

}  // namespace qnbd::qcow2::check
