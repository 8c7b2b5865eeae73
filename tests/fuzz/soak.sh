#!/bin/bash
# Longer fuzzing for manual runs (not part of the suite):
#   tests/fuzz/soak.sh [seconds per target] [target...]
# Defaults: 600 s each for fuzz_protocol, fuzz_qcow2_header, fuzz_qcow2_open,
# fuzz_qcow2_check.
# Builds into $FUZZ_OUT (default build-fuzz-soak in the repository root).
# Inputs that add coverage accumulate in $FUZZ_OUT/corpus/<target> across
# runs (the committed seeds are only read); crashes go to
# $FUZZ_OUT/artifacts/<target>/. FUZZ_WORKERS parallel workers per target
# (default: number of cores). Exits non-zero if any target found something.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
secs=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(fuzz_protocol fuzz_qcow2_header fuzz_qcow2_open fuzz_qcow2_check)
out=${FUZZ_OUT:-$root/build-fuzz-soak}
workers=${FUZZ_WORKERS:-$(nproc)}

"$here/build.sh" "$out" "${targets[@]}" || exit 1
failed=()
for t in "${targets[@]}"; do
  mkdir -p "$out/corpus/$t" "$out/artifacts/$t" "$out/logs/$t"
  echo "=== $t: ${secs}s, $workers workers" >&2
  touch "$out/logs/$t/start"
  # -fork keeps fuzzing after a crash and reports every distinct one.
  "$out/$t" -fork="$workers" -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024 \
    -max_len=65536 -close_fd_mask=1 -artifact_prefix="$out/artifacts/$t/" \
    "$out/corpus/$t" "$here/corpus/$t" >"$out/logs/$t/fuzz.log" 2>&1
  tail -3 "$out/logs/$t/fuzz.log" >&2
  found=$(find "$out/artifacts/$t" -type f -newer "$out/logs/$t/start" | wc -l)
  if [ "$found" -gt 0 ]; then
    echo "$t: $found failing inputs in $out/artifacts/$t/ (log: $out/logs/$t/fuzz.log)" >&2
    failed+=("$t")
  fi
done
[ ${#failed[@]} -eq 0 ] || { echo "soak: findings in ${failed[*]}" >&2; exit 1; }
echo "soak: no findings" >&2
