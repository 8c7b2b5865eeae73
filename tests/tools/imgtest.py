"""Helpers for the qnbd-img tests: run qnbd-img and the real qemu tools,
poke bytes into qcow2 images, compare results, count failures.

Every test script imports this, registers checks with `check()`, and ends
with `finish()`, which exits non-zero if any check failed."""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

QNBD_IMG = os.environ.get("QNBD_IMG", "qnbd-img")
failures = []
passes = 0


def run(*args, ok=(0,), input=None):
    """Runs a command; returns (rc, stdout, stderr). Asserts rc in `ok` unless ok is None."""
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True, input=input)
    if ok is not None and p.returncode not in ok:
        raise AssertionError(f"{' '.join(map(str, args))} -> rc {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p.returncode, p.stdout, p.stderr


def qnbd(*args, ok=(0,)):
    return run(QNBD_IMG, *args, ok=ok)


def qemu_img(*args, ok=(0,)):
    return run("qemu-img", *args, ok=ok)


def qemu_io(img, *cmds, fmt="qcow2"):
    args = ["qemu-io", "-f", fmt]
    for c in cmds:
        args += ["-c", c]
    rc, out, err = run(*args, img)
    if "failed" in out or "failed" in err:
        raise AssertionError(f"qemu-io {cmds}: {out}{err}")
    return out


def check(cond, what):
    global passes
    if cond:
        passes += 1
    else:
        failures.append(what)
        print("FAIL:", what, flush=True)


def check_eq(a, b, what):
    check(a == b, f"{what}: {a!r} != {b!r}")


def finish():
    print(f"{passes} passed, {len(failures)} failed")
    for f in failures:
        print("  -", f.splitlines()[0])
    sys.exit(1 if failures else 0)


def tmpdir():
    d = tempfile.mkdtemp(prefix="qnbd-img-test-")
    return d


def cleanup(d):
    shutil.rmtree(d, ignore_errors=True)


# ---- qcow2 byte poking ------------------------------------------------------

class Qcow2:
    """Just enough of the qcow2 layout to find and edit table entries."""

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            h = f.read(104)
        self.version = struct.unpack(">I", h[4:8])[0]
        self.cluster_bits = struct.unpack(">I", h[20:24])[0]
        self.cluster_size = 1 << self.cluster_bits
        self.l1_size = struct.unpack(">I", h[36:40])[0]
        self.l1_offset = struct.unpack(">Q", h[40:48])[0]
        self.reftable_offset = struct.unpack(">Q", h[48:56])[0]
        self.refcount_order = struct.unpack(">I", h[96:100])[0] if self.version >= 3 else 4
        self.incompat = struct.unpack(">Q", h[72:80])[0] if self.version >= 3 else 0
        self.extended_l2 = bool(self.incompat & 16)

    def read64(self, pos):
        with open(self.path, "rb") as f:
            f.seek(pos)
            return struct.unpack(">Q", f.read(8))[0]

    def write64(self, pos, value):
        with open(self.path, "r+b") as f:
            f.seek(pos)
            f.write(struct.pack(">Q", value))

    def l2_entry_pos(self, guest):
        entry_size = 16 if self.extended_l2 else 8
        l2_entries = self.cluster_size // entry_size
        cluster = guest >> self.cluster_bits
        l1e = self.read64(self.l1_offset + (cluster // l2_entries) * 8)
        l2 = l1e & 0x00fffffffffffe00
        assert l2, "no L2 table for that guest offset"
        return l2 + (cluster % l2_entries) * entry_size

    def host_offset(self, guest):
        return self.read64(self.l2_entry_pos(guest)) & 0x00fffffffffffe00

    def _refcount_slot(self, host_cluster):
        """(byte offset, bit shift, byte count) of a refcount of any width."""
        bits = 1 << self.refcount_order
        per_block = self.cluster_size * 8 // bits
        block = self.read64(self.reftable_offset + (host_cluster // per_block) * 8) & ~0x1ff
        assert block, "no refcount block for that cluster"
        index = host_cluster % per_block
        if bits < 8:
            return block + index * bits // 8, (index * bits) % 8, 1
        return block + index * bits // 8, 0, bits // 8

    def get_refcount(self, host_cluster):
        pos, shift, n = self._refcount_slot(host_cluster)
        with open(self.path, "rb") as f:
            f.seek(pos)
            raw = int.from_bytes(f.read(n), "big")
        bits = 1 << self.refcount_order
        return (raw >> shift) & ((1 << bits) - 1) if bits < 8 else raw

    def set_refcount(self, host_cluster, value):
        pos, shift, n = self._refcount_slot(host_cluster)
        bits = 1 << self.refcount_order
        with open(self.path, "r+b") as f:
            f.seek(pos)
            raw = int.from_bytes(f.read(n), "big")
            if bits < 8:
                mask = ((1 << bits) - 1) << shift
                raw = (raw & ~mask) | ((value << shift) & mask)
            else:
                raw = value
            f.seek(pos)
            f.write(raw.to_bytes(n, "big"))


def check_json(tool, img, *extra, ok=(0, 1, 2, 3)):
    """(rc, parsed json or None, stderr) of `check --output=json`."""
    runner = qnbd if tool == "qnbd" else qemu_img
    rc, out, err = runner("check", "--output=json", *extra, img, ok=ok)
    try:
        data = json.loads(out) if out.strip() else None
    except json.JSONDecodeError:
        data = None
    return rc, data, err


def counts(data):
    if data is None:
        return None
    return {k: data.get(k, 0) for k in ("corruptions", "leaks", "check-errors",
                                        "corruptions-fixed", "leaks-fixed",
                                        "allocated-clusters", "total-clusters",
                                        "fragmented-clusters", "compressed-clusters",
                                        "image-end-offset")}
