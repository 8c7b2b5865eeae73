"""qnbd serves a qcow2 image to real kernels and to QEMU, in emulated VMs.

A Debian kernel (tests/vm/fetch_kernel.sh) boots twice under qemu-system-x86_64
(TCG) with an initramfs built here (initramfs.py, guest_init.sh):
1. the guest kernel's NBD driver, set up by nbd-client, attaches the export
   through a virtio-serial byte stream (no IP networking anywhere), mke2fs
   makes ext4, files are written, read back after a remount and the device
   is disconnected;
2. QEMU itself is the NBD client (-drive file=nbd+unix://...) and the guest
   reads the same files from /dev/vda and writes one more.
Then qnbd stops, `qemu-img check` must be clean, e2fsck must find the file
system clean and debugfs reads every file back on the host: all three views
(guest 1, guest 2, host) must agree byte for byte (sha256).

Env: QNBD (server), VPORT_RELAY (static relay binary), QNBD_VM_CACHE (where
the kernel is unpacked; fetched there if missing). For debugging:
QNBD_VM_TRACE=1 prints the consoles as they come, QNBD_VM_APPEND replaces
"quiet" on the kernel command line (e.g. "loglevel=7").
"""
import hashlib
import os
import select
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import initramfs  # noqa: E402
from qnbd_harness import Server, main, run  # noqa: E402

EXPORT = "vm"
# Seconds per guest. Each takes 5-10 s of CPU (TCG); the bound leaves room
# for a loaded machine.
GUEST_TIMEOUT = 120


def kernel_dir():
    cache = os.environ.get("QNBD_VM_CACHE") or os.path.join(HERE, "..", "..", "var", "vm")
    return run([os.path.join(HERE, "fetch_kernel.sh"), cache], timeout=200).stdout.strip()


class Guest:
    """One qemu-system-x86_64 run; its serial console is read line by line."""

    def __init__(self, kernel, initrd, role, devices):
        self.role = role
        self.lines = []
        # -nodefaults: no NIC (no networking at all), no VGA, no disks.
        # panic=-1 with -no-reboot: a guest whose /init dies ends QEMU at once.
        # no_timer_check: on a loaded host the emulated timer misses the
        # kernel's IO-APIC timer test and the boot panics.
        cmdline = f"console=ttyS0 panic=-1 no_timer_check {os.environ.get('QNBD_VM_APPEND', 'quiet')}"
        argv = ["qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-cpu", "max",
                "-m", "256", "-smp", "1", "-nodefaults", "-no-user-config",
                "-display", "none", "-serial", "stdio", "-no-reboot",
                "-kernel", kernel, "-initrd", initrd,
                "-append", f"{cmdline} qnbdvm.role={role}"] + devices
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)

    def results(self):
        """The guest's QNBDVM lines up to "done"; fails on FAIL, exit or timeout."""
        deadline = time.monotonic() + GUEST_TIMEOUT
        pending = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                self.fail(f"no 'QNBDVM done' within {GUEST_TIMEOUT}s")
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                self.fail("QEMU exited before 'QNBDVM done'")
            *complete, pending = (pending + chunk).split(b"\n")
            for raw in complete:
                line = raw.decode(errors="replace").rstrip("\r")
                if os.environ.get("QNBD_VM_TRACE"):
                    print(f"{time.monotonic() - self.started:6.2f} {line}", flush=True)
                self.lines.append(line)
                if line.startswith("QNBDVM FAIL"):
                    self.fail("the guest reported a failure")
                if line == "QNBDVM done":
                    self.wait_poweroff()
                    return [l[len("QNBDVM "):] for l in self.lines if l.startswith("QNBDVM ")]

    def wait_poweroff(self):
        if not select.select([self.proc.stdout], [], [], 30)[0]:
            self.fail("the guest did not power off")
        rest = self.proc.stdout.read().decode(errors="replace")
        self.lines += rest.splitlines()
        _, status, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        if self.proc.returncode != 0:
            self.fail(f"QEMU exit code {self.proc.returncode}")
        print(f"guest {self.role}: {time.monotonic() - self.started:.1f} s, QEMU used "
              f"{usage.ru_utime + usage.ru_stime:.1f} s of CPU")

    def fail(self, why):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        tail = "\n".join(self.lines[-60:])
        raise AssertionError(f"guest {self.role}: {why}\n---- console tail ----\n{tail}\n----")


def manifest(results):
    """{path: sha256} from the guest's "file SUM PATH" lines."""
    return {parts[2]: parts[1] for parts in (r.split(" ", 2) for r in results)
            if parts[0] == "file"}


def host_manifest(tmp, image):
    """{path: sha256} of every file of the ext4 in `image`, read by debugfs."""
    raw = os.path.join(tmp, "disk.raw")
    run(["qemu-img", "convert", "-O", "raw", image, raw])
    run(["e2fsck", "-fn", raw])
    out = os.path.join(tmp, "rdump")
    os.mkdir(out)
    run(["debugfs", "-R", f"rdump / {out}", raw])
    files = {}
    for root, _, names in os.walk(out):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, out)] = hashlib.sha256(f.read()).hexdigest()
    return files


def test_ext4_via_kernel_nbd_then_qemu(tmp):
    kdir = kernel_dir()
    kernel = os.path.join(kdir, "boot", "vmlinux")
    initrd = os.path.join(tmp, "initrd.cpio")
    initramfs.build(initrd, kdir, os.path.join(HERE, "guest_init.sh"),
                    os.environ["VPORT_RELAY"])
    image = os.path.join(tmp, "disk.qcow2")
    run(["qemu-img", "create", "-q", "-f", "qcow2", image, "64M"])

    # The chardev connects when QEMU starts, long before the guest's
    # nbd-client speaks: the handshake bound must cover an emulated boot.
    with Server(tmp, image, name=EXPORT, fmt="qcow2",
                extra=["--handshake-timeout=300"]) as server:
        first = Guest(kernel, initrd, "nbd-client", [
            "-chardev", f"socket,id=nbd,path={server.sock}",
            "-device", "virtio-serial-pci", "-device", "virtserialport,chardev=nbd,name=nbd"
        ]).results()
        assert "attached 131072 sectors" in first, first  # 64 MiB negotiated
        written = manifest(first)
        assert len(written) == 41, first
        print(f"nbd-client guest: {first[0]}, {len(written)} files")

        second = Guest(kernel, initrd, "qemu-drive", [
            "-drive", f"file={server.unix_uri()},format=raw,if=virtio"]).results()
        seen = manifest(second)
        assert "from-qemu" in seen, second
        assert {k: v for k, v in seen.items() if k != "from-qemu"} == written, \
            f"QEMU's guest reads other files than the kernel client wrote:\n{first}\n{second}"
        server.assert_alive()

    check = run(["qemu-img", "check", image])
    assert "No errors were found" in check.stdout, check.stdout
    on_host = host_manifest(tmp, image)
    assert on_host == seen, f"host (debugfs) {on_host}\nguest {seen}"
    print(f"qemu-img check clean; debugfs reads the same {len(on_host)} files")


if __name__ == "__main__":
    main([test_ext4_via_kernel_nbd_then_qemu])
