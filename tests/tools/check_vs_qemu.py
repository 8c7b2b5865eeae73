"""qnbd-img check against qemu-img check on the same images: clean ones,
leaking ones and ones corrupted by editing bytes (refcount too low or zero,
L2 entry past EOF, overlap into the L1 table, unaligned offsets, reserved
bits). Exit codes, counters and messages must agree, in check-only mode and
with -r leaks / -r all (each on its own copy); after qnbd-img check -r all,
qemu-img check must report what it reports after its own repair (clean
wherever qemu can repair, and also past-EOF entries, which qnbd-img turns
into zero clusters), and the guest data must equal qemu's repaired copy and,
where the corruption only touched refcounts, the copy taken before it."""
import json
import os
import shutil

from imgtest import (Qcow2, check, check_eq, check_json, cleanup, counts, finish, qemu_img,
                     qemu_io, qnbd, run, tmpdir)

WORK = tmpdir()


def base_image(name, *create_opts, snapshot=False):
    img = os.path.join(WORK, name)
    qemu_img("create", "-q", "-f", "qcow2", *create_opts, img, "8M")
    qemu_io(img, "write -P 0x11 0 192k", "write -P 0x22 1M 64k", "write -P 0x33 2M 64k",
            "write -P 0x44 3M 64k", "write -z 3M 64k", "discard 64k 64k",
            "write -P 0x55 5M 4k")
    if snapshot:
        qemu_img("snapshot", "-c", "snap", img)
        qemu_io(img, "write -P 0x66 1M 4k")
    return img


def s_clean(img, q):
    pass


def s_leak(img, q):
    # The cluster freed by the discard gets a refcount again.
    freed = os.path.getsize(img) // q.cluster_size
    os.truncate(img, (freed + 1) * q.cluster_size)
    q.set_refcount(freed, 1)
    q.set_refcount(q.host_offset(5 << 20) >> q.cluster_bits, 3)


def s_refcount_zero(img, q):
    q.set_refcount(q.host_offset(1 << 20) >> q.cluster_bits, 0)


def s_refcount_low(img, q):
    # Shared with the snapshot (refcount 2), on disk 1.
    q.set_refcount(q.host_offset(0) >> q.cluster_bits, 1)


