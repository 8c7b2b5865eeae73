#!/bin/bash
# Long crash-consistency soak (not run by meson): many kill points per variant
# (SIGKILL, and a quarter as many SIGTERM stops), a fresh random base seed per
# variant and round, repair of qemu-dirtied images, and the ENOSPC tests.
#   tests/crash/soak.sh BUILD_DIR [ITERATIONS_PER_VARIANT] [ROUNDS] [VARIANT...]
# Failing seeds print a one-line reproducer; their images are kept in
# $QNBD_CRASH_KEEP (default /tmp/qnbd-crash-failures). Exit 1 if anything failed.
set -u -o pipefail
build=${1:?usage: soak.sh BUILD_DIR [ITERATIONS] [ROUNDS] [VARIANT...]}
iterations=${2:-200}
rounds=${3:-1}
shift $(( $# < 3 ? $# : 3 ))
all_variants="raw qcow2 qcow2-backing qcow2-snapshot qcow2-4k qcow2-compressed
  qcow2-lazy qcow2-lazy-backing qcow2-lazy-snapshot qcow2-lazy-4k"
variants=${*:-$all_variants}
here=$(cd "$(dirname "$0")" && pwd)
QNBD=${QNBD:-$(cd "$build" && pwd)/server/qnbd}
export QNBD PYTHONDONTWRITEBYTECODE=1
[ -x "$QNBD" ] || { echo "no server binary at $QNBD" >&2; exit 2; }

status=0
for ((round = 1; round <= rounds; round++)); do
  for v in $variants; do
    seed=$(( $(od -An -N3 -tu4 /dev/urandom) * 1000 ))
    echo "== round $round: $v, seeds $seed.. x $iterations"
    # Hide the per-seed "ok" lines; failures and the summary line stay.
    /usr/bin/python3 "$here/crash_test.py" --variant "$v" --seed "$seed" \
      --iterations "$iterations" --ops-min 50 --ops-max 600 | grep -v '^ok ' || status=1
    /usr/bin/python3 "$here/crash_test.py" --variant "$v" --seed "$seed" --sigterm \
      --iterations $(( (iterations + 3) / 4 )) --ops-min 50 --ops-max 600 \
      | grep -v '^ok ' || status=1
    case $v in qcow2-lazy*)
      /usr/bin/python3 "$here/dirty_repair_test.py" --variant "$v" --seed "$seed" \
        --iterations $(( (iterations + 3) / 4 )) | grep -v '^ok ' || status=1 ;;
    esac
  done
  for f in raw qcow2; do
    /usr/bin/python3 "$here/enospc_test.py" --format "$f" || status=1
  done
done
exit $status
