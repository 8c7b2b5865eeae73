"""Shared helpers for the integration scripts: start a real qnbd on a temporary
socket, make sparse images with known content, and check that it stays healthy.

The server binary comes from $QNBD (meson sets it). Setting QNBD to a qemu-nbd
binary runs the same scripts against qemu-nbd, which is how the scripts
themselves were validated (multi-export YAML configs are qnbd-only).
"""
import ctypes
import hashlib
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

MiB = 1024 * 1024
PR_SET_CHILD_SUBREAPER = 36


def _become_subreaper():
    # `--fork` daemonises; as a subreaper we inherit the daemon and can
    # collect its real exit status instead of guessing from kill(pid, 0).
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


_become_subreaper()


def server_binary():
    path = os.environ.get("QNBD")
    if not path:
        sys.exit("QNBD must name the server binary (meson sets it)")
    return path


def is_reference():
    return os.path.basename(server_binary()) == "qemu-nbd"


def free_tcp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


class Server:
    """One qnbd process serving one image (or a YAML config) on a temp socket."""

    def __init__(self, workdir, image=None, name="", read_only=False,
                 description=None, fmt="raw", tcp=False, unix=True,
                 config=None, extra=()):
        self.workdir = workdir
        self.image = image
        self.name = name
        self.read_only = read_only
        self.description = description
        self.fmt = fmt
        self.config = config
        self.extra = list(extra)
        self.sock = os.path.join(workdir, "nbd.sock") if unix else None
        self.port = free_tcp_port() if tcp else None
        self.pid_file = os.path.join(workdir, "qnbd.pid")
        self.log = os.path.join(workdir, "qnbd.log")
        self.pid = None

    def argv(self):
        argv = [server_binary(), "--fork", "--pid-file", self.pid_file]
        if self.config:
            return argv + ["--config", self.config] + self.extra
        if self.sock:
            argv += ["-k", self.sock]
        if self.port:
            argv += ["-b", "127.0.0.1", "-p", str(self.port)]
        argv += ["-x", self.name, "-f", self.fmt]
        if self.description is not None:
            argv += ["-D", self.description]
        if self.read_only:
            argv.append("-r")
        if is_reference():
            argv += ["-t", "-e", "0", "--discard=unmap"]
        return argv + self.extra + [self.image]

    def start(self):
        with open(self.log, "ab") as log:
            rc = subprocess.run(self.argv(), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, timeout=30).returncode
        if rc != 0:
            self.dump_log()
            raise AssertionError(f"server start failed with exit {rc}: {self.argv()}")
        with open(self.pid_file) as f:
            self.pid = int(f.read().strip())
        return self

    def unix_uri(self, name=None):
        name = self.name if name is None else name
        return f"nbd+unix:///{name}?socket={self.sock}"

    def tcp_uri(self, name=None):
        name = self.name if name is None else name
        return f"nbd://127.0.0.1:{self.port}/{name}"

    def uri(self, name=None):
        return self.unix_uri(name) if self.sock else self.tcp_uri(name)

    def assert_alive(self):
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid != 0:
            self.pid = None
            self.dump_log()
            raise AssertionError(f"server died: {describe_status(status)}")

    def stop(self, timeout=20):
        """SIGTERM, then require a clean exit 0 (a crash or sanitizer report fails)."""
        if self.pid is None:
            return
        pid, self.pid = self.pid, None
        os.kill(pid, signal.SIGTERM)
        status = wait_pid(pid, timeout)
        if status is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            self.dump_log()
            raise AssertionError(f"server did not exit within {timeout}s of SIGTERM")
        if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
            self.dump_log()
            raise AssertionError(f"server exit after SIGTERM: {describe_status(status)}")

    def kill(self):
        if self.pid is not None:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.pid = None

    def dump_log(self):
        try:
            with open(self.log, errors="replace") as f:
                text = f.read()
        except OSError:
            return
        sys.stderr.write(f"---- server log {self.log} ----\n{text[-8000:]}\n----\n")

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.stop()
        else:
            self.dump_log()
            self.kill()
        return False


def describe_status(status):
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit code {os.WEXITSTATUS(status)}"


def wait_pid(pid, timeout):
    """waitpid with a timeout, using a pidfd so there is no polling loop."""
    fd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return None
        return os.waitpid(pid, 0)[1]
    finally:
        os.close(fd)


def run(argv, **kw):
    """Run a client tool; fail with its output if it fails."""
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=kw.pop("timeout", 60), **kw)
    if p.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} -> exit {p.returncode}\n"
                             f"stdout: {p.stdout}\nstderr: {p.stderr}")
    return p


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
