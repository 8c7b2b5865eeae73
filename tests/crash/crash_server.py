"""Start, SIGKILL and stop one qnbd (or, to validate the suite, qemu-nbd) process.

`--fork` returns once the server listens, so there are no sleeps. We become a
child subreaper so the daemonised server is our child: after SIGKILL we reap it
and know it is gone before anyone reopens the image.
"""
import ctypes
import os
import resource
import select
import signal
import subprocess
import sys

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def server_binary():
    path = os.environ.get("QNBD")
    if not path:
        sys.exit("QNBD must name the server binary (meson sets it)")
    return path


def is_reference():
    return os.path.basename(server_binary()) == "qemu-nbd"


def describe_status(status):
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit code {os.WEXITSTATUS(status)}"


class Server:
    def __init__(self, workdir, image, fmt, lazy=False, file_size_limit=None):
        self.image, self.fmt, self.lazy = image, fmt, lazy
        self.file_size_limit = file_size_limit
        self.sock = os.path.join(workdir, "nbd.sock")
        self.pid_file = os.path.join(workdir, "server.pid")
        self.log = os.path.join(workdir, "server.log")
        self.pid = None
        self.terminated = False

    def argv(self):
        exe = server_binary()
        argv = [exe, "--fork", "--pid-file", self.pid_file, "-k", self.sock, "-f", self.fmt]
        if is_reference():
            # qemu-nbd takes lazy refcounts from the image header alone.
            return argv + ["--cache=writeback", "--discard=unmap", "-t", self.image]
        if self.lazy:
            argv.append("--lazy-refcounts")
        return argv + [self.image]

    def _limits(self):
        if self.file_size_limit is not None:
            # Past the limit writes fail with EFBIG instead of killing the server.
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE,
                               (self.file_size_limit, self.file_size_limit))

    def start(self):
        for stale in (self.sock, self.pid_file):
            if os.path.exists(stale):
                os.unlink(stale)
        with open(self.log, "ab") as log:
            rc = subprocess.run(self.argv(), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=log, timeout=60, preexec_fn=self._limits).returncode
        if rc != 0:
            self._kill_stray()
            raise AssertionError(f"server start failed (exit {rc}): {' '.join(self.argv())}\n"
                                 + self.log_tail())
        with open(self.pid_file) as f:
            self.pid = int(f.read().strip())
        return self

    def _kill_stray(self):
        """A failed start may still have left a daemon behind (qemu-nbd does)."""
        try:
            with open(self.pid_file) as f:
                pid = int(f.read().strip())
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (OSError, ValueError):
            pass

    def uri(self):
        return f"nbd+unix:///?socket={self.sock}"

    def alive(self):
        if self.pid is None:
            return False
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid == 0:
            return True
        self.pid = None
        self.exit_status = status
        return False

    def kill(self):
        """SIGKILL: the crash under test."""
        if self.pid is not None:
            os.kill(self.pid, signal.SIGKILL)
            _, status = os.waitpid(self.pid, 0)
            self.pid = None
            if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
                raise AssertionError(f"server had already died: {describe_status(status)}\n"
                                     + self.log_tail())

    def terminate(self):
        """SIGTERM without waiting: the server drains while clients still poll."""
        os.kill(self.pid, signal.SIGTERM)
        self.terminated = True

    def stop(self, timeout=60):
        """SIGTERM and require exit 0 (a crash or sanitizer report fails the test).
        After terminate() only wait: a second SIGTERM may mean "exit now"."""
        if self.pid is None:
            return
        pid, self.pid = self.pid, None
        pidfd = os.pidfd_open(pid)
        if not self.terminated:
            os.kill(pid, signal.SIGTERM)
        self.terminated = False
        exited, _, _ = select.select([pidfd], [], [], timeout)
        os.close(pidfd)
        if not exited:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"server did not exit within {timeout}s of SIGTERM\n"
                                 + self.log_tail())
        _, status = os.waitpid(pid, 0)
        if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
            raise AssertionError(f"server exit after SIGTERM: {describe_status(status)}\n"
                                 + self.log_tail())

    def log_tail(self, limit=6000):
        try:
            with open(self.log, errors="replace") as f:
                text = f.read()
        except OSError:
            return ""
        return f"---- server log {self.log} ----\n{text[-limit:]}\n----"
