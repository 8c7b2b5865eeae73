#!/bin/sh
# `meson install` into a temporary DESTDIR: the binaries, man pages, example
# config and systemd units land in the usual places under the prefix; the
# installed units name the installed binary; the man pages format without
# warnings; the installed qnbd runs.
# Usage: install_test.sh BUILD_DIR
set -eu
build=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dest=$tmp/dest

if ! meson install -C "$build" --no-rebuild --destdir "$dest" > "$tmp/install.log" 2>&1; then
  echo "FAIL: meson install:" >&2
  cat "$tmp/install.log" >&2
  exit 1
fi
# meson's own record of the options (meson introspect is slow to start).
info=$build/meson-info
option() {
  /usr/bin/python3 -c "import json,sys; print(next(o['value'] for o in json.load(open(sys.argv[1])) if o['name'] == sys.argv[2]))" \
    "$info/intro-buildoptions.json" "$1"
}
prefix=$(option prefix)
root=$dest$prefix
fail=0
expect() {  # expect TEST PATH
  if test "$1" "$root/$2"; then echo "ok: $prefix/$2"; else echo "FAIL: missing $prefix/$2" >&2; fail=1; fi
}
expect -x "$(option bindir)/qnbd"
expect -x "$(option bindir)/qnbd-img"
mandir=$(option mandir)
expect -f "$mandir/man8/qnbd.8"
expect -f "$mandir/man1/qnbd-img.1"
expect -f "$mandir/man5/qnbd.yaml.5"
expect -f "$(option datadir)/doc/qnbd/example.yaml"
if pkg-config --exists systemd; then
  for u in qnbd.service qnbd.socket qnbd@.service; do expect -f "lib/systemd/system/$u"; done
  for u in qnbd.service qnbd@.service; do
    want="ExecStart=$prefix/$(option bindir)/qnbd --config"
    grep -q "^$want" "$root/lib/systemd/system/$u" ||
      { echo "FAIL: installed $u does not start $prefix/$(option bindir)/qnbd" >&2; fail=1; }
  done
else
  echo "FAIL: systemd's pkg-config file is missing (apt-get install systemd)" >&2
  fail=1
fi
[ "$fail" -eq 0 ] || exit 1

for page in "$root/$mandir"/man*/*; do
  warnings=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -E UTF-8 -l "$page" 2>&1 >/dev/null)
  [ -z "$warnings" ] || { echo "FAIL: $page: $warnings" >&2; exit 1; }
  LC_ALL=C.UTF-8 man -l "$page" 2>/dev/null | grep -q "^NAME" || { echo "FAIL: $page has no NAME" >&2; exit 1; }
done
echo "ok: man pages format without warnings"

got=$("$root/$(option bindir)/qnbd" --version)
[ "$got" = "qnbd $(/usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' "$info/intro-projectinfo.json")" ] ||
  { echo "FAIL: installed qnbd --version: $got" >&2; exit 1; }
echo "ok: installed $got runs"
