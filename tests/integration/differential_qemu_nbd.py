#!/usr/bin/python3
"""Differential test: the same random request stream (unaligned writes,
write-zeroes with and without NO_HOLE, FUA, flushes, reads) goes to qnbd and
to qemu-nbd serving identical raw files. Every read must match, and so must
the files at the end. TRIM is left out: its effect on later reads is
unspecified. Seed: $QNBD_SEED (default 1), printed for reproduction."""
import os
import random
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbd  # noqa: E402
import qnbd_harness as h  # noqa: E402

SIZE = 32 * h.MiB
OPS = 1500


def random_request(rng):
    kind = rng.choices(["write", "zero", "read", "flush"], weights=[45, 15, 35, 5])[0]
    if kind == "flush":
        return kind, 0, 0, 0
    length = rng.choice([1, 511, 512, 4096, 65536, 200 * 1024, rng.randint(1, 1024 * 1024)])
    offset = rng.randrange(0, SIZE - length + 1)
    if rng.random() < 0.5:
        offset -= offset % 512
    flags = 0
    if kind in ("write", "zero") and rng.random() < 0.2:
        flags |= nbd.CMD_FLAG_FUA
    if kind == "zero" and rng.random() < 0.5:
        flags |= nbd.CMD_FLAG_NO_HOLE
    return kind, offset, length, flags


def apply(handle, request, payload):
    kind, offset, length, flags = request
    if kind == "write":
        handle.pwrite(payload, offset, flags)
    elif kind == "zero":
        handle.zero(length, offset, flags)
    elif kind == "read":
        return handle.pread(length, offset)
    else:
        handle.flush()
    return None


def test_same_answers_as_qemu_nbd(tmp):
    seed = int(os.environ.get("QNBD_SEED", "1"))
    print(f"  seed {seed}")
    rng = random.Random(seed)
    ours_dir, ref_dir = os.path.join(tmp, "ours"), os.path.join(tmp, "ref")
    os.mkdir(ours_dir)
    os.mkdir(ref_dir)
    data = [(0, h.MiB), (5 * h.MiB + 512, 3 * h.MiB), (SIZE - 2 * h.MiB, 2 * h.MiB)]
    ours_img = h.make_sparse_image(os.path.join(ours_dir, "disk.raw"), SIZE, data)
    ref_img = h.make_sparse_image(os.path.join(ref_dir, "disk.raw"), SIZE, data)
    reference = h.Server(ref_dir, ref_img, binary="qemu-nbd")
    with h.Server(ours_dir, ours_img) as ours, reference as ref:
        a, b = nbd.NBD(), nbd.NBD()
        a.connect_uri(ours.unix_uri())
        b.connect_uri(ref.unix_uri())
        assert a.get_size() == b.get_size() == SIZE
        for i in range(OPS):
            request = random_request(rng)
            payload = rng.randbytes(request[2]) if request[0] == "write" else None
            got, want = apply(a, request, payload), apply(b, request, payload)
            assert got == want, f"op {i} {request}: qnbd and qemu-nbd disagree"
        for off in range(0, SIZE, 4 * h.MiB):
            assert a.pread(4 * h.MiB, off) == b.pread(4 * h.MiB, off), f"final read at {off}"
        a.shutdown()
        b.shutdown()
    assert h.sha256_file(ours_img) == h.sha256_file(ref_img), "the served files differ"
    subprocess.run(["cmp", ours_img, ref_img], check=True)


if __name__ == "__main__":
    h.main([test_same_answers_as_qemu_nbd])
