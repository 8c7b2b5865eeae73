#!/bin/sh
# Checks the shipped unit files with systemd's own tools:
#  - `systemd-analyze verify` on qnbd.service, qnbd.socket and an instance of
#    qnbd@.service; any message (even a "ignoring" warning) fails the test;
#  - `systemd-analyze security --offline` keeps the hardening score <= 2.0;
#  - the ExecStart command line is accepted by the real qnbd (--check-config
#    on a config written here, in the file the unit names).
# Usage: verify-units.sh QNBD_BINARY
set -eu

src=$(cd "$(dirname "$0")" && pwd)
qnbd=$1
[ -x "$qnbd" ] || { echo "FAIL: $qnbd is not an executable qnbd" >&2; exit 1; }
command -v systemd-analyze >/dev/null || { echo "FAIL: systemd-analyze not found (apt-get install systemd)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for u in qnbd.service qnbd.socket qnbd@.service; do
  # The units name the installed binary and /etc/qnbd; point them at this build and a test dir.
  sed -e "s|/usr/local/bin/qnbd|$qnbd|g" -e "s|/etc/qnbd/|$tmp/etc/|g" "$src/$u" > "$tmp/$u"
done

fail=0
out=$(cd "$tmp" && systemd-analyze verify ./qnbd.service ./qnbd.socket ./qnbd@vm1.service 2>&1) || fail=1
if [ "$fail" -ne 0 ] || [ -n "$out" ]; then
  echo "FAIL: systemd-analyze verify reported:" >&2
  echo "$out" >&2
  exit 1
fi
echo "ok: systemd-analyze verify is silent"

for u in qnbd.service qnbd@vm1.service; do
  if ! (cd "$tmp" && systemd-analyze security --offline=yes --threshold=20 "./$u" > "$tmp/security.txt" 2>&1); then
    echo "FAIL: $u exposure above 2.0:" >&2
    tail -n 3 "$tmp/security.txt" >&2
    exit 1
  fi
  echo "ok: $(grep 'Overall exposure' "$tmp/security.txt")"
done

# The ExecStart lines, run with --check-config against configs at the paths they name.
mkdir -p "$tmp/etc" "$tmp/lib"
: > "$tmp/lib/disk.img"
truncate -s 1M "$tmp/lib/disk.img"
for conf in qnbd vm1; do
  printf 'listen: {unix: %s/%s.sock, tcp: false}\nexports:\n  - {name: d, path: ../lib/disk.img}\n' \
    "$tmp" "$conf" > "$tmp/etc/$conf.yaml"
done
for u in qnbd.service qnbd@.service; do
  cmd=$(sed -n 's/^ExecStart=//p' "$tmp/$u" | sed 's/%i/vm1/g')
  [ -n "$cmd" ] || { echo "FAIL: $u has no ExecStart" >&2; exit 1; }
  # shellcheck disable=SC2086  # the unit's command line is split on spaces, as systemd does
  if ! got=$($cmd --check-config 2>&1); then
    echo "FAIL: $u ExecStart rejected: $cmd: $got" >&2
    exit 1
  fi
  [ "$got" = "qnbd: configuration OK (1 export)" ] || { echo "FAIL: $u: unexpected output '$got'" >&2; exit 1; }
  echo "ok: $u ExecStart accepted: $got"
done
