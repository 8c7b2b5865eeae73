#!/usr/bin/python3
"""qnbd repairs images that *qemu* left dirty (lazy refcounts, then a crash).

For each seed: qemu-io writes stamped ranges into a lazy_refcounts=on image,
FLUSHes, writes more, and kills itself (`sigraise 9`, as qemu iotest 039
does). The image now has the dirty bit and refcounts lower than the
references. Required of qnbd:
- a read-write open repairs it (with and without --lazy-refcounts);
- everything qemu-io wrote before its FLUSH reads back, the rest is old or new;
- after more writes and a clean stop, `qemu-img check` is clean with no leaks,
  and the internal snapshot (if any) still holds its data.

    QNBD=build/server/qnbd /usr/bin/python3 dirty_repair_test.py --variant qcow2-lazy-snapshot
"""
import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile

import nbd

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from qnbd_server import Server, is_reference  # noqa: E402

import crash_images as ci
from crash_model import BLOCK, ImageModel, Op, render_range, stamp
from crash_test import compare, read_nbd, variant_seed

LAZY_VARIANTS = sorted(name for name, v in ci.VARIANTS.items() if v.lazy)


def qemu_io_crash(image, model, rng, workdir):
    """Stamped writes, FLUSH, more writes, SIGKILL; recorded in the model."""
    cmds, tick = [], 0
    n_before, n_after = rng.randint(5, 30), rng.randint(0, 20)
    for i in range(n_before + n_after + 1):
        if i == n_before:
            op = Op(len(model.ops), "flush", 0, 0, False)
            cmds += ["-c", "flush"]
        else:
            count = rng.randint(1, 16)
            first = rng.randrange(0, ci.BLOCKS - count)
            op = Op(len(model.ops), "write", first, count, False)
            src = os.path.join(workdir, f"w{op.index}")
            with open(src, "wb") as f:
                f.write(render_range(stamp(model.seed, op.index, b)
                                     for b in range(first, first + count)))
            cmds += ["-c", f"write -q -s {src} {first * BLOCK} {count * BLOCK}"]
        op.issued, op.acked = tick + 1, tick + 2
        tick += 2
        model.add(op)
    ci.run(["qemu-io", "-f", "qcow2"] + cmds + ["-c", "sigraise 9", image], ok=(-9, 137))
    return model.durable_ops()


def one_seed(template, seed, workdir, lazy_flag):
    rng = random.Random(seed)
    image = template.copy_to(os.path.join(workdir, "image.qcow2"))
    model = ImageModel(seed, template.initial, template.backing)
    durable = qemu_io_crash(image, model, rng, workdir)
    if not ci.qcow2_incompatible_bits(image) & ci.QCOW2_INCOMPAT_DIRTY:
        raise AssertionError("qemu left the image clean: the scenario did not happen")
    before = ci.qemu_img_check(image)
    server = Server(workdir, image, fmt="qcow2", lazy=lazy_flag).start()
    try:
        bad = compare(read_nbd(server), model, durable, "qnbd after repair on open")
        if bad:
            raise AssertionError("\n".join(bad))
        h = nbd.NBD()
        h.connect_unix(server.sock)
        if h.is_read_only():
            raise AssertionError("qnbd serves the dirty image read-only instead of repairing it\n"
                                 + server.log_tail())
        for _ in range(16):  # allocate after the repair: must not reuse live clusters
            count = rng.randint(1, 8)
            first = rng.randrange(0, ci.BLOCKS - count)
            op = Op(len(model.ops), "write", first, count, False)
            h.pwrite(render_range(stamp(seed, op.index, b) for b in range(first, first + count)),
                     first * BLOCK)
            model.add(op)
            durable.add(op.index)
        h.flush()
        h.shutdown()
        del h
        server.stop()
    finally:
        if server.pid is not None:
            server.kill()
    after = ci.qemu_img_check(image)
    if after.rc != 0 or after.leaks or ci.qcow2_incompatible_bits(image):
        raise AssertionError(f"not clean after qnbd's repair and a clean stop "
                             f"(before: exit {before.rc}, {len(before.errors)} errors)\n{after}"
                             + "\n" + server.log_tail())
    bad = compare(ci.read_image(image, "qcow2", workdir), model, durable, "qemu after stop")
    if template.snapshot is not None:
        snap = ci.read_image(image, "qcow2", workdir, snapshot="s1")
        bad += compare(snap, ImageModel(0, template.snapshot, template.backing), set(),
                       "snapshot s1")
    if bad:
        raise AssertionError("\n".join(bad))
    return f"before repair: exit {before.rc}, {len(before.errors)} errors, {before.leaks} leaks"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--variant", required=True, choices=LAZY_VARIANTS)
    p.add_argument("--iterations", type=int,
                   default=int(os.environ.get("QNBD_CRASH_ITERATIONS", "6")))
    p.add_argument("--seed", type=int, default=None)
    args = p.parse_args()
    if is_reference():
        sys.exit("qemu-nbd cannot run this test: its --fork start fails when it repairs")
    variant = ci.VARIANTS[args.variant]
    base = args.seed if args.seed is not None else variant_seed("dirty-" + variant.name) * 1000
    failures = []
    with tempfile.TemporaryDirectory(prefix=f"qnbd-dirty-{variant.name}-",
                                     dir=ci.scratch_root()) as top:
        template = ci.Template(variant, top).prepare()
        for i in range(args.iterations):
            seed = base + i
            workdir = os.path.join(top, f"seed{seed}")
            os.mkdir(workdir)
            lazy_flag = seed % 2 == 1
            try:
                note = one_seed(template, seed, workdir, lazy_flag)
                print(f"ok   {variant.name} seed={seed} lazy-flag={lazy_flag} {note}")
            except (AssertionError, nbd.Error, OSError, subprocess.SubprocessError) as e:
                failures.append(seed)
                print(f"FAIL {variant.name} seed={seed} lazy-flag={lazy_flag}\n{e}\n"
                      f"  reproduce: QNBD={os.environ['QNBD']} /usr/bin/python3 {sys.argv[0]} "
                      f"--variant {variant.name} --seed {seed} --iterations 1")
            shutil.rmtree(workdir)
    print(f"dirty repair {variant.name}: {args.iterations - len(failures)}/{args.iterations} "
          f"passed; failing seeds: {failures or 'none'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
