#!/usr/bin/python3
"""A full-then-incremental backup over NBD, as backup tools do it: a full
copy (nbdcopy) when the bitmap is added, then writes through qnbd, then a
copy of only the ranges qemu:dirty-bitmap:NAME reports dirty onto the full
copy. The result equals the disk byte for byte, and only dirty ranges were
read."""
import hashlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbd  # noqa: E402
import qnbd_harness as h  # noqa: E402

M = 1024 * 1024
SIZE = 64 * M
CONTEXT = "qemu:dirty-bitmap:b0"


def dirty_ranges(c):
    """[(offset, length)] dirty in CONTEXT, by block status over the disk."""
    out, off = [], 0
    while off < SIZE:
        got = []

        def cb(metacontext, offset, entries, err):
            if metacontext == CONTEXT:
                got.extend(entries)

        c.block_status(SIZE - off, off, cb)
        assert got, off
        for i in range(0, len(got), 2):
            length, flags = got[i], got[i + 1]
            if flags & 1:
                if out and out[-1][0] + out[-1][1] == off:
                    out[-1] = (out[-1][0], out[-1][1] + length)
                else:
                    out.append((off, length))
            off += length
    return out


def incremental(uri, target):
    c = nbd.NBD()
    c.add_meta_context(CONTEXT)
    c.connect_uri(uri)
    copied = 0
    ranges = dirty_ranges(c)
    with open(target, "r+b") as f:
        for off, length in ranges:
            for pos in range(off, off + length, 4 * M):
                n = min(4 * M, off + length - pos)
                f.seek(pos)
                f.write(c.pread(n, pos))
                copied += n
    c.shutdown()
    return ranges, copied


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_full_then_incremental(tmp):
    disk = os.path.join(tmp, "disk.qcow2")
    h.run(["qemu-img", "create", "-f", "qcow2", disk, str(SIZE)])
    h.run(["qemu-io", "-f", "qcow2", "-c", "write -P 1 0 8M", "-c", "write -P 2 32M 4M", disk])
    h.run(["qemu-img", "bitmap", "--add", disk, "b0"])
    full = os.path.join(tmp, "backup.raw")
    with h.Server(tmp, disk, fmt="qcow2", read_only=True) as srv:
        h.run(["nbdcopy", srv.uri(), full])
    with h.Server(tmp, disk, fmt="qcow2") as srv:
        c = nbd.NBD()
        c.connect_uri(srv.uri())
        c.pwrite(b"\x05" * 4096, 3 * M + 512)
        c.pwrite(b"\x06" * (M + 4096), 40 * M)
        c.zero(2 * M, 33 * M)
        c.trim(M, 6 * M)
        c.pwrite(b"\x07" * 512, SIZE - 512)
        c.flush()
        c.shutdown()
    with h.Server(tmp, disk, fmt="qcow2", read_only=True, extra=["-B", "b0"]) as srv:
        ranges, copied = incremental(srv.uri(), full)
    assert ranges and copied <= 6 * M, (ranges, copied)
    current = os.path.join(tmp, "current.raw")
    h.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", disk, current])
    assert digest(full) == digest(current), ranges
    h.run(["qemu-img", "check", disk])


if __name__ == "__main__":
    h.main([test_full_then_incremental])
