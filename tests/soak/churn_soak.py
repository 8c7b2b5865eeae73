#!/usr/bin/python3
"""Churn soak: fio with crc32c verification over several connections (FLUSH),
a libnbd writer using FUA and FLUSH, clients SIGKILLed mid-I/O and replaced,
and in every round the server SIGKILLed while writers are active, then
restarted on the same qcow2 image. Rounds run in normal and in
dirty-bit mode (--lazy-refcounts).

    QNBD=build-release/server/qnbd /usr/bin/python3 churn_soak.py --minutes 1
    /usr/bin/python3 churn_soak.py --minutes 10 build-release/server/qnbd

Each round: the three fio regions are trimmed, then fio writes each once with a
fresh seed (4k/64k/16k blocks, FLUSH every 32 or 8 writes, a final FLUSH) while
churn clients come and go; the durable writer rewrites its region continuously. After a number of
durable writer reports (and with a fio writer busy on a scratch region) the
server gets SIGKILL. Then: `qemu-img check` under the rules of the mode (normal:
leaks at most; dirty-bit: stale refcounts only, and then with the dirty bit
set), a restart (which repairs a dirty image on open), fio `verify_only` of every
region, and a read-back of the durable writer's region: every write whose FUA
or FLUSH reply came back must be there (or a later write of the same block).
The server's sockets and other descriptors must return to their idle counts
after each phase. After
the last round: a clean stop and a final check with no errors. Prints
`FIGURE name value` lines; exit 1 on any failure.
"""
import argparse
import os
import random
import sys
import tempfile
import time

import nbd

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, os.path.join(HERE, "..", "crash"))
import crash_images as ci  # noqa: E402
import qnbd_server as qs  # noqa: E402
from qnbd_server import fd_count, socket_count, wait_for  # noqa: E402
from nbd_writer import BLOCK, decode  # noqa: E402
from soak_clients import (MiB, Churn, DurableWriter, Region, fio_argv, fio_report,  # noqa: E402
                          kill_group, spawn)

VIRTUAL_SIZE = 256 * MiB
REGIONS = [Region(0, 0, 24 * MiB, "4k", 16, fsync=32),
           Region(1, 32 * MiB, 24 * MiB, "64k", 8, fsync=0),
           Region(2, 64 * MiB, 24 * MiB, "16k", 4, fsync=8)]
