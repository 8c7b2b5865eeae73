#!/usr/bin/python3
"""qcow2 through a real qnbd server (QNBD), driven by libnbd.

For several image kinds (v3, v2, small clusters with 1-bit refcounts,
extended L2, over a qcow2 backing file, with an internal snapshot):
- qemu-img compare of the export (nbd+unix://) against the image file;
- random write / write-zeroes (with and without NO_HOLE, FAST_ZERO) / trim /
  flush / FUA sequences, the same applied to an in-memory raw model;
- many requests in flight at once: different sectors of the same
  unallocated clusters (concurrent allocations of one cluster must wait for
  each other) and of neighbouring clusters;
then after SIGTERM: the image equals the model (qemu-img compare against a
raw file), `qemu-img check` finds no errors and no leaks, and the internal
snapshot is unchanged.
"""
import os
import random
import subprocess
import sys
import tempfile

import nbd

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from qnbd_server import Server  # noqa: E402

SIZE = 8 << 20


def run(*args, check=True):
    p = subprocess.run(args, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: {p.returncode} {p.stderr}{p.stdout}")
    return p


class Model:
    """What the export must read as, given the engine's documented rules."""

    def __init__(self, data, cluster, v3, backing):
        self.data = bytearray(data)
        self.cluster, self.v3, self.backing = cluster, v3, backing

    def write(self, off, buf):
        self.data[off:off + len(buf)] = buf

    def zero(self, off, n):
        self.data[off:off + n] = bytes(n)

    def trim(self, off, n):
        # Whole clusters only (the image's last partial cluster counts as whole);
        # v2 over a backing file ignores TRIM.
        if not self.v3 and self.backing:
            return
        c = self.cluster
        start = (off + c - 1) // c * c
        end = off + n
        stop = end if end == SIZE else end // c * c
        if stop > start:
            self.zero(start, stop - start)


def random_ops(h, model, rnd, count):
    c = model.cluster
    for _ in range(count):
        kind = rnd.choice(["write", "write", "write", "fua", "zero", "zero_nohole", "fast",
                           "trim", "flush"])
        if rnd.random() < 0.5:
            off = rnd.randrange(0, SIZE // c) * c
            n = c * rnd.randint(1, 3)
        else:
            off = rnd.randrange(0, SIZE - 1)
            n = rnd.randint(1, 3 * c)
        n = min(n, SIZE - off, 1 << 20)
        if kind in ("write", "fua"):
            buf = bytes([rnd.randrange(256)]) * n
            h.pwrite(buf, off, nbd.CMD_FLAG_FUA if kind == "fua" else 0)
            model.write(off, buf)
        elif kind == "zero":
            h.zero(n, off)
            model.zero(off, n)
        elif kind == "zero_nohole":
            h.zero(n, off, nbd.CMD_FLAG_NO_HOLE)
            model.zero(off, n)
        elif kind == "fast":
            try:
                h.zero(n, off, nbd.CMD_FLAG_FAST_ZERO)
                model.zero(off, n)
            except nbd.Error as e:
                # Allowed to refuse, and then nothing changed.
                assert e.errnum == 95, f"fast zero failed with {e}"
        elif kind == "trim":
            h.trim(n, off)
            model.trim(off, n)
        else:
            h.flush()


def hammer(h, model, rnd):
    """Many writes in flight: sectors of the same fresh clusters at once."""
    c = model.cluster
    base = rnd.randrange(0, SIZE // c - 4) * c
    span = 4 * c
    pieces = list(range(base, base + span, max(512, c // 16)))
    rnd.shuffle(pieces)
    step = max(512, c // 16)
    bufs = []
    for off in pieces:
        buf = nbd.Buffer.from_bytearray(bytearray([rnd.randrange(1, 256)]) * step)
        bufs.append((off, buf, h.aio_pwrite(buf, off)))
    while h.aio_in_flight() > 0:
        h.poll(-1)
    for off, buf, cookie in bufs:
        assert h.aio_command_completed(cookie)
        model.write(off, buf.to_bytearray())


def check_contents(h, model):
    for off in range(0, SIZE, 1 << 20):
        got = h.pread(1 << 20, off)
        want = bytes(model.data[off:off + (1 << 20)])
        if got != want:
            i = next(k for k in range(len(got)) if got[k] != want[k])
            raise AssertionError(f"contents differ at {off + i}: {got[i]} != {want[i]}")


def image_kinds(tmp):
    """(name, image path, cluster, v3, backing, snapshot) after filling with qemu-io."""
    kinds = []

    def mk(name, opts, backing=None):
        p = f"{tmp}/{name}.qcow2"
        args = ["qemu-img", "create", "-q", "-f", "qcow2", "-o", opts]
        if backing:
            args += ["-b", backing, "-F", "qcow2"]
        run(*args, p, str(SIZE))
        run("qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 100000 300000",
            "-c", "write -P 0x6b 3M 70000", p)
        return p

    kinds.append(("v3", mk("v3", "cluster_size=65536"), 65536, True, False, False))
    kinds.append(("v2", mk("v2", "cluster_size=4096,compat=0.10"), 4096, False, False, False))
    kinds.append(("small", mk("small", "cluster_size=512,refcount_bits=1"), 512, True, False,
                  False))
    kinds.append(("extl2", mk("extl2", "cluster_size=32768,extended_l2=on"), 32768, True, False,
                  False))
    base = mk("base", "cluster_size=65536")
    kinds.append(("overlay", mk("overlay", "cluster_size=65536", backing="base.qcow2"), 65536,
                  True, True, False))
    kinds.append(("overlay-v2", mk("overlay-v2", "cluster_size=4096,compat=0.10",
                                   backing="base.qcow2"), 4096, False, True, False))
    snap = mk("snap", "cluster_size=65536")
    run("qemu-img", "snapshot", "-c", "s1", snap)
    kinds.append(("snapshot", snap, 65536, True, False, True))
    del base
    return kinds


def exercise(tmp, name, img, cluster, v3, backing, snapshot, seed):
    raw = f"{tmp}/{name}.start.raw"
    run("qemu-img", "convert", "-O", "raw", img, raw)
    with open(raw, "rb") as f:
        model = Model(f.read(), cluster, v3, backing)
    with Server(tmp, img, fmt="qcow2") as srv:
        # -U: qnbd holds QEMU's write lock on the image it serves, as qemu-nbd does
        p = run("qemu-img", "compare", "-U", "-f", "raw", "-F", "qcow2", srv.uri(), img,
                check=False)
        assert p.returncode == 0, f"export reads differ from the image: {p.stdout}"
        h = nbd.NBD()
        h.connect_uri(srv.uri())
        rnd = random.Random(seed)
        for _ in range(3):
            random_ops(h, model, rnd, 40)
            hammer(h, model, rnd)
        check_contents(h, model)
        h.flush()
        h.shutdown()
    final = f"{tmp}/{name}.final.raw"
    with open(final, "wb") as f:
        f.write(model.data)
    p = run("qemu-img", "compare", "-f", "raw", "-F", "qcow2", final, img, check=False)
    assert p.returncode == 0, f"image differs from the model after shutdown: {p.stdout}"
    p = run("qemu-img", "check", img, check=False)
    assert p.returncode == 0, f"qemu-img check ({p.returncode}):\n{p.stdout}{p.stderr}"
    if snapshot:
        snap = f"{tmp}/{name}.snap.raw"
        run("qemu-img", "convert", "-l", "snapshot.name=s1", "-O", "raw", img, snap)
        assert run("cmp", raw, snap, check=False).returncode == 0, "snapshot changed"


def main():
    failures = []
    with tempfile.TemporaryDirectory(prefix="qnbd-qcow2-nbd.") as tmp:
        for i, kind in enumerate(image_kinds(tmp)):
            try:
                exercise(tmp, *kind, seed=i)
                print(f"{kind[0]}: ok", flush=True)
            except (AssertionError, nbd.Error) as e:
                failures.append(f"{kind[0]}: {e}")
                print(f"{kind[0]}: FAIL {e}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
