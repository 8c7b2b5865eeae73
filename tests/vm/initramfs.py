"""Builds the VM test's initramfs: a newc cpio archive (the format the kernel
unpacks) holding busybox, the host's nbd-client and mke2fs with their shared
libraries, the relay, the kernel modules the guest loads and the /init script.

Written in Python rather than with cpio(1) so that /dev/console, which the
kernel opens for init before anything is mounted, can be a device node without
root privileges.
"""
import os
import re
import stat
import subprocess

# What the guest loads, by module name; their dependencies come first.
# ext4 names crc32c only as a soft dependency ("crypto-crc32c"), so the generic
# implementation is listed explicitly.
GUEST_MODULES = ["virtio_pci", "virtio_console", "virtio_blk", "nbd",
                 "crc32c_generic", "ext4"]
HOST_TOOLS = {"/usr/sbin/nbd-client": "/tools/nbd-client",
              "/sbin/mke2fs": "/tools/mke2fs"}  # not busybox's mke2fs
BUSYBOX = "/bin/busybox"  # Debian busybox-static


class Cpio:
    """A newc archive written entry by entry (see the kernel's
    Documentation/driver-api/early-userspace/buffer-format.rst)."""

    def __init__(self, path):
        self.f = open(path, "wb")
        self.ino = 1
        self.dirs = set()

    def _entry(self, name, mode, data=b"", rdev=(0, 0)):
        name = name.lstrip("/")
        self._parents(name)
        name_bytes = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1],
                  len(name_bytes), 0]
        self.ino += 1
        self.f.write(b"070701" + b"".join(b"%08X" % v for v in fields))
        self.f.write(name_bytes)
        self._pad()
        self.f.write(data)
        self._pad()

    def _parents(self, name):
        # The kernel creates no missing parent directories.
        parent = os.path.dirname(name)
        if parent and parent not in self.dirs:
            self.directory(parent)

    def _pad(self):
        self.f.write(b"\0" * (-self.f.tell() % 4))

    def directory(self, name):
        self.dirs.add(name)
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name, data, mode=0o755):
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name, target):
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name, major, minor):
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def close(self):
        self._entry("TRAILER!!!", 0)
        self.f.close()


def shared_libraries(binary):
    """The absolute paths ldd resolves for `binary`, the loader included."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True,
                         check=True).stdout
    return re.findall(r"(/\S+)\s+\(0x", out)


def module_depends(ko_path):
    """The `depends=` list of a module's .modinfo section."""
    with open(ko_path, "rb") as f:
        m = re.search(rb"\0depends=([^\0]*)\0", f.read())
    return [d for d in m.group(1).decode().split(",") if d] if m else []


def modules_in_load_order(kernel_dir, wanted):
    """Paths of `wanted` modules and everything they depend on, each after its
    dependencies (insmod order; the unpacked package has no modules.dep)."""
    paths = {}
    for root, _, files in os.walk(os.path.join(kernel_dir, "lib", "modules")):
        for f in files:
            if f.endswith(".ko"):
                paths[f[:-3].replace("-", "_")] = os.path.join(root, f)
    order, seen = [], set()

    def visit(name):
        if name in seen:
            return
        seen.add(name)
        if name not in paths:
            raise FileNotFoundError(f"module {name} is not in {kernel_dir}")
        for dep in module_depends(paths[name]):
            visit(dep.replace("-", "_"))
        order.append(paths[name])

    for name in wanted:
        visit(name)
    return order


def build(out_path, kernel_dir, init_script, relay):
    """Writes the initramfs to out_path."""
    cpio = Cpio(out_path)
    for d in ["dev", "proc", "sys", "mnt", "run"]:
        cpio.directory(d)
    cpio.char_device("dev/console", 5, 1)
    cpio.file("bin/busybox", read(BUSYBOX))
    cpio.symlink("bin/sh", "busybox")
    cpio.file("bin/vport_relay", read(relay))
    cpio.file("init", read(init_script))
    cpio.file("etc/mke2fs.conf", read("/etc/mke2fs.conf"), 0o644)
    libs = set()
    for host, guest in HOST_TOOLS.items():
        cpio.file(guest, read(host))
        libs.update(shared_libraries(host))
    for lib in sorted(libs):
        # ldd names the loader by its /lib64 path and the rest by soname
        # symlinks; the guest gets the files under those names.
        cpio.file(lib, read(lib))
    order = modules_in_load_order(kernel_dir, GUEST_MODULES)
    for ko in order:
        cpio.file("modules/" + os.path.basename(ko), read(ko), 0o644)
    cpio.file("modules/order",
              "".join(os.path.basename(ko) + "\n" for ko in order).encode(), 0o644)
    cpio.close()


def read(path):
    with open(path, "rb") as f:
        return f.read()
