"""Helpers for the integration scripts: sparse images with known content, a
qnbd YAML config, a client-tool runner and a test runner. The server itself
is tests/lib/qnbd_server.py (re-exported here: h.Server, h.is_reference, ...).

The server binary comes from $QNBD (meson sets it). Setting QNBD to a qemu-nbd
binary runs the same scripts against qemu-nbd, which is how the scripts
themselves were validated (multi-export YAML configs are qnbd-only).
"""
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import traceback

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from qnbd_server import (Server, describe_status, free_tcp_port, is_reference,  # noqa: E402,F401
                         server_binary, wait_pid)

MiB = 1024 * 1024


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            h.update(block)
    return h.hexdigest()


def pattern(offset, length, seed=0):
    """Deterministic bytes that differ per 512-byte sector, so misplaced data is caught."""
    out = bytearray()
    sector = offset // 512
    start = offset % 512
    while len(out) < start + length:
        word = ((sector * 2654435761 + seed * 40503) & 0xFFFFFFFF).to_bytes(4, "little")
        out += word * 128
        sector += 1
    return bytes(out[start:start + length])


def make_sparse_image(path, size, data_ranges, seed=0):
    """A sparse raw file of `size` bytes with `pattern` data only at data_ranges."""
    with open(path, "wb") as f:
        f.truncate(size)
        for off, length in data_ranges:
            f.seek(off)
            f.write(pattern(off, length, seed))
    return path


def read_file_range(path, offset, length):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def write_config(tmp, exports):
    """A qnbd YAML config serving `exports` (dicts: name, path, read_only, description)
    on tmp/nbd.sock only; returns its path."""
    path = os.path.join(tmp, "qnbd.yaml")
    lines = [f"listen: {{unix: {os.path.join(tmp, 'nbd.sock')}, tcp: false}}", "exports:"]
    for e in exports:
        fields = [f"name: {e['name']}", f"path: {e['path']}", "format: raw"]
        if e.get("read_only"):
            fields.append("read_only: true")
        if "description" in e:
            fields.append(f"description: \"{e['description']}\"")
        lines.append("  - {" + ", ".join(fields) + "}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def run(argv, **kw):
    """Run a client tool; fail with its output if it fails."""
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=kw.pop("timeout", 60), **kw)
    if p.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} -> exit {p.returncode}\n"
                             f"stdout: {p.stdout}\nstderr: {p.stderr}")
    return p


class QemuNbd:
    """qemu-nbd serving `image` on tmp/qemu.sock in the background: the other process that
    holds an image's locks. It is stopped with SIGKILL: the tests need it gone and its locks
    released, and in CI a qemu-nbd once still held its pid-file lock 20 s after a SIGTERM."""

    def __init__(self, tmp, image, *extra):
        self.pid_file = os.path.join(tmp, "qemu-nbd.pid")
        self.argv = ["qemu-nbd", "--fork", "--pid-file", self.pid_file, "-t",
                     "-k", os.path.join(tmp, "qemu.sock"), *extra, image]

    def __enter__(self):
        run(self.argv)
        with open(self.pid_file) as f:
            self.pid = int(f.read())
        return self

    def __exit__(self, *exc):
        os.kill(self.pid, signal.SIGKILL)
        assert wait_pid(self.pid, 20) is not None, f"qemu-nbd {self.pid} outlived SIGKILL"


def main(tests):
    """Run each test function with its own temp dir; report and exit non-zero on failure."""
    failed = 0
    for test in tests:
        with tempfile.TemporaryDirectory(prefix="qnbd-it-") as tmp:
            try:
                test(tmp)
                print(f"PASS {test.__name__}")
            except Exception:
                failed += 1
                print(f"FAIL {test.__name__}")
                traceback.print_exc()
            sys.stdout.flush()
    print(f"{len(tests) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)
