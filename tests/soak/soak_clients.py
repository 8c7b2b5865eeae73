"""The clients of the churn soak: fio jobs over fio's nbd engine, the libnbd
durable writer (nbd_writer.py) and churn clients killed with SIGKILL mid-I/O.

Every client is a process in its own process group, so a SIGKILL takes it
whole; fio runs its jobs as threads (--thread) for the same reason."""
import json
import os
import select
import signal
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
MiB = 1 << 20


class Region:
    """One fio job's part of the disk, written once per round. fio's
    verify_only checks neither the seed nor the pattern of a block, so each
    round puts the verify header at its own place in the block
    (verify_offset): a block left from an earlier round (a lost write) fails
    with a bad header, for the first ROUND_LAYOUTS rounds."""

    ROUND_LAYOUTS = 500  # 8-byte steps past the 40-byte minimum, inside a 4 KiB block

    def __init__(self, index, offset, size, bs, iodepth, fsync):
        self.index, self.offset, self.size = index, offset, size
        self.bs, self.iodepth, self.fsync = bs, iodepth, fsync
        self.written = None  # (seed, round) of the last completed, flushed write pass

    def job(self, seed, round_no):
        opts = [f"--name=region{self.index}", f"--offset={self.offset}", f"--size={self.size}",
                f"--bs={self.bs}", f"--iodepth={self.iodepth}", f"--randseed={seed}",
                f"--verify_offset={40 + 8 * (round_no % self.ROUND_LAYOUTS)}"]
        return opts + ([f"--fsync={self.fsync}"] if self.fsync else [])


def fio_argv(uri, *extra):
    # end_fsync: the last FLUSH is acknowledged before fio exits 0.
    return ["fio", "--ioengine=nbd", f"--uri={uri}", "--output-format=json", "--thread",
            "--rw=randwrite", "--verify=crc32c", "--verify_fatal=1",
            "--verify_state_save=0", "--end_fsync=1"] + list(extra)


def spawn(argv, cwd, log=None, stdout=None):
    """Starts a client in its own process group; stderr (and stdout unless
    given) go to `log` (a path) or nowhere."""
    err = open(log, "ab") if log else subprocess.DEVNULL
    try:
        return subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=stdout or err, stderr=err, start_new_session=True)
    finally:
        if log:
            err.close()


def tail(path, limit=4000):
    with open(path, errors="replace") as f:
        return f.read()[-limit:]


def fio_report(proc, out, what):
    """Waits for fio (JSON report in `out`) and returns its jobs; fails on any error."""
    proc.wait(timeout=600)
    text = tail(out, 1 << 24)
    if proc.returncode != 0:
        raise AssertionError(f"{what}: fio exit {proc.returncode}\n{text[-6000:]}")
    jobs = json.loads(text[text.index("{"):])["jobs"]  # the nbd engine may print a banner
    for job in jobs:
        if job["error"]:
            raise AssertionError(f"{what}: job {job['jobname']} error {job['error']}")
    return jobs


def kill_group(proc):
    """SIGKILL a client (mid-I/O: the point of the churn) and reap it."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class DurableWriter:
    """nbd_writer.py on its own region; tracks which stamp each block must hold."""

    def __init__(self, sock, first, count, round_no, seed, cwd):
        self.proc = spawn([sys.executable, os.path.join(HERE, "nbd_writer.py"), sock,
                           str(first), str(count), str(round_no), "--seed", str(seed),
                           "--depth", str(4 + seed % 13)], cwd,
                           log=os.path.join(cwd, "writer.log"), stdout=subprocess.PIPE)
        self.proc_cwd, self.round_no, self.durable_blocks, self._buf = cwd, round_no, 0, b""
        self.last = {}  # block -> last durable pass in this round

    def _consume(self, data):
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            pass_no, *blocks = map(int, line.split())
            for b in blocks:
                self.last[b] = pass_no
            self.durable_blocks += len(blocks)

    def wait_durable(self, blocks, timeout=120):
        """Reads the writer's reports until `blocks` more writes are durable."""
        target = self.durable_blocks + blocks
        fd = self.proc.stdout.fileno()
        while self.durable_blocks < target:
            ready, _, _ = select.select([fd], [], [], timeout)
            data = os.read(fd, 65536) if ready else b""
            if not data:
                raise AssertionError(f"durable writer stopped early (exit {self.proc.poll()}): "
                                     + tail(os.path.join(self.proc_cwd, "writer.log")))
            self._consume(data)

    def finish(self):
        """After the server was killed: the writer exits (3: server gone); read
        every report it made before."""
        out, _ = self.proc.communicate(timeout=60)
        self._consume(out)
        if self.proc.returncode != 3:
            raise AssertionError(f"durable writer exit {self.proc.returncode}: "
                                 + tail(os.path.join(self.proc_cwd, "writer.log")))


class Churn:
    """Clients that connect, write to a scratch region and are SIGKILLed after
    a random delay, then replaced: alternately fio and libnbd writers."""

    def __init__(self, uri, sock, scratch, rng, cwd):
        self.uri, self.sock, self.scratch, self.rng, self.cwd = uri, sock, scratch, rng, cwd
        self.proc, self.kills, self.started = None, 0, 0

    def _start(self):
        offset, size = self.scratch
        if self.started % 2 == 0:
            argv = fio_argv(self.uri, "--name=churn", f"--offset={offset}", f"--size={size}",
                            "--bs=64k", "--iodepth=8", "--time_based", "--runtime=600",
                            "--fsync=4")
        else:
            argv = [sys.executable, os.path.join(HERE, "nbd_writer.py"), self.sock,
                    str(offset // 4096), str(size // 4096), "0", "--seed", str(self.started)]
        self.proc = spawn(argv, self.cwd)
        self.started += 1
        self.deadline = self.rng.uniform(0.2, 1.5)

    def run_until(self, procs, sample):
        """Keeps one churn client going (killed and replaced on a timer) until
        every process in `procs` has exited; calls sample() before each kill."""
        fds = {os.pidfd_open(p.pid): p for p in procs}
        try:
            while fds:
                self._start()
                ready, _, _ = select.select(list(fds), [], [], self.deadline)
                sample()
                kill_group(self.proc)
                self.kills += 1
                for fd in ready:
                    del fds[fd]
                    os.close(fd)
        finally:
            for fd in fds:
                os.close(fd)