def s_past_eof(img, q):
    pos = q.l2_entry_pos(2 << 20)
    e = q.read64(pos)
    beyond = (os.path.getsize(img) // q.cluster_size + 16) * q.cluster_size
    q.write64(pos, (e & ~0x00fffffffffffe00) | beyond)


def s_overlap_l1(img, q):
    pos = q.l2_entry_pos(1 << 20)
    q.write64(pos, (q.read64(pos) & ~0x00fffffffffffe00) | q.l1_offset)


def s_unaligned_data(img, q):
    pos = q.l2_entry_pos(0)
    q.write64(pos, q.read64(pos) + 0x200)


def s_unaligned_prealloc(img, q):
    # 3M was written, then zeroed without unmap: a preallocated zero cluster.
    pos = q.l2_entry_pos(3 << 20)
    check(q.read64(pos) & 1, "3M is a preallocated zero cluster")
    q.write64(pos, q.read64(pos) + 0x200)


def s_reserved_bits(img, q):
    pos = q.l2_entry_pos(5 << 20)
    q.write64(pos, q.read64(pos) | 0x2)


def s_qemu_leaks(img, q):
    # qemu's own way (iotest 026): ENOSPC on every L1 update while a write
    # allocates a new L2 table leaves leaked clusters behind.
    qemu_img("resize", "-q", img, "1G")
    conf = img + ".blkdebug"
    with open(conf, "w") as f:
        f.write('[inject-error]\nevent = "l1_update"\nerrno = "28"\nonce = "off"\n')
    run("qemu-io", "-c", "write -P 0x7e 600M 64k", f"blkdebug:{conf}:{img}", ok=None)
    rc, _, _ = qemu_img("check", img, ok=None)
    check_eq(rc, 3, "qemu-io with failing L1 updates leaked clusters")


def s_l1_copied(img, q):
    q.write64(q.l1_offset, q.read64(q.l1_offset) & ~(1 << 63))


def s_l1_reserved(img, q):
    q.write64(q.l1_offset, q.read64(q.l1_offset) | 0x100)


def s_double_reference(img, q):
    # Two guest clusters share one host cluster whose refcount says 1.
    pos = q.l2_entry_pos(2 << 20)
    q.write64(pos, (q.read64(pos) & ~0x00fffffffffffe00) | q.host_offset(1 << 20))


def s_refblock_outside(img, q):
    q.write64(q.reftable_offset + 8, (os.path.getsize(img) // q.cluster_size + 4) * q.cluster_size)


def s_refblock_unaligned(img, q):
    q.write64(q.reftable_offset, q.read64(q.reftable_offset) + 0x200)


def s_refblock_shared(img, q):
    # The second reftable entry points at the first refcount block too.
    q.write64(q.reftable_offset + 8, q.read64(q.reftable_offset))


def s_snapshot_l1_unaligned(img, q):
    table = q.read64(64)  # snapshots_offset
    q.write64(table, q.read64(table) + 0x200)


def s_snapshot_l1_too_large(img, q):
    table = q.read64(64)
    with open(img, "r+b") as f:
        f.seek(table + 8)
        f.write((0x1000000).to_bytes(4, "big"))


def s_no_reftable(img, q):
    # iotest 060: refcount_table_clusters = 0.
    with open(img, "r+b") as f:
        f.seek(56)
        f.write(b"\0\0\0\0")


def s_corrupt_bit(img, q):
    q.write64(72, q.read64(72) | 2)


# name, scenario, snapshot?, data after -r all must equal: "pristine" (the
# copy before the corruption), "qemu" (qemu's repaired copy) or None (the
# entry stays unreadable for both tools)
SCENARIOS = [
    ("clean", s_clean, False, "pristine"),
    ("clean-snapshot", s_clean, True, "pristine"),
    ("leak", s_leak, False, "pristine"),
    ("refcount-zero", s_refcount_zero, False, "pristine"),
    ("refcount-low", s_refcount_low, True, "pristine"),
    ("past-eof", s_past_eof, False, "qemu"),
    ("overlap-l1", s_overlap_l1, False, "qemu"),
    ("unaligned-data", s_unaligned_data, False, None),
    ("unaligned-prealloc", s_unaligned_prealloc, False, "pristine"),
    ("reserved-bits", s_reserved_bits, False, "qemu"),
    ("qemu-leaks", s_qemu_leaks, False, "pristine-prefix"),
    ("corrupt-bit", s_corrupt_bit, False, "pristine"),
    ("no-reftable", s_no_reftable, False, "pristine"),
    ("l1-copied", s_l1_copied, False, "pristine"),
    ("snapshot-l1-unaligned", s_snapshot_l1_unaligned, True, "qemu"),
    ("snapshot-l1-too-large", s_snapshot_l1_too_large, True, "qemu"),
    ("refblock-outside", s_refblock_outside, False, "pristine"),
    ("refblock-unaligned", s_refblock_unaligned, False, "ours-pristine"),
    ("refblock-shared", s_refblock_shared, False, "pristine"),
    ("l1-reserved", s_l1_reserved, False, "qemu"),
    ("double-reference", s_double_reference, False, "qemu"),
]


def messages(stderr):
    return sorted(l for l in stderr.splitlines()
                  if l and not l.startswith(("qemu-img:", "qnbd-img:")))


def copy(src, tag):
    dst = src + "." + tag
    shutil.copyfile(src, dst)
    return dst


def compare_modes(name, img):
    """Check-only and -r leaks / -r all on copies; returns the two -r all copies."""
    for mode in ([], ["-r", "leaks"], ["-r", "all"]):
        ours, theirs = copy(img, "ours" + "".join(mode)), copy(img, "qemu" + "".join(mode))
        rc1, d1, e1 = check_json("qnbd", ours, *mode)
        rc2, d2, e2 = check_json("qemu", theirs, *mode)
        label = f"{name} check {' '.join(mode) or '(no repair)'}"
        print(f"{label}: qnbd rc={rc1} qemu rc={rc2}", flush=True)
        if name.endswith("past-eof") and mode == ["-r", "all"]:
            check_eq(rc1, 0, label + ": qnbd-img repairs past-EOF entries")
            check_eq(rc2, 2, label + ": qemu-img leaves them")
        elif name == "refblock-unaligned" and mode == ["-r", "all"]:
            check_eq(rc1, 0, label + ": qnbd-img rebuilds the refcount structure")
            check_eq(rc2, 1, label + ": qemu-img's own overlap check stops its rebuild")
        else:
            check_eq(rc1, rc2, label + ": exit code")
            check_eq(counts(d1), counts(d2), label + ": counters")
            check_eq(messages(e1), messages(e2), label + ": messages")
        if mode == ["-r", "all"]:
            return ours, theirs


# Image formats the refcount scenarios also run on.
FORMATS = [
    ("v2-512", ["-o", "compat=0.10,cluster_size=512"]),
    ("rc1-4k", ["-o", "refcount_bits=1,cluster_size=4k"]),
    ("rc64-2M", ["-o", "refcount_bits=64,cluster_size=2M"]),
    ("rc8-extl2", ["-o", "refcount_bits=8,extended_l2=on,cluster_size=32k"]),
]
FORMAT_SCENARIOS = ["clean", "leak", "refcount-zero", "past-eof"]


def compressed_image(name):
    """An image made by qemu-img convert -c: compressed clusters share hosts."""
    src = os.path.join(WORK, name + ".raw")
    qemu_img("create", "-q", "-f", "raw", src, "8M")
    qemu_io(src, "write -P 0x11 0 1M", "write -P 0x22 5M 64k", fmt="raw")
    img = os.path.join(WORK, name)
    qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", src, img)
    return img


def run_scenario(name, img, scenario, same_data):
    pristine = copy(img, "pristine")
    scenario(img, Qcow2(img))
    ours, theirs = compare_modes(name, img)
    rc_after, _, _ = qemu_img("check", ours, ok=None)
    rc_qemu_after, _, _ = qemu_img("check", theirs, ok=None)
    if rc_after == 0 and Qcow2(ours).version >= 3:
        info = json.loads(qemu_img("info", "--output=json", ours)[1])
        check(not info["format-specific"]["data"]["corrupt"] and not info["dirty-flag"],
              f"{name}: corrupt and dirty bits clear after a successful -r all")
    expected = 0 if name.endswith("past-eof") or name == "refblock-unaligned" else rc_qemu_after
    check_eq(rc_after, expected, f"{name}: qemu-img check after qnbd-img check -r all")
    if same_data is None:
        return
    if same_data == "ours-pristine":  # qemu could not repair: compare with the original only
        rc, out, err = qemu_img("compare", pristine, ours, ok=None)
        check_eq(rc, 0, f"{name}: data unchanged by corruption + repair ({out}{err})")
        return
    rc, out, err = qemu_img("compare", ours, theirs, ok=None)
    check_eq(rc, 0, f"{name}: data after qnbd-img -r all == after qemu-img -r all ({out}{err})")
    if same_data.startswith("pristine"):
        # (a resized image compares equal if the new area reads as zeros)
        rc, out, err = qemu_img("compare", pristine, ours, ok=None)
        check_eq(rc, 0, f"{name}: data unchanged by corruption + repair ({out}{err})")


def fuzz_regressions():
    """The fuzz_qcow2_check reproducers (L1 table, refcount table or L2 table
    beyond EOF; the rebuild used to land on them and still report success):
    qnbd-img check -r all either fails or leaves an image qemu-img finds
    clean, and the active L1 table (zeros beyond EOF) is not overwritten."""
    corpus = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fuzz", "corpus",
                          "fuzz_qcow2_check")
    for name in ("regress-repair-still-broken", "regress-rebuild-over-l2"):
        img = os.path.join(WORK, name + ".qcow2")
        shutil.copyfile(os.path.join(corpus, name), img)
        q = Qcow2(img)
        rc, _, err = qnbd("check", "-r", "all", img, ok=None)
        rc_q, _, _ = qemu_img("check", img, ok=None)
        print(f"{name}: qnbd-img check -r all rc={rc}, then qemu-img check rc={rc_q}", flush=True)
        if rc == 0:
            check_eq(rc_q, 0, f"{name}: qemu-img check after a successful qnbd-img -r all")
        else:
            check(rc in (1, 2) and ("qnbd-img:" in err or "ERROR" in err),
                  f"{name}: a failed repair says why ({err.strip()[-200:]})")
        with open(img, "rb") as f:
            f.seek(q.l1_offset)
            l1 = f.read(q.l1_size * 8)
        check_eq(l1.strip(b"\0"), b"", f"{name}: the L1 table (zeros beyond EOF) is intact")
        os.remove(img)  # may be a sparse multi-TiB file after a grown refcount block


def main():
    for fmt_name, opts in FORMATS:
        for name, scenario, snap, same_data in SCENARIOS:
            if name in FORMAT_SCENARIOS:
                img = base_image(f"{fmt_name}-{name}.qcow2", *opts)
                run_scenario(f"{fmt_name}-{name}", img, scenario, same_data)
    # Persistent dirty bitmaps: their directory, tables and data clusters are
    # referenced too, and a rebuild must not overwrite them.
    for name, scenario in (("bitmaps-clean", s_clean), ("bitmaps-refcount-zero", s_refcount_zero)):
        img = base_image(name + ".qcow2")
        qemu_img("bitmap", "--add", img, "b0")
        qemu_img("bitmap", "--add", "-g", "4096", img, "b1")
        qemu_io(img, "write -P 0x3a 6M 256k")
        run_scenario(name, img, scenario, "pristine")
        rc, out, _ = qemu_img("info", "--output=json", img + ".ours-rall", ok=None)
        bitmaps = json.loads(out)["format-specific"]["data"].get("bitmaps", [])
        check_eq(sorted(b["name"] for b in bitmaps), ["b0", "b1"], f"{name}: bitmaps survive")
    img = compressed_image("compressed.qcow2")
    run_scenario("compressed-clean", img, s_clean, "pristine")
    img = compressed_image("compressed-leak.qcow2")
    run_scenario("compressed-refcount-zero", img,
                 lambda i, q: q.set_refcount((q.read64(q.l2_entry_pos(0)) & ((1 << 54) - 1)) >> 16, 0),
                 "pristine")
    for name, scenario, snap, same_data in SCENARIOS:
        img = base_image(name + ".qcow2", snapshot=snap)
        run_scenario(name, img, scenario, same_data)
    fuzz_regressions()
    cleanup(WORK)
    finish()


main()
