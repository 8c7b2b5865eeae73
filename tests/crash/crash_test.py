#!/usr/bin/python3
"""Crash-consistency test: for many seeds, run a write workload through NBD,
SIGKILL the server at a random completed-reply count, then check the image
offline with the qemu tools and online through a restarted server.

    QNBD=build/server/qnbd /usr/bin/python3 crash_test.py --variant qcow2-lazy
    ... --seed 1234 --iterations 1     # reproduce one kill point

Iterations per variant: --iterations, else $QNBD_CRASH_ITERATIONS, else 11
(6 with --sigterm).
Base seed: --seed, else $QNBD_CRASH_SEED, else fixed per variant (CI is
deterministic in its choices; the server's timing is not).
Failing images are kept under $QNBD_CRASH_KEEP (default /tmp/qnbd-crash-failures).
"""
import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import zlib

import nbd

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from qnbd_server import Server, is_reference  # noqa: E402

import crash_images as ci
from crash_model import (BLOCK, ImageModel, Op, describe, describe_value, render,
                         render_image, stamp)
from crash_workload import HOT_CLUSTERS, Workload

MAX_REPORTED = 12
KEEP_FAILURES = 3


def compare(data, model, durable, where):
    """Failures (strings) where `data` holds something the model does not allow."""
    failures = []
    if len(data) != ci.VIRTUAL_SIZE:
        return [f"{where}: read {len(data)} bytes, expected {ci.VIRTUAL_SIZE}"]
    touched = model.by_block
    initial = render_image(model.initial)
    for b in range(ci.BLOCKS):
        start, end = b * BLOCK, (b + 1) * BLOCK
        got = data[start:end]
        if b not in touched:
            if got != initial[start:end]:
                failures.append(f"{where}: untouched block {b} holds {describe(got)}, "
                                f"expected {describe_value(model.initial[b])}")
        else:
            allowed, floor = model.allowed(b, durable)
            if not any(got == render(v) for v in allowed):
                failures.append(
                    f"{where}: block {b} (offset {b * BLOCK:#x}) holds {describe(got)}; allowed "
                    f"{sorted(describe_value(v) for v in allowed)}; last durable op: {floor}; "
                    f"ops on it: {touched[b]}")
        if len(failures) >= MAX_REPORTED:
            failures.append(f"{where}: (stopped after {MAX_REPORTED} bad blocks)")
            break
    return failures


def read_nbd(server):
    h = nbd.NBD()
    h.connect_unix(server.sock)
    size = h.get_size()
    chunk = 4 * ci.MiB
    data = b"".join(h.pread(min(chunk, size - off), off) for off in range(0, size, chunk))
    h.shutdown()
    return data


