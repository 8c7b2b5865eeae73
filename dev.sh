#!/usr/bin/env bash
# qnbd developer entry point.
#   ./dev.sh serve   install dependencies, build (release), serve var/default.qcow2
#                    at nbd://127.0.0.1:10809/ until Ctrl-C
#   ./dev.sh test    install dependencies, build (release and ASan+UBSan), run every
#                    test in both builds; the last line is "N passed, N failed"
#   ./dev.sh tsan    build with ThreadSanitizer (build-tsan) and run the tests of the
#                    threaded parts there (tests/meson.build lists them); same last line
#   ./dev.sh uring   build with the event loops on io_uring (build-uring,
#                    -Dio_uring_loop=true, release) and run every test there
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"

PACKAGES=(
  build-essential pkg-config meson ninja-build
  libboost1.81-dev libyaml-cpp-dev libspdlog-dev libfmt-dev doctest-dev
  liburing-dev zlib1g-dev libzstd-dev libnbd-dev libssl-dev
  # real peers the tests talk to (gnutls-bin: certtool and psktool for the TLS tests)
  qemu-utils libnbd-bin python3-libnbd nbdkit fio systemd gnutls-bin prometheus
  # the VM test (tests/vm): guests, their tools, host-side ext4 checks
  qemu-system-x86 busybox-static nbd-client e2fsprogs
  # fuzzing: FuzzedDataProvider.h for the suite's targets, libFuzzer for soak.sh
  clang-14 libclang-rt-14-dev
)

install_deps() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return
  echo "installing: ${missing[*]}" >&2
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# build DIR [meson options...]
build() {
  local dir=$1
  shift
  if [ ! -f "$dir/build.ninja" ]; then
    local log
    log=$(meson setup "$dir" "$@" 2>&1) || { echo "$log" >&2; rm -rf "$dir"; return 1; }
  fi
  ninja -C "$dir" >/dev/null || ninja -C "$dir"
}

serve() {
  install_deps
  build build-release --buildtype=release
  mkdir -p var
  [ -f var/default.qcow2 ] || build-release/tools/qnbd-img create -f qcow2 var/default.qcow2 10G
  echo "serving var/default.qcow2 at nbd://127.0.0.1:10809/ (Ctrl-C to stop)" >&2
  exec build-release/server/qnbd -b 127.0.0.1 -p 10809 var/default.qcow2
}

run_tests() {
  install_deps
  tests/vm/fetch_kernel.sh var/vm >/dev/null # the kernel the VM test boots
  build build-release --buildtype=release
  build build-asan --buildtype=debug -Db_sanitize=address,undefined -Db_lundef=false
  export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:strict_string_checks=1"
  export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
  local status=0
  for dir in build-release build-asan; do
    echo "=== tests in $dir" >&2
    # The release run does the full count of crash kill points (110); under
    # ASan (3-5x slower) fewer per variant keep the suite well under 20 min.
    [ "$dir" = build-asan ] && export QNBD_CRASH_ITERATIONS=4
    meson test -C "$dir" --print-errorlogs --num-processes 2 || status=1
  done
  /usr/bin/python3 tests/summarize.py build-release/meson-logs/testlog.json \
    build-asan/meson-logs/testlog.json || status=1
  return $status
}

# Not part of `test`: a cold TSan build alone takes longer than the suite's
# budget allows (25 min on the 2 loaded cores it was measured on).
run_tsan() {
  install_deps
  build build-tsan --buildtype=debug -Db_sanitize=thread -Db_lundef=false
  local status=0
  meson test -C build-tsan --print-errorlogs --num-processes 2 || status=1
  /usr/bin/python3 tests/summarize.py build-tsan/meson-logs/testlog.json || status=1
  return $status
}

# Not part of `test` either: the io_uring event loop is an experimental build
# option (meson_options.txt, bench/README.md).
run_uring() {
  install_deps
  build build-uring --buildtype=release -Dio_uring_loop=true
  local status=0
  meson test -C build-uring --print-errorlogs --num-processes 2 || status=1
  /usr/bin/python3 tests/summarize.py build-uring/meson-logs/testlog.json || status=1
  return $status
}

case "${1:-}" in
  serve) serve ;;
  test) run_tests ;;
  tsan) run_tsan ;;
  uring) run_uring ;;
  *) echo "usage: $0 serve|test|tsan|uring" >&2; exit 2 ;;
esac
