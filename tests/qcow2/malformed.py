#!/usr/bin/python3
"""Malformed and hostile qcow2 images: a clear one-line error, never a crash.

Each case edits bytes of an image made by qemu-img, then opens it with the
engine (tests/qcow2/qcow2-driver) and checks the exit status and message.
"""
import os
import resource
import struct
import subprocess
import sys
import tempfile

DRIVER = os.environ["QCOW2_DRIVER"]


def run(*args, stdin=None):
    return subprocess.run(args, input=stdin, capture_output=True, text=True)


def make(path, opts="cluster_size=65536", size="4M", backing=None):
    args = ["qemu-img", "create", "-q", "-f", "qcow2", "-o", opts]
    if backing:
        args += ["-b", backing, "-F", "qcow2"]
    assert run(*args, path, size).returncode == 0
    assert run("qemu-io", "-f", "qcow2", "-c", "write -P 0x33 0 128k", path).returncode == 0


def poke(path, offset, fmt, value):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value))


def peek(path, offset, fmt):
    with open(path, "rb") as f:
        f.seek(offset)
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]


def expect_open_error(path, needle, failures, name):
    p = run(DRIVER, "open", path)
    if p.returncode < 0 or p.returncode not in (2,):
        failures.append(f"{name}: exit {p.returncode}, stderr {p.stderr!r}")
    elif needle not in p.stderr or len(p.stderr.strip().splitlines()) != 1:
        failures.append(f"{name}: expected one line with {needle!r}, got {p.stderr!r}")


def expect_io_error(path, failures, name, needle="corrupt"):
    """Opens fine, but reading the damaged part fails cleanly."""
    p = run(DRIVER, "dump", path, path + ".dump")
    if p.returncode != 1 or needle not in p.stderr:
        failures.append(f"{name}: expected a clean read error, exit {p.returncode} {p.stderr!r}")


def header_cases(tmp, failures):
    cases = [
        ("bad-magic", 0, ">I", 0x12345678, "not a qcow2 image"),
        ("version-4", 4, ">I", 4, "unsupported qcow2 version 4"),
        ("cluster-bits-30", 20, ">I", 30, "unsupported cluster size"),
        ("incompat-bit-5", 72, ">Q", 1 << 5, "unsupported incompatible feature bit 5 (unknown)"),
        ("data-file-bit", 72, ">Q", 1 << 2, "external data file"),
        ("refcount-order-7", 96, ">I", 7, "reference count entry width too large"),
        ("header-length-100", 100, ">I", 100, "qcow2 header too short"),
        ("l1-size-huge", 36, ">I", 0x7fffffff, "active L1 table too large"),
        ("l1-too-small", 36, ">I", 0, "L1 table is too small"),
        ("l1-unaligned", 40, ">Q", 0x30001, "active L1 table offset invalid"),
        ("l1-beyond-eof", 40, ">Q", 1 << 40, "active L1 table lies beyond the end of the file"),
        ("l1-over-header", 40, ">Q", 0, "active L1 table overlaps the qcow2 header"),
        ("reftable-zero", 56, ">I", 0, "does not contain a reference count table"),
        ("reftable-huge", 56, ">I", 0x10000000, "reference count table too large"),
        ("reftable-beyond-eof", 48, ">Q", 1 << 40, "reference count table lies beyond the end"),
        ("snapshots-huge", 60, ">I", 1 << 20, "snapshot table too large"),
        ("snapshots-beyond-eof", 64, ">Q", 1 << 40, "snapshot table"),
        ("backing-offset-huge", 8, ">Q", 1 << 20, "invalid backing file offset"),
        ("size-huge", 24, ">Q", 1 << 63, "image is too big"),
    ]
    for name, off, fmt, value, needle in cases:
        img = f"{tmp}/{name}.qcow2"
        make(img)
        if name == "snapshots-beyond-eof":
            poke(img, 60, ">I", 1)
        poke(img, off, fmt, value)
        expect_open_error(img, needle, failures, name)