class Iteration:
    def __init__(self, args, template, seed, workdir):
        self.args, self.template, self.seed, self.workdir = args, template, seed, workdir
        self.variant = template.variant
        self.rng = random.Random(seed)
        self.image = template.copy_to(os.path.join(workdir, "image." + self.variant.fmt))
        self.model = ImageModel(seed, template.initial, template.backing)
        self.server = Server(workdir, self.image, fmt=self.variant.fmt, lazy=self.variant.lazy)
        self.notes = []
        self.dirty_after_kill = False
        self.crash_leaks = 0

    def fail_if(self, failures):
        if failures:
            raise AssertionError("\n".join(failures))

    def run(self):
        self.crash()
        durable = self.model.durable_ops()
        if self.args.sigterm:  # a clean stop keeps every acknowledged request
            durable = {o.index for o in self.model.ops if o.acked is not None}
        self.offline_check(durable)
        self.restart_and_verify(durable)
        return self

    def crash(self):
        a, rng = self.args, self.rng
        nops = rng.randint(a.ops_min, a.ops_max)
        depth = rng.choice([1, 4, 8, 16, 32])
        kill_at = rng.randint(0, nops)
        over = 12288 if self.variant.backing else 4096
        hot = rng.randrange(0, ci.BLOCKS // ci.BLOCKS_PER_CLUSTER - HOT_CLUSTERS)
        conns = rng.choice([1, 1, 2])
        self.server.start()
        handles = [nbd.NBD()]
        handles[0].connect_unix(self.server.sock)
        if conns > 1 and handles[0].can_multi_conn():
            handles.append(nbd.NBD())
            handles[1].connect_unix(self.server.sock)
        stop = self.server.terminate if self.args.sigterm else self.server.kill
        w = Workload(handles, self.model, rng, nops, depth, kill_at, stop, hot, over)
        w.run()
        del handles
        if self.args.sigterm:
            self.server.stop()  # must have drained and exited 0
        acked = sum(o.acked is not None for o in self.model.ops)
        self.notes.append(f"conns={len(w.handles)} ops={len(self.model.ops)}/{nops} "
                          f"depth={depth} kill_at={kill_at} "
                          f"acked={acked} flush_every={w.flush_every} fua={w.fua_rate}")
        if w.read_mismatches:
            raise AssertionError("reads during the workload returned wrong data:\n"
                                 + "\n".join(w.read_mismatches[:MAX_REPORTED]))
        if w.errors_before_kill:
            raise AssertionError(f"error replies before the kill: {w.errors_before_kill[:5]}\n"
                                 + self.server.log_tail())

    def offline_check(self, durable):
        v = self.variant
        if v.fmt == "raw":
            with open(self.image, "rb") as f:
                self.fail_if(compare(f.read(), self.model, durable, "raw file after kill"))
            return
        bits = ci.qcow2_incompatible_bits(self.image)
        self.dirty_after_kill = bool(bits & ci.QCOW2_INCOMPAT_DIRTY)
        check = ci.qemu_img_check(self.image)
        self.notes.append(f"check={check.rc} dirty={bits & ci.QCOW2_INCOMPAT_DIRTY} "
                          f"leaks={check.leaks}")  # inside the file; see crash_leaks
        if bits & ci.QCOW2_INCOMPAT_CORRUPT:
            raise AssertionError(f"corrupt bit set after kill\n{check}")
        if self.args.sigterm and (check.rc != 0 or bits):
            raise AssertionError(f"not clean after SIGTERM during the workload "
                                 f"(incompatible bits {bits:#x})\n{check}")
        if v.lazy:
            bad = ci.unexpected_lazy_errors(check, 2 if v.snapshot else 1)
            if check.rc not in (0, 2, 3) or bad:
                raise AssertionError(f"lazy mode: damage beyond stale refcounts: {bad}\n{check}")
            if check.errors and not bits & ci.QCOW2_INCOMPAT_DIRTY:
                raise AssertionError(f"refcount errors but the dirty bit is clear\n{check}")
        else:
            if check.rc not in (0, 3) or check.errors:
                raise AssertionError(f"normal mode: corruption after kill\n{check}")
            if bits & ci.QCOW2_INCOMPAT_DIRTY:
                raise AssertionError("normal mode: dirty bit set")
        self.fail_if(compare(ci.read_image(self.image, "qcow2", self.workdir), self.model,
                             durable, "qemu-img convert after kill"))
        self.check_snapshot("after kill")
        self.crash_leaks = ci.leaks_including_past_eof(self.image, self.workdir)
        # Lazy mode: even seeds repair with qemu-img, odd ones leave the dirty
        # image to qnbd's repair on open. Normal mode: the leaks stay, and must
        # not grow during the clean session after the restart.
        if v.lazy and check.rc != 0 and (self.seed % 2 == 0 or is_reference()):
            if self.crash_leaks > check.leaks:
                # Let qemu-img see (and fix) the leaks past the end of the file.
                os.truncate(self.image, os.path.getsize(self.image) + ci.VIRTUAL_SIZE)
            fixed = ci.qemu_img_check(self.image, repair="all")
            after = ci.qemu_img_check(self.image)
            if after.rc != 0 or after.leaks:
                raise AssertionError(f"not clean after `qemu-img check -r`:\n{fixed}\n{after}")
            self.crash_leaks = 0
            self.notes.append("repaired-by=qemu-img")
        elif self.dirty_after_kill:
            self.notes.append("repaired-by=qnbd-open")

    def check_snapshot(self, when):
        if self.template.snapshot is None:
            return
        snap = ci.read_image(self.image, "qcow2", self.workdir, snapshot="s1")
        expect = ImageModel(0, self.template.snapshot, self.template.backing)
        self.fail_if(compare(snap, expect, set(), f"snapshot s1 {when}"))

    def restart_and_verify(self, durable):
        self.server.start()
        self.fail_if(compare(read_nbd(self.server), self.model, durable, "qnbd after restart"))
        durable = durable | self.write_after_restart()
        self.server.stop()
        if self.variant.fmt == "raw":
            return
        check = ci.qemu_img_check(self.image)
        if self.variant.lazy and (check.rc != 0 or check.leaks):
            why = ""
            if not self.dirty_after_kill:
                why = (" (the dirty bit was clear after the kill, so nothing repaired the"
                       " image: dirty-bit mode must set it before deferring refcounts)")
            raise AssertionError(f"lazy mode: not clean after restart and clean stop{why}\n"
                                 f"{check}")
        if check.rc not in (0, 3) or check.errors:
            raise AssertionError(f"corruption after restart and clean stop\n{check}")
        self.fail_if(compare(ci.read_image(self.image, "qcow2", self.workdir), self.model,
                             durable, "qemu-img convert after clean stop"))
        self.check_snapshot("after clean stop")
        if check.leaks > self.crash_leaks:
            raise AssertionError(f"the session after the restart leaked clusters although it "
                                 f"ended cleanly (leaks before it: {self.crash_leaks})\n{check}")

    def write_after_restart(self):
        """Allocate again after the crash (and any repair), then FLUSH: the new
        data must coexist with the old, so a leaked or stale-refcount cluster
        handed out twice shows up as overwritten data."""
        h = nbd.NBD()
        h.connect_unix(self.server.sock)
        base = len(self.model.ops) + 1000
        written = set()
        tick = max((o.acked or o.issued for o in self.model.ops), default=0) + 1
        for i in range(24):
            count = self.rng.randint(1, 8)
            first = self.rng.randrange(0, ci.BLOCKS - count)
            op = Op(base + i, "write", first, count, False)
            data = b"".join(render(stamp(self.seed, op.index, b))
                            for b in range(first, first + count))
            h.pwrite(data, first * BLOCK)
            op.issued, op.acked = tick, tick + 1
            tick += 2
            self.model.add(op)
            written.add(op.index)
        h.flush()
        flush = Op(base + 24, "flush", 0, 0, False)
        flush.issued, flush.acked = tick, tick + 1
        self.model.add(flush)
        h.shutdown()
        return written


def keep_backing_link(saved, seed, variant):
    """Point the kept image at the kept copy of its backing file."""
    image = os.path.join(saved, f"seed{seed}", "image." + variant.fmt)
    if variant.backing and os.path.exists(image):
        ci.run(["qemu-img", "rebase", "-u", "-f", "qcow2", "-F", "qcow2",
                "-b", os.path.join(saved, "backing.qcow2"), image], ok=(0, 1))


def variant_seed(name):
    return zlib.crc32(name.encode()) & 0xFFFF


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--variant", required=True, choices=sorted(ci.VARIANTS))
    p.add_argument("--iterations", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--ops-min", type=int, default=50)
    p.add_argument("--ops-max", type=int, default=250)
    p.add_argument("--sigterm", action="store_true",
                   help="stop with SIGTERM instead of SIGKILL: the server must drain,\n"
                        "exit 0 and leave a clean image with every acknowledged write")
    args = p.parse_args()
    if args.iterations is None:
        args.iterations = int(os.environ.get("QNBD_CRASH_ITERATIONS", 6 if args.sigterm else 11))
    variant = ci.VARIANTS[args.variant]
    base = args.seed if args.seed is not None else int(
        os.environ.get("QNBD_CRASH_SEED", variant_seed(variant.name) * 1000))
    keep = os.environ.get("QNBD_CRASH_KEEP", "/tmp/qnbd-crash-failures")
    failures = []
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"qnbd-crash-{variant.name}-",
                                     dir=ci.scratch_root()) as top:
        template = ci.Template(variant, top).prepare()
        for i in range(args.iterations):
            seed = base + i
            workdir = os.path.join(top, f"seed{seed}")
            os.mkdir(workdir)
            it = None
            try:
                it = Iteration(args, template, seed, workdir)
                it.run()
                print(f"ok   {variant.name} seed={seed} " + " ".join(it.notes), flush=True)
                shutil.rmtree(workdir)
            except (AssertionError, nbd.Error, OSError, subprocess.SubprocessError) as e:
                failures.append(seed)
                if it is not None and it.server.pid is not None:
                    it.server.kill()
                saved = os.path.join(keep, f"{variant.name}-seed{seed}")
                if len(failures) <= KEEP_FAILURES:  # images are big; seeds reproduce
                    shutil.rmtree(saved, ignore_errors=True)
                    shutil.copytree(top, saved,
                                    ignore=shutil.ignore_patterns("seed*", "nbd.sock"))
                    shutil.copytree(workdir, os.path.join(saved, f"seed{seed}"),
                                    ignore=shutil.ignore_patterns("nbd.sock"))
                    keep_backing_link(saved, seed, variant)
                else:
                    saved = "(not kept: only the first failures of a run are)"
                notes = " ".join(it.notes) if it else ""
                print(f"FAIL {variant.name} seed={seed} {notes}\n{e}\n"
                      f"  reproduce: QNBD={os.environ['QNBD']} /usr/bin/python3 {sys.argv[0]} "
                      f"--variant {variant.name} --seed {seed} --iterations 1 "
                      f"{'--sigterm ' if args.sigterm else ''}"
                      f"--ops-min {args.ops_min} --ops-max {args.ops_max}\n"
                      f"  kept: {saved}", flush=True)
    elapsed = time.monotonic() - start
    server = "qemu-nbd (reference)" if is_reference() else "qnbd"
    print(f"{variant.name}: {args.iterations - len(failures)}/{args.iterations} kill points "
          f"passed against {server} in {elapsed:.1f}s; failing seeds: {failures or 'none'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
