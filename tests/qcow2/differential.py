#!/usr/bin/python3
"""Differential test of the qcow2 engine against QEMU.

For a matrix of images made by qemu-img (cluster sizes 512 B..2 MiB, compat
0.10/1.1, refcount_bits 1/16/64, extended L2, lazy refcounts, compressed with
zlib and zstd, backing chains of depth 1-3 over raw and qcow2 bases, an
internal snapshot), filled with qemu-io patterns:

1. qnbd reads every byte as qemu does (`qemu-img compare` against a dump);
2. the same random write / write-zeroes / trim sequence applied by qnbd to
   one copy and by qemu-io to another gives identical contents, and
   `qemu-img check` finds no errors and no leaks in qnbd's copy;
3. the internal snapshot still reads as it did before the writes.

The engine is reached through tests/qcow2/qcow2-driver (QCOW2_DRIVER).
"""
import os
import random
import shutil
import subprocess
import sys
import tempfile

DRIVER = os.environ["QCOW2_DRIVER"]
SIZE = 8 << 20


def run(*args, stdin=None, check=True):
    p = subprocess.run(args, input=stdin, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({p.returncode}): {p.stderr}{p.stdout}")
    return p


def qemu_io(img, cmds, fmt="qcow2"):
    args = ["qemu-io", "-f", fmt]
    for c in cmds:
        args += ["-c", c]
    run(*args, img)


def fill_patterns(img, cluster, seed, fmt="qcow2", base=0x10):
    rnd = random.Random(seed)
    cmds = []
    for i in range(6):
        off = rnd.randrange(0, SIZE - 3 * cluster) // 512 * 512
        length = rnd.choice([512, cluster, 3 * cluster + 512, 70000 // 512 * 512])
        cmds.append(f"write -P {base + i} {off} {length}")
    if fmt == "qcow2":
        cmds.append(f"write -z {rnd.randrange(0, SIZE // cluster) * cluster} {cluster}")
    qemu_io(img, cmds, fmt)


def random_ops(cluster, seed, count=40):
    rnd = random.Random(seed)
    ops = []
    for _ in range(count):
        kind = rnd.choice(["write", "write", "write", "zero", "zerotrim", "trim"])
        if rnd.random() < 0.5:
            off = rnd.randrange(0, SIZE // cluster) * cluster
            length = cluster * rnd.randint(1, 3)
        else:
            off = rnd.randrange(0, SIZE - 1)
            length = rnd.randint(1, 3 * cluster)
        length = min(length, SIZE - off)
        ops.append((kind, off, length, rnd.randrange(1, 255)))
    return ops


def apply_qnbd(img, ops):
    script = []
    for kind, off, length, byte in ops:
        if kind == "write":
            script.append(f"write {off} {length} {byte}")
        elif kind == "zero":
            script.append(f"zero {off} {length}")
        elif kind == "zerotrim":
            script.append(f"zero {off} {length} trim")
        else:
            script.append(f"trim {off} {length}")
    script.append("flush")
    run(DRIVER, "ops", img, stdin="\n".join(script) + "\n")


def apply_qemu(img, ops):
    cmds = []
    for kind, off, length, byte in ops:
        if kind == "write":
            cmds.append(f"write -P {byte} {off} {length}")
        elif kind == "zero":
            cmds.append(f"write -z {off} {length}")
        elif kind == "zerotrim":
            cmds.append(f"write -z -u {off} {length}")
        else:
            cmds.append(f"discard {off} {length}")
    qemu_io(img, cmds)


def check_reads(img):
    dump = img + ".dump"
    run(DRIVER, "dump", img, dump)
    p = run("qemu-img", "compare", "-f", "raw", "-F", "qcow2", dump, img, check=False)
    os.unlink(dump)
    assert p.returncode == 0, f"{img}: qnbd reads differ from qemu: {p.stdout}{p.stderr}"


def check_clean(img):
    p = run("qemu-img", "check", img, check=False)
    assert p.returncode == 0, f"{img}: qemu-img check ({p.returncode}):\n{p.stdout}{p.stderr}"


def exercise(tmp, name, img, cluster, seed):
    """Reads, then the same writes by qnbd and by qemu, compared."""
    check_reads(img)
    ours, theirs = f"{tmp}/{name}.ours.qcow2", f"{tmp}/{name}.theirs.qcow2"
    shutil.copy(img, ours)
    shutil.copy(img, theirs)
    ops = random_ops(cluster, seed)
    apply_qnbd(ours, ops)
    apply_qemu(theirs, ops)
    p = run("qemu-img", "compare", ours, theirs, check=False)
    assert p.returncode == 0, f"{name}: contents differ after the same writes: {p.stdout}{p.stderr}"
    check_clean(ours)
    check_reads(ours)
    return ours


def create(path, cluster, opts="", backing=None, backing_fmt=None):
    o = f"cluster_size={cluster}" + (f",{opts}" if opts else "")
    args = ["qemu-img", "create", "-q", "-f", "qcow2", "-o", o]
    if backing:
        args += ["-b", backing, "-F", backing_fmt]
    run(*args, path, str(SIZE))


def matrix():
    cases = []
    for cluster in [512, 4096, 65536, 2 << 20]:
        for compat in ["0.10", "1.1"]:
            cases.append((f"c{cluster}-compat{compat}", cluster, f"compat={compat}"))
    for bits in [1, 16, 64]:
        cases.append((f"refbits{bits}", 4096, f"refcount_bits={bits}"))
        cases.append((f"refbits{bits}-small", 512, f"refcount_bits={bits}"))
    for cluster in [16384, 65536]:
        cases.append((f"extl2-{cluster}", cluster, "extended_l2=on"))
    cases.append(("lazy", 65536, "lazy_refcounts=on"))
    return cases


def test_plain(tmp, failures):
    for i, (name, cluster, opts) in enumerate(matrix()):
        img = f"{tmp}/{name}.qcow2"
        try:
            create(img, cluster, opts)
            fill_patterns(img, cluster, seed=i)
            exercise(tmp, name, img, cluster, seed=100 + i)
        except AssertionError as e:
            failures.append(f"{name}: {e}")


def test_compressed(tmp, failures):
    for ctype in ["zlib", "zstd"]:
        for cluster in [4096, 65536]:
            name = f"compressed-{ctype}-{cluster}"
            try:
                raw = f"{tmp}/{name}.raw"
                run("qemu-img", "create", "-q", "-f", "raw", raw, str(SIZE))
                fill_patterns(raw, cluster, seed=7, fmt="raw")
                img = f"{tmp}/{name}.qcow2"
                run("qemu-img", "convert", "-c", "-O", "qcow2", "-o",
                    f"cluster_size={cluster},compression_type={ctype}", raw, img)
                exercise(tmp, name, img, cluster, seed=8)
            except AssertionError as e:
                failures.append(f"{name}: {e}")


def test_backing_chains(tmp, failures):
    for base_fmt in ["raw", "qcow2"]:
        for depth in [1, 2, 3]:
            for compat in ["0.10", "1.1"]:
                name = f"chain-{base_fmt}-{depth}-{compat}"
                try:
                    d = f"{tmp}/{name}"
                    os.mkdir(d)
                    base = f"{d}/base.{base_fmt}"
                    if base_fmt == "raw":
                        run("qemu-img", "create", "-q", "-f", "raw", base, str(SIZE))
                    else:
                        create(base, 65536)
                    fill_patterns(base, 65536, seed=depth, fmt=base_fmt, base=0x40)
                    prev, prev_fmt = "base." + base_fmt, base_fmt  # relative names
                    for level in range(depth):
                        layer = f"{d}/layer{level}.qcow2"
                        create(layer, 4096 if level % 2 else 65536, f"compat={compat}",
                               prev, prev_fmt)
                        fill_patterns(layer, 4096, seed=10 * depth + level, base=0x60 + level)
                        prev, prev_fmt = f"layer{level}.qcow2", "qcow2"
                    top = f"{d}/layer{depth - 1}.qcow2"
                    # The copies live next to the chain so relative names resolve.
                    exercise(d, "top", top, 4096, seed=depth)
                except AssertionError as e:
                    failures.append(f"{name}: {e}")


def test_snapshot(tmp, failures):
    for cluster, opts in [(65536, ""), (4096, "compat=0.10"), (65536, "extended_l2=on")]:
        name = f"snapshot-{cluster}-{opts or 'v3'}"
        try:
            img = f"{tmp}/{name}.qcow2"
            create(img, cluster, opts)
            fill_patterns(img, cluster, seed=3)
            run("qemu-img", "snapshot", "-c", "snap1", img)
            before = f"{tmp}/{name}.before.raw"
            run("qemu-img", "convert", "-O", "raw", img, before)
            ours = exercise(tmp, name, img, cluster, seed=4)
            after = f"{tmp}/{name}.snap.raw"
            run("qemu-img", "convert", "-l", "snapshot.name=snap1", "-O", "raw", ours, after)
            p = run("cmp", before, after, check=False)
            assert p.returncode == 0, "internal snapshot changed by qnbd's writes"
        except AssertionError as e:
            failures.append(f"{name}: {e}")


def main():
    failures = []
    with tempfile.TemporaryDirectory(prefix="qnbd-qcow2-diff.") as tmp:
        for t in [test_plain, test_compressed, test_backing_chains, test_snapshot]:
            t(tmp, failures)
            print(f"{t.__name__}: {'ok' if not failures else 'FAILED so far'}", flush=True)
    for f in failures:
        print("FAIL", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
