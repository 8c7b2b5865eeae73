#!/usr/bin/env bash
# fetch_kernel.sh CACHE_DIR
# Puts the Debian kernel the VM test boots into CACHE_DIR/<package>/ and prints
# that directory: linux-image-amd64's current linux-image-*-amd64 package is
# downloaded with `apt-get download` and only vmlinuz and the module trees the
# guest can need are unpacked. Nothing is installed. Idempotent: a package
# already unpacked is not fetched again.
# The bzImage is also decompressed to boot/vmlinux (an ELF QEMU starts by its
# PVH entry point): an emulated CPU takes ~5 s to unpack the xz kernel itself,
# at every boot.
set -euo pipefail
cache=${1:?usage: fetch_kernel.sh CACHE_DIR}
mkdir -p "$cache"
cache=$(readlink -f "$cache")

latest_package() {
  apt-cache depends linux-image-amd64 2>/dev/null |
    awk '$1 == "Depends:" && $2 ~ /^linux-image-.*-amd64$/ { print $2; exit }'
}

pkg=$(latest_package || true)
if [ -z "$pkg" ]; then
  # No package lists (fresh machine): reuse an unpacked kernel if there is one.
  found=$(find "$cache" -maxdepth 3 -path '*/boot/vmlinuz-*' -print -quit)
  [ -n "$found" ] && { dirname "$(dirname "$found")"; exit 0; }
  echo "fetch_kernel.sh: apt-cache knows no linux-image-amd64 (run apt-get update)" >&2
  exit 1
fi
dest=$cache/$pkg
[ -f "$dest/.complete" ] && { echo "$dest"; exit 0; }

work=$(mktemp -d "$cache/.fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT
# The package lists can name a version the mirror has since replaced.
(cd "$work" && apt-get download -q "$pkg" >&2) ||
  { apt-get update -q >&2 && (cd "$work" && apt-get download -q "$pkg" >&2); }
mkdir -p "$work/root"
dpkg-deb --fsys-tarfile "$work"/"$pkg"_*.deb |
  tar -x -C "$work/root" --wildcards './boot/vmlinuz-*' \
    './lib/modules/*/kernel/drivers/virtio' './lib/modules/*/kernel/drivers/block' \
    './lib/modules/*/kernel/drivers/char' './lib/modules/*/kernel/fs' \
    './lib/modules/*/kernel/lib' './lib/modules/*/kernel/crypto'
/usr/bin/python3 - "$work"/root/boot/vmlinuz-* "$work/root/boot/vmlinux" <<'PY'
import lzma, sys
image = open(sys.argv[1], "rb").read()
payload = image.find(b"\xfd7zXZ\x00")  # Debian builds CONFIG_KERNEL_XZ
if payload < 0:
    sys.exit("fetch_kernel.sh: no xz payload in " + sys.argv[1])
open(sys.argv[2], "wb").write(lzma.LZMADecompressor().decompress(image[payload:]))
PY
rm -rf "$dest"
mv "$work/root" "$dest"
touch "$dest/.complete"
echo "$dest"