def backing_cases(tmp, failures):
    # Protocol and json: names are never followed.
    for i, bad in enumerate(["json:{\"file.filename\":\"/etc/passwd\"}", "nbd:localhost:10809",
                             "file:base.qcow2"]):
        img = f"{tmp}/proto{i}.qcow2"
        assert run("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", bad, "-F", "raw",
                   img, "4M").returncode == 0
        expect_open_error(img, "is not a plain file path", failures, f"protocol-{i}")
    # A loop: a -> b -> a.
    a, b = f"{tmp}/loop-a.qcow2", f"{tmp}/loop-b.qcow2"
    make(a)
    make(b, backing="loop-a.qcow2")
    assert run("qemu-img", "rebase", "-u", "-f", "qcow2", "-b", "loop-b.qcow2", "-F", "qcow2",
               a).returncode == 0
    expect_open_error(b, "backing chain loop", failures, "loop")
    missing = f"{tmp}/missing.qcow2"
    assert run("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "nowhere.qcow2", "-F",
               "qcow2", missing, "4M").returncode == 0
    expect_open_error(missing, "No such file", failures, "missing-backing")
    # A backing name longer than QEMU's 1023 bytes.
    img = f"{tmp}/backing-long.qcow2"
    make(img)
    poke(img, 8, ">Q", 512)
    poke(img, 16, ">I", 2000)
    expect_open_error(img, "backing file name too long", failures, "backing-too-long")


def table_cases(tmp, failures):
    # Damaged L1/L2 entries: the image opens, the damaged reads fail cleanly.
    img = f"{tmp}/l1-unaligned-entry.qcow2"
    make(img)
    l1 = peek(img, 40, ">Q")
    poke(img, l1, ">Q", peek(img, l1, ">Q") | 0x100)
    expect_io_error(img, failures, "l1-entry-unaligned")
    img = f"{tmp}/l2-reserved.qcow2"
    make(img)
    l2 = peek(img, peek(img, 40, ">Q"), ">Q") & 0x00fffffffffffe00
    poke(img, l2, ">Q", peek(img, l2, ">Q") | 0x2)
    expect_io_error(img, failures, "l2-entry-reserved-bits")
    # Refcounts that call the L1 table free: allocating must not overwrite it
    # (overlap check); the write fails and the image is marked corrupt.
    img = f"{tmp}/alloc-over-l1.qcow2"
    make(img)
    refblock = peek(img, peek(img, 48, ">Q"), ">Q")
    poke(img, refblock + 2 * (peek(img, 40, ">Q") >> 16), ">H", 0)
    p = run(DRIVER, "ops", img, stdin="write 2097152 4096 5\nflush\n")
    if p.returncode != 1 or "corrupt" not in p.stderr:
        failures.append(f"alloc-over-l1: expected a corrupt-image error: {p.returncode} {p.stderr!r}")
    if not peek(img, 72, ">Q") & 2:
        failures.append("alloc-over-l1: corrupt bit not set")
    p = run("qemu-io", "-f", "qcow2", "-r", "-c", "read -P 0x33 0 128k", img)
    if "Pattern verification failed" in p.stdout or p.returncode != 0:
        failures.append(f"alloc-over-l1: data damaged: {p.stdout}{p.stderr}")


def l2_entry_offset(img, guest_cluster=0):
    l2 = peek(img, peek(img, 40, ">Q"), ">Q") & 0x00fffffffffffe00
    return l2 + 8 * guest_cluster


def refcount_offset(img, host):
    refblock = peek(img, peek(img, 48, ">Q"), ">Q")
    return refblock + 2 * (host >> 16)


def expect_write_refused(img, failures, name, ops="write 0 4096 5\nflush\n"):
    """The write fails, the image is marked corrupt, the first 64 KiB still
    read as they were (qemu-io) and the header is intact."""
    p = run(DRIVER, "ops", img, stdin=ops)
    if p.returncode != 1 or "corrupt" not in p.stderr:
        failures.append(f"{name}: expected a corrupt-image error: {p.returncode} {p.stderr!r}")
    if not peek(img, 72, ">Q") & 2:
        failures.append(f"{name}: corrupt bit not set")
    p = run("qemu-io", "-f", "qcow2", "-r", "-c", "read -P 0x33 64k 64k", img)
    if "Pattern verification failed" in p.stdout or p.returncode != 0:
        failures.append(f"{name}: data damaged: {p.stdout}{p.stderr}")