DURABLE = (96 * MiB // BLOCK, 16 * MiB // BLOCK)  # first block, blocks
SCRATCH = (128 * MiB, 32 * MiB)  # churn clients and the writer busy at the kill
REPAIR_LINE = "dirty bit set; repairing refcounts"
# A client killed while sending a WRITE, or with replies still to send.
CUT_LINES = ("truncated write payload", "send failed")


def figure(name, value):
    print(f"FIGURE {name} {value}", flush=True)


class Soak:
    def __init__(self, args, tmp):
        self.args, self.tmp = args, tmp
        self.rng = random.Random(args.seed)
        self.image = os.path.join(tmp, "disk.qcow2")
        ci.run(["qemu-img", "create", "-q", "-f", "qcow2", self.image, str(VIRTUAL_SIZE)])
        # Also runs against qemu-nbd (QNBD=/usr/bin/qemu-nbd), which is how the
        # checks were validated; it takes lazy refcounts from the image header alone.
        limit = ["-e", "32"] if qs.is_reference() else ["--max-connections", "32"]
        self.server = qs.Server(tmp, self.image, fmt="qcow2", extra=limit)
        self.durable = {}  # block -> (round, pass) of its last durable write
        self.stats = dict(rounds=0, server_kills=0, client_kills=0, bytes_written=0,
                          bytes_verified=0, verifies=0, dirty_after_kill=0, leaks_max=0,
                          fd_peak=0)

    def start_server(self, lazy):
        self.server.lazy = lazy
        self.server.start()
        # Worker threads may still be making their io_uring, eventfd and timerfd
        # when --fork returns, so only the socket count is fixed from the start;
        # the other descriptors are counted once a client session has ended.
        self.socks0, self.other_fds = socket_count(self.server.pid), None

    def sample_fds(self):
        self.stats["fd_peak"] = max(self.stats["fd_peak"], fd_count(self.server.pid))

    def wait_fds(self, clients, when):
        """The server is back to its listening socket(s) plus `clients`
        connections, and its other descriptors to their count when it was idle."""
        pid = self.server.pid
        wait_for(lambda: socket_count(pid) <= self.socks0 + clients,
                 what=f"server sockets back to {self.socks0}+{clients} {when}")
        if self.other_fds is None:
            self.other_fds = fd_count(pid) - socket_count(pid)
        wait_for(lambda: fd_count(pid) - socket_count(pid) <= self.other_fds,
                 what=f"server descriptors other than sockets back to {self.other_fds} {when}")

    def trim_regions(self):
        """TRIM the fio regions (and FLUSH), so every round allocates their
        clusters again, reusing the ones freed: without it, every round after
        the first would only overwrite allocated clusters."""
        h = nbd.NBD()
        h.connect_unix(self.server.sock)
        for region in REGIONS:
            h.trim(region.size, region.offset)
        h.flush()
        h.shutdown()

    def write_phase(self, round_no):
        """fio writes every region once (acknowledged and flushed when it exits
        0) while churn clients are killed and replaced."""
        self.trim_regions()
        uri, out = self.server.uri(), os.path.join(self.tmp, "fio-write.json")
        seeds = [self.rng.randrange(1, 1 << 32) for _ in REGIONS]
        jobs = [o for r, s in zip(REGIONS, seeds) for o in r.job(s, round_no)]
        if os.path.exists(out):
            os.unlink(out)
        fio = spawn(fio_argv(uri, "--do_verify=1", *jobs), self.tmp, log=out)
        churn = Churn(uri, self.server.sock, SCRATCH, self.rng, self.tmp)
        churn.run_until([fio], self.sample_fds)
        self.stats["client_kills"] += churn.kills
        for region, seed, job in zip(REGIONS, seeds, fio_report(fio, out, f"round {round_no}")):
            if job["write"]["io_bytes"] != region.size:
                raise AssertionError(f"region {region.index}: wrote {job['write']['io_bytes']}")
            region.written = (seed, round_no)
            self.stats["bytes_written"] += region.size
        self.server.assert_alive()

    def kill_phase(self, writer):
        """SIGKILL the server after a random number of durable-writer reports,
        with a fio writer busy on the scratch region."""
        offset, size = SCRATCH
        busy = spawn(fio_argv(self.server.uri(), "--name=busy", f"--offset={offset}",
                              f"--size={size}", "--bs=32k", "--iodepth=16", "--time_based",
                              "--runtime=600", "--fsync=16"), self.tmp)
        pid = self.server.pid
        wait_for(lambda: socket_count(pid) >= self.socks0 + 2, what="the busy writer's connection")
        writer.wait_durable(self.rng.randint(1, 256))
        self.sample_fds()
        self.server.kill()
        self.stats["server_kills"] += 1
        kill_group(busy)
        writer.finish()
        for block, pass_no in writer.last.items():
            self.durable[block] = (writer.round_no, pass_no)
        self.stats["bytes_written"] += writer.durable_blocks * BLOCK

    def check_after_kill(self, lazy):
        check = ci.qemu_img_check(self.image)
        bits = ci.qcow2_incompatible_bits(self.image)
        dirty = bool(bits & ci.QCOW2_INCOMPAT_DIRTY)
        self.stats["dirty_after_kill"] += dirty
        self.stats["leaks_max"] = max(self.stats["leaks_max"], check.leaks)
        if bits & ci.QCOW2_INCOMPAT_CORRUPT:
            raise AssertionError(f"corrupt bit set after the kill\n{check}")
        if lazy:
            bad = ci.unexpected_lazy_errors(check, 1)
            if check.rc not in (0, 2, 3) or bad:
                raise AssertionError(f"dirty-bit mode: damage beyond stale refcounts: {bad}\n"
                                     f"{check}")
            if check.errors and not dirty:
                raise AssertionError(f"refcount errors but the dirty bit is clear\n{check}")
        elif check.rc not in (0, 3) or check.errors or dirty:
            raise AssertionError(f"normal mode: more than leaks after the kill "
                                 f"(dirty bit {dirty})\n{check}")

    def fio_verify(self, jobs, out):
        out = os.path.join(self.tmp, out)
        if os.path.exists(out):
            os.unlink(out)
        return spawn(fio_argv(self.server.uri(), "--verify_only=1", *jobs), self.tmp,
                     log=out), out

    def verify_selftest(self):
        """The verification can fail: verifying a region as if it held the
        previous round's blocks (what a lost write would leave) must fail."""
        region = REGIONS[0]
        seed, round_no = region.written
        fio, _ = self.fio_verify(region.job(seed, round_no - 1), "fio-selftest.json")
        if fio.wait(timeout=600) == 0:
            raise AssertionError("fio verify_only accepted a block layout of another round")

    def verify_regions(self, round_no):
        jobs = [o for r in REGIONS for o in r.job(*r.written)]
        fio, out = self.fio_verify(jobs, "fio-verify.json")
        for region, job in zip(REGIONS, fio_report(fio, out, f"verify after round {round_no}")):
            if job["read"]["io_bytes"] != region.size:
                raise AssertionError(f"region {region.index}: verified only "
                                     f"{job['read']['io_bytes']} of {region.size} bytes")
            self.stats["bytes_verified"] += region.size
            self.stats["verifies"] += 1

    def verify_durable(self):
        """Every block whose FUA or FLUSH reply came back holds that write or a later one."""
        first, count = DURABLE
        h = nbd.NBD()
        h.connect_unix(self.server.sock)
        data = b"".join(h.pread(4 * MiB, off)
                        for off in range(first * BLOCK, (first + count) * BLOCK, 4 * MiB))
        h.shutdown()
        for i in range(count):
            block = first + i
            got = decode(data[i * BLOCK:(i + 1) * BLOCK], block)
            want = self.durable.get(block)
            if want and (got is None or got < want):
                raise AssertionError(f"durable block {block}: holds (round, pass) {got}, "
                                     f"but {want} was acknowledged with FUA or FLUSH")
        self.stats["bytes_verified"] += count * BLOCK
        self.stats["verifies"] += 1

    @staticmethod
    def lazy(round_no):
        """normal, dirty-bit, dirty-bit, normal, ...: restarts happen in both
        modes after kills in both modes, so both repair a dirty image on open."""
        return round_no % 4 in (2, 3)

    def round(self, round_no, lazy):
        writer = DurableWriter(self.server.sock, *DURABLE, round_no, self.rng.randrange(1 << 30),
                               self.tmp)
        self.write_phase(round_no)
        self.wait_fds(1, f"after the churn of round {round_no} (the durable writer is on)")
        self.kill_phase(writer)
        self.check_after_kill(lazy)
        self.start_server(self.lazy(round_no + 1))  # a dirty image gets repaired on open
        self.verify_regions(round_no)
        if round_no == 1:
            self.verify_selftest()
        self.verify_durable()
        self.wait_fds(0, f"after the verification of round {round_no}")
        self.stats["rounds"] += 1

    def run(self):
        budget = self.args.minutes * 60
        t0 = time.monotonic()
        self.start_server(self.lazy(1))
        self.verify_durable()  # a first client session: all zeros so far
        self.wait_fds(0, "after a first client")
        round_time = 0
        while (self.stats["rounds"] < self.args.min_rounds
               or time.monotonic() - t0 + round_time < budget):
            start = time.monotonic()
            self.round(self.stats["rounds"] + 1, lazy=self.server.lazy)
            round_time = time.monotonic() - start
        self.server.stop()
        final = ci.qemu_img_check(self.image)
        if final.rc not in (0, 3) or final.errors or ci.qcow2_incompatible_bits(self.image):
            raise AssertionError(f"not clean after the clean stop\n{final}")
        self.report(final, time.monotonic() - t0)

    def report(self, final, elapsed):
        s = self.stats
        with open(self.server.log, errors="replace") as f:
            log = f.read()
        if log.count(REPAIR_LINE) != s["dirty_after_kill"] and not qs.is_reference():
            raise AssertionError(f"{s['dirty_after_kill']} kills left the dirty bit, but "
                                 f"{log.count(REPAIR_LINE)} opens repaired")
        figure("soak_rounds", s["rounds"])
        figure("soak_seconds", round(elapsed))
        figure("soak_server_kills", s["server_kills"])
        figure("soak_client_kills", s["client_kills"])
        figure("soak_clients_cut_mid_request", sum(log.count(c) for c in CUT_LINES))
        figure("soak_gib_written_acked_flushed", round(s["bytes_written"] / (1 << 30), 2))
        figure("soak_gib_verified", round(s["bytes_verified"] / (1 << 30), 2))
        figure("soak_verifies", s["verifies"])
        figure("soak_verify_errors", 0)  # any error has failed the run before this point
        figure("soak_dirty_after_kill", s["dirty_after_kill"])
        figure("soak_repairs_on_open", log.count(REPAIR_LINE))
        figure("soak_leaks_max_after_kill", s["leaks_max"])
        figure("soak_leaks_final", final.leaks)
        figure("soak_server_fds_idle", self.other_fds + self.socks0)
        figure("soak_server_fds_peak", s["fd_peak"])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("binary", nargs="?", help="the server (default: $QNBD)")
    p.add_argument("--minutes", type=float, default=1.0)
    p.add_argument("--min-rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=int(os.environ.get("QNBD_SOAK_SEED", "11")))
    args = p.parse_args()
    if args.binary:
        os.environ["QNBD"] = os.path.abspath(args.binary)
    with tempfile.TemporaryDirectory(prefix="qnbd-soak-", dir=ci.scratch_root()) as tmp:
        soak = Soak(args, tmp)
        try:
            soak.run()
        except BaseException:
            sys.stderr.write(soak.server.log_tail() + "\n")
            soak.server.kill(check=False)
            raise
    print("PASS churn soak")


if __name__ == "__main__":
    main()
