"""Start, measure and stop the NBD servers under test (qnbd, qemu-nbd, nbdkit).

Every server is started as a daemon on a Unix socket with a pid file, so the
benchmark can read its CPU time and peak RSS from /proc and stop it by pid.
"""
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Target:
    """One server configuration; `lazy` asks for dirty-bit (lazy refcounts) mode."""
    name: str
    kind: str            # qnbd | qemu | nbdkit
    cache: str = "none"  # none | writeback (nbdkit: page cache)
    lazy: bool = False
    extra: tuple = field(default_factory=tuple)

    @property
    def is_qnbd(self):
        return self.kind == "qnbd"


def device_flushes(path):
    """Flush requests completed by the block device holding `path` (whole device:
    other users of a shared disk add to it). None if the kernel does not say."""
    st = os.stat(path)
    try:
        with open(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/stat") as f:
            fields = f.read().split()
        return int(fields[15]) if len(fields) > 15 else None
    except OSError:
        return None


class ServerError(RuntimeError):
    pass


def command(target, qnbd_bin, image, fmt, sock, pidfile):
    if target.kind == "qnbd":
        cmd = [qnbd_bin, "--fork", "--pid-file", pidfile, "-k", sock, "-f", fmt,
               "--cache", target.cache, "--log-level", "warn"]
        if target.lazy:
            cmd.append("--lazy-refcounts")
        return cmd + list(target.extra) + [image]
    if target.kind == "qemu":
        cmd = ["qemu-nbd", "--fork", "--pid-file", pidfile, "-k", sock, "-f", fmt,
               "-t", "-e", "0", f"--cache={target.cache}"]
        if target.cache == "none":
            cmd.append("--aio=native")
        return cmd + list(target.extra) + [image]
    if target.kind == "nbdkit":
        return ["nbdkit", "-U", sock, "-P", pidfile] + list(target.extra) + ["file", image]
    raise ValueError(target.kind)


def _connectable(sock):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(sock)
        return True
    except OSError:
        return False
    finally:
        s.close()


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


class Server:
    """A running daemon: start() returns once its socket accepts connections."""

    def __init__(self, target, qnbd_bin, image, fmt, rundir):
        self.target = target
        self.sock = os.path.join(rundir, "nbd.sock")
        self.pidfile = os.path.join(rundir, "server.pid")
        self.log = os.path.join(rundir, "server.log")
        for p in (self.sock, self.pidfile):
            if os.path.exists(p):
                os.unlink(p)
        self.cmd = command(target, qnbd_bin, image, fmt, self.sock, self.pidfile)
        self.pid = None

    @property
    def uri(self):
        return f"nbd+unix:///?socket={self.sock}"

    def start(self, timeout=60):
        with open(self.log, "w") as log:
            rc = subprocess.call(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
        if rc != 0:
            raise ServerError(f"{self.cmd[0]} exited {rc}: {self.log_tail()}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pid is None and os.path.exists(self.pidfile):
                text = open(self.pidfile).read().strip()
                self.pid = int(text) if text else None
            if self.pid is not None and _connectable(self.sock):
                return self
            time.sleep(0.02)  # a benchmark harness waiting for a daemon, not a test
        raise ServerError(f"{self.target.name}: not serving after {timeout}s: {self.log_tail()}")

    def log_tail(self, n=400):
        try:
            return open(self.log).read()[-n:].strip().replace("\n", " | ")
        except OSError:
            return ""

    def cpu_seconds(self):
        """utime+stime of all threads of the server process."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def peak_rss_kib(self):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        return 0

    def stop(self, timeout=300):
        """SIGTERM (graceful: caches written back), then wait; SIGKILL if stuck.
        Returns the seconds the shutdown took."""
        if self.pid is None:
            return 0.0
        t0 = time.monotonic()
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return 0.0
        while _alive(self.pid):
            if time.monotonic() - t0 > timeout:
                os.kill(self.pid, signal.SIGKILL)
                raise ServerError(f"{self.target.name}: did not exit within {timeout}s of SIGTERM")
            time.sleep(0.02)
        return time.monotonic() - t0
