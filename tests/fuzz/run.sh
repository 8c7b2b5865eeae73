#!/bin/bash
# Runs one fuzz target for a bounded number of inputs over its seed corpus
# with libFuzzer (the suite runs the g++ build instead: meson.build). Builds
# the target first if needed.
#   run.sh <build dir> <target> <runs> [libFuzzer options...]
# Fails on any crash, sanitizer report, timeout or memory blow-up; the
# failing input is kept in <build dir>/artifacts/<target>/ and its path is
# printed. New inputs found go to a scratch corpus, never into the seeds.
# FUZZ_SEED fixes the random seed (default 1, so a suite run is repeatable).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$1 target=$2 runs=$3
shift 3

"$here/build.sh" "$out" "$target"
mkdir -p "$out/artifacts/$target"
scratch=$(mktemp -d "${TMPDIR:-/tmp}/qnbd-$target.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

# A hang is an input that takes more than 10 s; 2 GiB RSS or a single
# 1 GiB allocation is "allocates without bound". Findings exit 1: libFuzzer's
# default 77 means "skipped" to meson.
status=0
"$out/$target" -runs="$runs" -seed="${FUZZ_SEED:-1}" -timeout=10 -rss_limit_mb=2048 \
  -malloc_limit_mb=1024 -max_len=65536 -print_final_stats=1 -close_fd_mask=1 \
  -error_exitcode=1 -timeout_exitcode=1 \
  -artifact_prefix="$out/artifacts/$target/" "$@" "$scratch" "$here/corpus/$target" || status=$?
# libFuzzer's own exit codes (77 by default) would read as "skipped" to meson.
if [ $status -ne 0 ]; then
  [ $status -eq 77 ] && status=1
  echo "run.sh: $target failed (exit $status); reproduce with: $out/$target <input>" >&2
  ls -t "$out/artifacts/$target/" | head -5 | sed "s|^|  $out/artifacts/$target/|" >&2
fi
exit $status
