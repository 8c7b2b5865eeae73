#!/usr/bin/env bash
# Dirty-bit repair benchmark (not a test): a 100 GiB qcow2 image with 64 KiB
# clusters and every data cluster allocated (metadata preallocation, so the
# file stays sparse), marked dirty with every refcount block zeroed, as if
# lazy refcounts never wrote them. Times `qnbd-img check -r all` against
# `qemu-img check -r all` on identical copies, verifies both results with
# qemu-img check, and prints the ratio.
#
#   bench/repair_bench.sh [QNBD_IMG] [SIZE]      (defaults: build/tools/qnbd-img, 100G)
# Needs a filesystem with sparse files in ${TMPDIR:-/var/tmp}.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
QNBD_IMG=${1:-${QNBD_IMG:-build/tools/qnbd-img}}
SIZE=${2:-100G}
[ -x "$QNBD_IMG" ] || { echo "qnbd-img not found at $QNBD_IMG (pass its path)" >&2; exit 1; }
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/qnbd-repair-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

IMG=$WORK/ours.qcow2
T0=$(date +%s.%N)
"$QNBD_IMG" create -q -f qcow2 -o preallocation=metadata,cluster_size=64k,lazy_refcounts=on "$IMG" "$SIZE"
T1=$(date +%s.%N)
qemu-img create -q -f qcow2 -o preallocation=metadata,cluster_size=64k "$WORK/qemu-created.qcow2" "$SIZE"
T2=$(date +%s.%N)
printf 'create -o preallocation=metadata %s: qnbd-img %.3f s, qemu-img %.3f s\n' "$SIZE" \
  "$(echo "$T1 - $T0" | bc -l)" "$(echo "$T2 - $T1" | bc -l)"
rm -f "$WORK/qemu-created.qcow2"

# Dirty bit on, refcount blocks zeroed (what lazy refcounts leave behind).
/usr/bin/python3 - "$IMG" <<'PY'
import struct, sys
with open(sys.argv[1], "r+b") as f:
    h = f.read(104)
    cs = 1 << struct.unpack(">I", h[20:24])[0]
    rt_off, rt_clusters = struct.unpack(">QI", h[48:60])
    f.seek(rt_off)
    table = f.read(rt_clusters * cs)
    blocks = [e & ~0x1ff for (e,) in struct.iter_unpack(">Q", table) if e]
    for b in blocks:
        f.seek(b)
        f.write(bytes(cs))
    f.seek(72)
    f.write(struct.pack(">Q", struct.unpack(">Q", h[72:80])[0] | 1))
print(f"zeroed {len(blocks)} refcount blocks, dirty bit set")
PY
cp --sparse=always "$IMG" "$WORK/qemu.qcow2"

timed() {  # prints seconds, runs "$@" with output discarded
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >/dev/null 2>&1 || true
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}

echo "image: $SIZE, 64 KiB clusters, fully allocated (metadata preallocation), dirty"
T_QNBD=$(timed "$QNBD_IMG" check -r all "$IMG")
T_QEMU=$(timed qemu-img check -r all "$WORK/qemu.qcow2")
for f in "$IMG" "$WORK/qemu.qcow2"; do
  if ! qemu-img check "$f" >/dev/null 2>&1; then
    echo "FAILED: qemu-img check reports problems on $f after repair" >&2
    exit 1
  fi
done
qemu-img compare -q "$IMG" "$WORK/qemu.qcow2" || { echo "FAILED: repaired images differ" >&2; exit 1; }
printf 'qnbd-img check -r all: %8.3f s\n' "$T_QNBD"
printf 'qemu-img check -r all: %8.3f s\n' "$T_QEMU"
printf 'ratio (qemu-img / qnbd-img): %.2fx\n' "$(echo "$T_QEMU / $T_QNBD" | bc -l)"
