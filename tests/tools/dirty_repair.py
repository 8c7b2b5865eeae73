"""A dirty image made by qemu itself (iotest 039: lazy_refcounts=on, writes,
then qemu-io kills itself with SIGKILL so the refcounts never reach the
disk): qnbd-img check reports what qemu-img check reports, -r leaks fails as
qemu's does (a rebuild is needed), and qnbd-img check -r all rebuilds the
refcounts so that qemu-img check is clean, the dirty bit is clear, and the
data is intact (same as qemu's own repair, and every written pattern reads
back)."""
import json
import os
import shutil
import signal

from imgtest import (check, check_eq, check_json, cleanup, counts, finish, qemu_img, run,
                     tmpdir)

WORK = tmpdir()
KILL = int(signal.SIGKILL)

WRITES = [(0x5a, 0, 512), (0x33, 1 << 20, 128 << 10), (0x77, 5 << 20, 64 << 10),
          (0x12, (7 << 20) + 4096, 8192)]


def dirty_image(name, *opts):
    img = os.path.join(WORK, name)
    qemu_img("create", "-q", "-f", "qcow2", "-o", ",".join(("lazy_refcounts=on",) + opts), img, "8M")
    args = ["qemu-io", "-f", "qcow2"]
    for pat, off, length in WRITES:
        args += ["-c", f"write -P {pat:#x} {off} {length}"]
    args += ["-c", f"sigraise {KILL}", img]
    rc, _, _ = run(*args, ok=None)
    check_eq(rc, -KILL, f"{name}: qemu-io killed itself")
    info = json.loads(qemu_img("info", "--output=json", img)[1])
    check(info["dirty-flag"], f"{name}: qemu left the dirty bit set")
    return img


def verify(name, *opts):
    img = dirty_image(name + ".qcow2", *opts)
    rc1, d1, e1 = check_json("qnbd", img)
    rc2, d2, e2 = check_json("qemu", img)
    check_eq(rc1, 2, f"{name}: dirty image has corruptions")
    check_eq((rc1, counts(d1)), (rc2, counts(d2)), f"{name}: check agrees with qemu-img")
    check_eq(sorted(e1.splitlines()), sorted(e2.splitlines()), f"{name}: same messages")

    ours_leaks, qemu_leaks = img + ".ours-leaks", img + ".qemu-leaks"
    shutil.copyfile(img, ours_leaks)
    shutil.copyfile(img, qemu_leaks)
    rc1, _, _ = check_json("qnbd", ours_leaks, "-r", "leaks")
    rc2, _, _ = check_json("qemu", qemu_leaks, "-r", "leaks")
    check_eq(rc1, rc2, f"{name}: -r leaks exit code agrees (rebuild needed)")

    ours, theirs = img + ".ours", img + ".qemu"
    shutil.copyfile(img, ours)
    shutil.copyfile(img, theirs)
    rc1, d1, _ = check_json("qnbd", ours, "-r", "all")
    rc2, d2, _ = check_json("qemu", theirs, "-r", "all")
    check_eq((rc1, counts(d1)), (rc2, counts(d2)), f"{name}: -r all agrees with qemu-img")
    rc, out, err = qemu_img("check", ours, ok=None)
    check_eq(rc, 0, f"{name}: qemu-img check clean after qnbd-img check -r all: {out}{err}")
    info = json.loads(qemu_img("info", "--output=json", ours)[1])
    check(not info["dirty-flag"], f"{name}: dirty bit cleared")
    check_eq(qemu_img("compare", ours, theirs, ok=None)[0], 0, f"{name}: same data as qemu's repair")
    reads = []
    for pat, off, length in WRITES:
        reads += ["-c", f"read -P {pat:#x} {off} {length}"]
    rc, out, err = run("qemu-io", "-f", "qcow2", "-r", *reads, ours, ok=None)
    check(rc == 0 and "Pattern verification failed" not in out, f"{name}: written data reads back")


verify("dirty")
verify("dirty-4k-refcount1", "cluster_size=4096", "refcount_bits=1")
verify("dirty-extl2", "extended_l2=on")
cleanup(WORK)
finish()
