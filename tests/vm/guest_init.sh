#!/bin/sh
# /init of the VM test's guest (busybox sh). The kernel command line picks the
# role with qnbdvm.role=:
#   nbd-client  the kernel's NBD driver, via nbd-client, attaches the qnbd export
#               reached through the virtio-serial port named "nbd"; mke2fs makes
#               ext4 on it; files are written, read back after a remount, and
#               the device is disconnected.
#   qemu-drive  QEMU is the NBD client and the export is /dev/vda: the files are
#               read, one more is written.
# Every result goes to the console as a "QNBDVM ..." line the host waits for;
# the last is "QNBDVM done" or "QNBDVM FAIL ...". Then the guest powers off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo 1 >/proc/sys/kernel/printk # only errors interleave with our lines

say() { echo "QNBDVM $*"; }
fail() {
  say "FAIL $*"
  poweroff -f
}
run() { "$@" || fail "$*"; }

# Prints "sha256 NAME" lines for every file under the mounted file system.
manifest() {
  (cd /mnt && find . -type f | sort | xargs sha256sum) | while read -r sum name; do
    say "file $sum ${name#./}"
  done
}

# The virtio-serial port appears once QEMU answers the driver's port query,
# after insmod returns: wait for it (bounded to ~5 s).
find_port() {
  for _ in $(seq 500); do
    for p in /sys/class/virtio-ports/*; do
      [ "$(cat "$p/name" 2>/dev/null)" = "$1" ] && { echo "/dev/${p##*/}"; return; }
    done
    usleep 10000
  done
  fail "no virtio-serial port named $1"
}

for ko in $(cat /modules/order); do run insmod "/modules/$ko"; done
role=$(sed -n 's/.*qnbdvm\.role=\([a-z-]*\).*/\1/p' /proc/cmdline)
say "role $role on $(uname -r)"

case "$role" in
nbd-client)
  run vport_relay /run/nbd.sock "$(find_port nbd)"
  run /tools/nbd-client -unix /run/nbd.sock -N vm -b 4096 /dev/nbd0
  say "attached $(cat /sys/block/nbd0/size) sectors"
  run /tools/mke2fs -q -t ext4 -L qnbdvm /dev/nbd0
  say "made ext4"
  run mount -t ext4 /dev/nbd0 /mnt
  run dd if=/dev/urandom of=/mnt/big bs=1M count=6 status=none
  run mkdir -p /mnt/dir/sub
  for i in $(seq 40); do
    run dd if=/dev/urandom of=/mnt/dir/sub/f$i bs=$((i * 317)) count=1 status=none
  done
  run umount /mnt
  say "wrote files"
  # The remount starts with no cached pages: the manifest reads through NBD.
  run mount -t ext4 -o ro /dev/nbd0 /mnt
  manifest
  run umount /mnt
  run /tools/nbd-client -d /dev/nbd0
  say "disconnected"
  ;;
qemu-drive)
  run mount -t ext4 /dev/vda /mnt
  run dd if=/dev/urandom of=/mnt/from-qemu bs=64K count=5 status=none
  run umount /mnt
  run mount -t ext4 -o ro /dev/vda /mnt
  manifest
  run umount /mnt
  ;;
*) fail "unknown role '$role'" ;;
esac
sync
say done
poweroff -f