def guard_cases(tmp, failures):
    """Tables that contradict refcounts or point at metadata (cluster guard):
    the write fails, the image is marked corrupt, nothing is overwritten."""
    # An L2 entry (OFLAG_COPIED) pointing at the L1 table or the refcount
    # block: a write there would destroy metadata. (Offset 0, the header,
    # means "unallocated" in an L2 entry.)
    for what in ("l1", "refblock"):
        img = f"{tmp}/l2-at-{what}.qcow2"
        make(img)
        target = {"l1": peek(img, 40, ">Q"),
                  "refblock": peek(img, peek(img, 48, ">Q"), ">Q")}[what]
        poke(img, l2_entry_offset(img), ">Q", target | (1 << 63))
        expect_write_refused(img, failures, f"l2-at-{what}")
    # A data cluster in use whose refcount says free (a refcount "loop" the
    # allocator would close by giving it out twice).
    img = f"{tmp}/refcount-zero-in-use.qcow2"
    make(img)
    data = peek(img, l2_entry_offset(img), ">Q") & 0x00fffffffffffe00
    poke(img, refcount_offset(img, data), ">H", 0)
    expect_write_refused(img, failures, "refcount-zero-in-use", ops="write 2097152 4096 5\n")
    # OFLAG_COPIED on a cluster with refcount 2 (a snapshot's data would change).
    img = f"{tmp}/copied-shared.qcow2"
    make(img)
    data = peek(img, l2_entry_offset(img, 1), ">Q") & 0x00fffffffffffe00
    poke(img, refcount_offset(img, data), ">H", 2)
    expect_write_refused(img, failures, "copied-shared", ops="write 65536 4096 5\n")
    # A compressed descriptor past the end of the file: a clean read error.
    img = f"{tmp}/compressed-past-eof.qcow2"
    make(img)
    poke(img, l2_entry_offset(img), ">Q", (1 << 62) | (1 << 40))
    expect_io_error(img, failures, "compressed-past-eof", needle="Input/output error")


def flag_cases(tmp, failures):
    # A corrupt image is served read-only.
    img = f"{tmp}/corrupt.qcow2"
    make(img)
    poke(img, 72, ">Q", 1 << 1)
    p = run(DRIVER, "ops", img, stdin="write 0 512 1\n")
    if p.returncode != 1 or "read-only" not in p.stderr:
        failures.append(f"corrupt: write should fail read-only: {p.returncode} {p.stderr!r}")
    p = run(DRIVER, "dump", img, img + ".dump")
    if p.returncode != 0:
        failures.append(f"corrupt: reads should work: {p.stderr!r}")
    # A dirty image whose refcounts are wrong (as after a crash in lazy
    # refcounts mode) is repaired on a read-write open, then written safely.
    img = f"{tmp}/dirty.qcow2"
    make(img)
    poke(img, 72, ">Q", 1 << 0)
    refblock = peek(img, peek(img, 48, ">Q"), ">Q")
    data = peek(img, peek(img, peek(img, 40, ">Q"), ">Q") & 0x00fffffffffffe00, ">Q")
    poke(img, refblock + 2 * ((data & 0x00fffffffffffe00) >> 16), ">H", 0)
    p = run(DRIVER, "ops", img, stdin="write 1048576 200000 7\nflush\n")
    if p.returncode != 0:
        failures.append(f"dirty: repair and write failed: {p.returncode} {p.stderr!r}")
    p = run("qemu-img", "check", img)
    if p.returncode != 0:
        failures.append(f"dirty: not clean after repair ({p.returncode}): {p.stdout}")
    if peek(img, 72, ">Q") & 1:
        failures.append("dirty: dirty bit still set")
    p = run("qemu-io", "-f", "qcow2", "-c", "read -P 0x33 0 128k", "-c",
            "read -P 7 1048576 200000", img)
    if p.returncode != 0 or "Pattern verification failed" in p.stdout:
        failures.append(f"dirty: contents wrong after repair: {p.stdout}")
    img = f"{tmp}/truncated.qcow2"
    with open(img, "wb") as f:
        f.write(b"QFI\xfb\x00\x00")
    expect_open_error(img, "too short", failures, "truncated")


def main():
    failures = []
    with tempfile.TemporaryDirectory(prefix="qnbd-qcow2-bad.") as tmp:
        header_cases(tmp, failures)
        backing_cases(tmp, failures)
        table_cases(tmp, failures)
        guard_cases(tmp, failures)
        flag_cases(tmp, failures)
    # Every open above, huge tables included, stayed small.
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(f"FIGURE malformed_peak_rss_kb {peak}")
    if peak > 256 * 1024:
        failures.append(f"a driver run reached {peak} KiB of RSS")
    for f in failures:
        print("FAIL", f)
    print("malformed:", "ok" if not failures else f"{len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
