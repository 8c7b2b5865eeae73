"""The one way Python tests run a qnbd server (integration, crash, qcow2 tests).

    import qnbd_server as qs            # after sys.path has tests/lib
    with qs.Server(tmp, image, fmt="qcow2") as srv:    # starts; stops on exit
        h = nbd.NBD(); h.connect_uri(srv.uri())

Server(workdir, image=None, *, name="", fmt="raw", read_only=False,
       description=None, unix=True, tcp=False, config=None, extra=(),
       lazy=False, file_size_limit=None, binary=None)
    workdir holds nbd.sock, qnbd.pid and qnbd.log. `config` (a YAML path)
    replaces image/name/fmt/listen options; `extra` is appended to the command
    line; `lazy` adds --lazy-refcounts; `file_size_limit` sets RLIMIT_FSIZE
    (writes past it fail with EFBIG); `binary` overrides $QNBD (e.g.
    "qemu-nbd" for a differential test).
  start()      starts the server and returns self once it accepts clients:
               `--fork` returns only after the listening socket exists, so
               there is no sleep. A failed start raises with the log.
  uri(name=None), unix_uri(name=None), tcp_uri(name=None); .sock, .port, .pid
  alive()      False once the process has exited (it is reaped).
  assert_alive()  raises with the log if the process has exited.
  kill()       SIGKILL (a crash) and reap; raises if it had already died.
  terminate()  SIGTERM without waiting (the server drains its clients).
  stop(timeout=60)  SIGTERM (unless terminate() sent it) and require exit 0;
               a crash, a sanitizer report or a hang fails.
  log_tail(limit=8000)  the end of the server's log, for failure messages.
  memory_factor()  what RSS bounds scale by: 5 for a ThreadSanitizer build, else 1.
  As a context manager: stop() on success; on an exception kill() quietly
  and print the log to stderr.
fd_count(pid)   the open descriptors of a process (a server's, for leak checks);
socket_count(pid)  those of them that are sockets.
wait_for(cond, timeout=30, what=...)  polls cond() until true, for server-side
               state that has no event to wait on (descriptor counts).

The binary is $QNBD (meson sets it). When it names qemu-nbd, the same tests
run against qemu-nbd (is_reference()), which is how they were validated.
Importing this module makes the test a child subreaper, so the daemonised
server is our child: we collect its real exit status, and after kill() it is
gone before anyone reopens the image.
"""
import ctypes
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36


def _become_subreaper():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


_become_subreaper()


def server_binary():
    path = os.environ.get("QNBD")
    if not path:
        sys.exit("QNBD must name the server binary (meson sets it)")
    return path


def is_reference(binary=None):
    """True when $QNBD (or binary) is qemu-nbd, the reference the tests were
    checked on."""
    return os.path.basename(binary or server_binary()) == "qemu-nbd"


def free_tcp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def describe_status(status):
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit code {os.WEXITSTATUS(status)}"


def wait_pid(pid, timeout):
    """waitpid with a timeout (a pidfd, no polling); None if still running. A process that is
    not our child (a daemon that forked away) gives 0 once it has exited: its reaper has the
    status."""
    fd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return None
        try:
            return os.waitpid(pid, 0)[1]
        except ChildProcessError:
            return 0
    finally:
        os.close(fd)


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def socket_count(pid):
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except FileNotFoundError:  # closed since the listing
            pass
    return count


