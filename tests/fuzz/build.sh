#!/bin/bash
# Builds the libFuzzer targets with clang++-14 into the directory given as
# the first argument (default: build-fuzz in the repository root). Further
# arguments name targets to build (default: all), e.g. build.sh out fuzz_protocol
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$root/build-fuzz}
shift || true
mkdir -p "$out"
out=$(cd "$out" && pwd)
if ! command -v clang++-14 >/dev/null; then
  echo "build.sh: clang++-14 not found (Debian: apt-get install clang-14 libclang-rt-14-dev)" >&2
  exit 1
fi
# Three meson tests may build into the same directory at once.
exec 9>"$out/.build.lock"
flock 9
targets=()
for t in "$@"; do targets+=("$out/$t"); done
make --no-print-directory -s -f "$root/tests/fuzz/fuzz.mk" -C "$root" OUT="$out" \
  -j"${FUZZ_JOBS:-$(nproc)}" "${targets[@]}"
