// Expected refcounts against the refcount blocks on disk (qemu's
// compare_refcounts): leaks (on disk too high) and corruptions (too low),
// fixed in place when allowed; a referenced cluster with refcount 0 asks
// for a rebuild of the whole refcount structure.
#include "qcow2/check/checker.h"

namespace qnbd::qcow2::check {

task<> Checker::signal_corruption(const std::string& what) {
  if (corruption_signalled_) co_return result<>{};
  corruption_signalled_ = true;
  if (opts_.fix == Fix::none) {
    say("qcow2: Image is corrupt: {}; further non-fatal corruption events will be suppressed",
        what);
    co_return result<>{};
  }
  say("qcow2: Marking image as corrupt: {}; further corruption events will be suppressed", what);
  if (meta_.header.version < 3) co_return result<>{};
  meta_.header.incompatible_features |= format::QCOW2_INCOMPAT_CORRUPT;
  QNBD_CO_TRY(co_await meta::write_u64(file_, format::HDR_INCOMPATIBLE_FEATURES,
                                       meta_.header.incompatible_features));
  co_return co_await file_.sync();
}

task<> Checker::signal_bad_refblock(std::uint64_t cluster) {
  const std::uint64_t index = geo().reftable_index(cluster);
  if (index >= meta_.reftable.size()) co_return result<>{};
  const std::uint64_t offset = format::reftable_block_offset(meta_.reftable[index]);
  auto hex = [](std::uint64_t v) { return v ? fmt::format("{:#x}", v) : std::string("0"); };
  co_return co_await signal_corruption(
      fmt::format("Refblock offset {} unaligned (reftable index: {})", hex(offset), hex(index)));
}

task<> Checker::compare_refcounts(Fix fix, bool& rebuild, std::uint64_t& highest) {
  highest = 0;
  const std::uint64_t per_block = geo().refblock_entries();
  const std::byte* block = nullptr;
  bool block_ok = false;
  for (std::uint64_t i = 0; i < imrt_.size(); ++i) {
    if (i % per_block == 0 || i == 0) {
      auto b = co_await disk_.block_for(i);
      block_ok = b.has_value();
      block = block_ok ? *b : nullptr;
      if (!block_ok) {
        QNBD_CO_TRY(co_await signal_bad_refblock(i));
        // Every cluster of this block is unreadable; report each as qemu does.
        for (std::uint64_t j = i; j < std::min(imrt_.size(), i + per_block); ++j) {
          say("Can't get refcount for cluster {}: {}", j, b.error().message());
          ++res_.check_errors;
        }
        i = i + per_block - 1;
        continue;
      }
    }
    const std::uint64_t on_disk =
        block ? format::get_refcount(block, geo().refcount_order(), geo().refblock_index(i)) : 0;
    const std::uint64_t expected = imrt_.get(i);
    if (on_disk > 0 || expected > 0) highest = i;
    if (on_disk == expected) continue;

    std::int64_t* num_fixed = nullptr;
    if (on_disk == 0)
      rebuild = true;
    else if (on_disk > expected && fixes(fix, Fix::leaks))
      num_fixed = &res_.leaks_fixed;
    else if (on_disk < expected && fixes(fix, Fix::errors))
      num_fixed = &res_.corruptions_fixed;
    say("{} cluster {} refcount={} reference={}",
        num_fixed            ? "Repairing"
        : on_disk < expected ? "ERROR"
                             : "Leaked",
        i, on_disk, expected);
    if (num_fixed) {
      if (co_await disk_.set(i, expected)) {
        ++*num_fixed;
        // A freed cluster gives its space back, as qemu's discard does.
        if (expected == 0 && (i + 1) * cs() <= meta_.file_size)
          (void)co_await file_.punch_hole(i * cs(), cs());
        // set() may have reloaded the block; keep reading the cached copy.
        auto b = co_await disk_.block_for(i);
        if (b) block = *b;
        continue;
      }
    }
    if (on_disk < expected)
      ++res_.corruptions;
    else
      ++res_.leaks;
  }
  co_return result<>{};
}

}  // namespace qnbd::qcow2::check
