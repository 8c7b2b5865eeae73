"""qnbd-img defrag on images written by qemu-io in random and reverse order,
with a backing file, compressed clusters, extended L2 (subclusters) and an
internal snapshot: the guest content (and the snapshot's) is identical
before and after (qemu-img compare), qemu-img check is clean, qemu-img map
shows data host-contiguous in guest order, qnbd-img info's layout figures
say so, and an image whose guest trimmed half its data shrinks by about
that much."""
import json
import os
import random
import shutil

from imgtest import check, check_eq, cleanup, finish, qemu_img, qnbd, run, tmpdir

WORK = tmpdir()
KiB, MiB = 1024, 1024 * 1024


def path(name):
    return os.path.join(WORK, name)


def qemu_io_script(img, cmds, fmt="qcow2"):
    """Many qemu-io commands in one process (one -c each would be slow)."""
    rc, out, err = run("qemu-io", "-f", fmt, img, input="\n".join(cmds) + "\n")
    check("failed" not in out + err, f"qemu-io on {os.path.basename(img)}: {out[-200:]}{err[-200:]}")


def layout(img):
    return json.loads(qnbd("info", "--output=json", img)[1])["qnbd-layout"]


def data_breaks(img):
    """Guest-adjacent data extents of qemu-img map whose host offsets are not adjacent."""
    extents = json.loads(qemu_img("map", "--output=json", img)[1])
    breaks, prev = 0, None
    for e in extents:
        if not e["data"] or "offset" not in e or e["depth"] != 0:
            prev = None
            continue
        if prev and prev["start"] + prev["length"] == e["start"] and \
                prev["offset"] + prev["length"] != e["offset"]:
            breaks += 1
        prev = e
    return breaks


def defrag_and_verify(name, img, snapshots=(), max_breaks=0):
    before = path(name + ".before")
    shutil.copy(img, before)
    for s in snapshots:
        run("qemu-img", "convert", "-l", f"snapshot.name={s}", "-O", "raw", before,
            path(f"{name}.{s}.raw"))
    qnbd("defrag", img)
    rc, out, err = qemu_img("check", img, ok=None)
    check_eq(rc, 0, f"{name}: qemu-img check after defrag ({out.strip()} {err.strip()})")
    rc, out, _ = qemu_img("compare", before, img, ok=None)
    check_eq(rc, 0, f"{name}: content identical ({out.strip()})")
    for s in snapshots:
        run("qemu-img", "convert", "-l", f"snapshot.name={s}", "-O", "raw", img,
            path(f"{name}.{s}.after.raw"))
        rc, out, _ = qemu_img("compare", "-f", "raw", "-F", "raw", path(f"{name}.{s}.raw"),
                              path(f"{name}.{s}.after.raw"), ok=None)
        check_eq(rc, 0, f"{name}: snapshot {s} identical ({out.strip()})")
    breaks = data_breaks(img)
    check(breaks <= max_breaks, f"{name}: qemu-img map shows {breaks} breaks > {max_breaks}")
    return before


def shuffled(n, seed):
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def main():
    # Random and reverse order, 64 KiB clusters.
    for name, order in (("random", shuffled(256, 1)), ("reverse", list(range(255, -1, -1)))):
        img = path(name + ".qcow2")
        qemu_img("create", "-q", "-f", "qcow2", img, "16M")
        qemu_io_script(img, [f"write -P {i % 250 + 1} {i * 64}k 64k" for i in order])
        lay = layout(img)
        check(lay["contiguous-fraction"] < 0.5 and lay["breaks"] > 100,
              f"{name}: fragmented before: {lay}")
        check(data_breaks(img) > 100, f"{name}: qemu-img map shows fragmentation before")
        defrag_and_verify(name, img)
        lay = layout(img)
        check_eq((lay["contiguous-fraction"], lay["breaks"], lay["free-bytes"]), (1.0, 0, 0),
                 f"{name}: layout after")

    # A backing file; partial-cluster writes copied up from it, random order.
    base = path("base.raw")
    qemu_img("create", "-q", "-f", "raw", base, "8M")
    qemu_io_script(base, ["write -P 0x61 0 8M"], fmt="raw")
    img = path("overlay.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", img, "8M")
    qemu_io_script(img, [f"write -P {i % 200 + 2} {i * 64 + 16}k 4k" for i in shuffled(100, 2)])
    defrag_and_verify("backing", img)

    # Compressed clusters stay where they are; the rest moves around them.
    src = path("src.raw")
    qemu_img("create", "-q", "-f", "raw", src, "8M")
    qemu_io_script(src, ["write -P 0x5a 0 2M", "write -P 0xa5 4M 1M"], fmt="raw")
    img = path("compressed.qcow2")
    run("qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", src, img)
    qemu_io_script(img, [f"write -P {i % 200 + 3} {2048 + i * 64}k 64k"
                         for i in shuffled(32, 3)] + ["write -P 7 6M 1M"])
    defrag_and_verify("compressed", img, max_breaks=2)

    # Extended L2: subclusters partly allocated, over a backing file.
    img = path("extl2.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-o", "extended_l2=on", "-b", "base.raw", "-F",
             "raw", img, "8M")
    qemu_io_script(img, [f"write -P {i % 200 + 4} {i * 64 + (i % 16) * 2}k 2k"
                         for i in shuffled(100, 4)] + ["write -z 200k 4k", "discard 1M 64k"])
    defrag_and_verify("extl2", img)

    # An internal snapshot: shared clusters stay, the snapshot reads the same.
    img = path("snap.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", img, "8M")
    qemu_io_script(img, [f"write -P {i % 200 + 5} {i * 64}k 64k" for i in shuffled(64, 5)])
    qemu_img("snapshot", "-c", "s1", img)
    qemu_io_script(img, [f"write -P {i % 200 + 6} {i * 64}k 64k" for i in shuffled(128, 6)])
    defrag_and_verify("snapshot", img, snapshots=("s1",), max_breaks=40)

    # Compaction: 32 MiB written, 16 MiB trimmed in random 1 MiB pieces.
    img = path("trimmed.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", img, "32M")
    qemu_io_script(img, ["write -P 0x33 0 32M"] +
                   [f"discard {i}M 1M" for i in sorted(shuffled(32, 7)[:16])])
    size = os.path.getsize(img)
    lay = layout(img)
    check(lay["free-bytes"] == 16 * MiB and lay["reclaimable-bytes"] == 16 * MiB,
          f"trimmed: info reports the trimmed space as reclaimable: {lay}")
    defrag_and_verify("trimmed", img)
    shrunk = size - os.path.getsize(img)
    check(16 * MiB - 64 * KiB <= shrunk <= 16 * MiB, f"trimmed: shrank by {shrunk} bytes")
    check_eq(layout(img)["reclaimable-bytes"], 0, "trimmed: nothing left to reclaim")

    # Refusals.
    rc, _, err = qnbd("defrag", src, ok=None)
    check(rc == 1 and "qcow2" in err, f"defrag of a raw image refused: {err.strip()}")
    rc, _, err = qnbd("defrag", path("missing.qcow2"), ok=None)
    check(rc == 1 and "Could not open" in err, f"defrag of a missing file fails: {err.strip()}")
    cleanup(WORK)
    finish()


main()
