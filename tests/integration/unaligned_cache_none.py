#!/usr/bin/python3
"""Byte-granular requests under --cache none (O_DIRECT), as qemu-nbd serves
them: qnbd advertises a minimum block size of 1 and does the read-modify-
write itself. The same random unaligned reads and writes (some pipelined,
several sharing one 512-byte block) go to qnbd --cache none serving a raw
file and a qcow2 image, and to qemu-nbd serving an identical raw file;
every read and the final contents must match, and the qcow2 image must pass
qemu-img check. Seed: $QNBD_SEED (default 1)."""
import os
import random
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbd  # noqa: E402
import qnbd_harness as h  # noqa: E402

SIZE = 8 * h.MiB
OPS = 400


def random_range(rng):
    length = rng.choice([1, 7, 511, 513, 4095, 4097, rng.randint(1, 200 * 1024)])
    return rng.randrange(0, SIZE - length + 1), length


def pipelined_writes(handles, rng):
    """Writes to neighbouring byte ranges inside a few blocks, all in flight
    at once: each one's read-modify-write must keep the others' bytes."""
    base = rng.randrange(0, SIZE // 512 - 4) * 512
    pieces = [(base + i * 100 + rng.randrange(0, 20), rng.randrange(1, 80)) for i in range(20)]
    for handle in handles:
        cookies = [handle.aio_pwrite(nbd.Buffer.from_bytearray(
            bytearray((off + k) % 251 for k in range(n))), off) for off, n in pieces]
        while handle.aio_in_flight() > 0:
            handle.poll(-1)
        for c in cookies:
            assert handle.aio_command_completed(c), "a pipelined write failed"


def check_image(fmt, tmp, rng_seed):
    rng = random.Random(rng_seed)
    base_raw = h.make_sparse_image(os.path.join(tmp, "base.raw"), SIZE,
                                   [(0, 2 * h.MiB), (5 * h.MiB + 512, h.MiB)])
    ours_dir, ref_dir = os.path.join(tmp, f"ours-{fmt}"), os.path.join(tmp, f"ref-{fmt}")
    os.mkdir(ours_dir)
    os.mkdir(ref_dir)
    ours_img = os.path.join(ours_dir, f"disk.{fmt}")
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", fmt, base_raw, ours_img], check=True)
    ref_img = os.path.join(ref_dir, "disk.raw")
    subprocess.run(["cp", base_raw, ref_img], check=True)
    ours = h.Server(ours_dir, ours_img, fmt=fmt, extra=["--cache", "none"])
    reference = h.Server(ref_dir, ref_img, binary="qemu-nbd")
    with ours, reference:
        a, b = nbd.NBD(), nbd.NBD()
        a.connect_uri(ours.unix_uri())
        b.connect_uri(reference.unix_uri())
        assert a.get_block_size(nbd.SIZE_MINIMUM) == 1, "minimum block size is not 1"
        for i in range(OPS):
            if i % 50 == 25:
                pipelined_writes((a, b), rng)
                continue
            offset, length = random_range(rng)
            if rng.random() < 0.5:
                payload = rng.randbytes(length)
                a.pwrite(payload, offset)
                b.pwrite(payload, offset)
            else:
                assert a.pread(length, offset) == b.pread(length, offset), \
                    f"{fmt} op {i}: read of {length} at {offset} differs"
        a.flush()
        for off in range(0, SIZE, h.MiB):
            assert a.pread(h.MiB, off) == b.pread(h.MiB, off), f"{fmt}: final read at {off}"
        a.shutdown()
        b.shutdown()
    if fmt == "qcow2":
        subprocess.run(["qemu-img", "check", "-q", ours_img], check=True)


def test_unaligned_raw_cache_none(tmp):
    check_image("raw", tmp, int(os.environ.get("QNBD_SEED", "1")))


def test_unaligned_qcow2_cache_none(tmp):
    check_image("qcow2", tmp, int(os.environ.get("QNBD_SEED", "1")) + 1)


if __name__ == "__main__":
    h.main([test_unaligned_raw_cache_none, test_unaligned_qcow2_cache_none])