def wait_for(cond, timeout=30, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Server:
    """One qnbd process serving one image (or a YAML config) on a temp socket."""

    def __init__(self, workdir, image=None, *, name="", fmt="raw", read_only=False,
                 description=None, unix=True, tcp=False, config=None, extra=(),
                 lazy=False, file_size_limit=None, binary=None):
        self.binary = binary or server_binary()
        self.image, self.name, self.fmt = image, name, fmt
        self.read_only, self.description, self.config = read_only, description, config
        self.extra, self.lazy, self.file_size_limit = list(extra), lazy, file_size_limit
        self.sock = os.path.join(workdir, "nbd.sock") if unix else None
        self.port = free_tcp_port() if tcp else None
        self.pid_file = os.path.join(workdir, "qnbd.pid")
        self.log = os.path.join(workdir, "qnbd.log")
        self.pid = None
        self._terminated = False

    def argv(self):
        argv = [self.binary, "--fork", "--pid-file", self.pid_file]
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
        if is_reference(self.binary):
            # qemu-nbd takes lazy refcounts from the image header alone.
            argv += ["-t", "-e", "0", "--discard=unmap", "--cache=writeback"]
        elif self.lazy:
            argv.append("--lazy-refcounts")
        return argv + self.extra + [self.image]

    def _limits(self):
        if self.file_size_limit is not None:
            # Past the limit writes fail with EFBIG instead of killing the server.
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE,
                               (self.file_size_limit, self.file_size_limit))

    def start(self):
        for stale in (self.sock, self.pid_file):
            if stale and os.path.exists(stale):
                os.unlink(stale)
        with open(self.log, "ab") as log:
            rc = subprocess.run(self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                timeout=60, preexec_fn=self._limits).returncode
        if rc != 0:
            self._kill_stray()
            raise AssertionError(f"server start failed (exit {rc}): {' '.join(self.argv())}\n"
                                 + self.log_tail())
        with open(self.pid_file) as f:
            self.pid = int(f.read().strip())
        self._terminated = False
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

    def unix_uri(self, name=None):
        return f"nbd+unix:///{self.name if name is None else name}?socket={self.sock}"

    def tcp_uri(self, name=None):
        return f"nbd://127.0.0.1:{self.port}/{self.name if name is None else name}"

    def uri(self, name=None):
        return self.unix_uri(name) if self.sock else self.tcp_uri(name)

    def alive(self):
        if self.pid is None:
            return False
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid == 0:
            return True
        self.pid = None
        self.exit_status = status
        return False

    def assert_alive(self):
        if not self.alive():
            raise AssertionError("server died: " + describe_status(self.exit_status) + "\n"
                                 + self.log_tail())

    def kill(self, check=True):
        """SIGKILL: the crash under test. With check, the server must have been
        running until then."""
        if self.pid is None:
            return
        pid, self.pid = self.pid, None
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        if check and not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
            raise AssertionError(f"server had already died: {describe_status(status)}\n"
                                 + self.log_tail())

    def terminate(self):
        """SIGTERM without waiting: the server drains while clients still poll."""
        os.kill(self.pid, signal.SIGTERM)
        self._terminated = True

    def stop(self, timeout=60):
        """SIGTERM and require exit 0 (a crash or sanitizer report fails the test).
        After terminate() only wait: a second SIGTERM may mean "exit now"."""
        if self.pid is None:
            return
        pid, self.pid = self.pid, None
        if not self._terminated:
            os.kill(pid, signal.SIGTERM)
        self._terminated = False
        status = wait_pid(pid, timeout)
        if status is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"server did not exit within {timeout}s of SIGTERM\n"
                                 + self.log_tail())
        if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
            raise AssertionError(f"server exit after SIGTERM: {describe_status(status)}\n"
                                 + self.log_tail())

    def memory_factor(self):
        """ThreadSanitizer's shadow memory grows with every byte the server
        touches: 324 MiB of peak RSS growth where a release build grows by
        64 MiB (server_lifecycle's pipelined reads). RSS bounds scale by this;
        other builds stay within a small factor of release, so they get 1."""
        with open(f"/proc/{self.pid}/maps") as f:
            return 5 if "libtsan" in f.read() else 1

    def log_tail(self, limit=8000):
        try:
            with open(self.log, errors="replace") as f:
                text = f.read()
        except OSError:
            return ""
        return f"---- server log {self.log} ----\n{text[-limit:]}\n----"

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.stop()
        else:
            sys.stderr.write(self.log_tail() + "\n")
            self.kill(check=False)
        return False
