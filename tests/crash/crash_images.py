"""Test images for the crash suite, made and inspected only with the qemu tools.

A Variant names the image shape (raw, or qcow2 with/without a backing file,
with/without an internal snapshot, normal or lazy-refcounts). `prepare`
builds a template once; every iteration works on a copy of it.
"""
import os
import re
import shutil
import subprocess

from crash_model import (BLOCK, OP_BACKING, OP_POSTSNAP, OP_PREFILL, ZERO,
                         render_range, stamp)

MiB = 1024 * 1024
VIRTUAL_SIZE = 64 * MiB
CLUSTER = 64 * 1024
BLOCKS = VIRTUAL_SIZE // BLOCK
BLOCKS_PER_CLUSTER = CLUSTER // BLOCK
PREP_SEED = 0xC0FFEE
QCOW2_INCOMPAT_OFFSET = 72
QCOW2_INCOMPAT_DIRTY = 1
QCOW2_INCOMPAT_CORRUPT = 2


class Variant:
    def __init__(self, name, fmt="qcow2", lazy=False, backing=False, snapshot=False,
                 cluster=CLUSTER, compressed=False):
        self.name, self.fmt, self.lazy = name, fmt, lazy
        self.compressed = compressed  # prefilled whole clusters are compressed
        self.backing, self.snapshot = backing, snapshot
        # 4 KiB clusters: one L2 table per 2 MiB and one refcount block per
        # 8 MiB, so the workload allocates metadata too, not only data.
        self.cluster = cluster


VARIANTS = {v.name: v for v in [
    Variant("raw", fmt="raw"),
    Variant("qcow2"),
    Variant("qcow2-backing", backing=True),
    Variant("qcow2-snapshot", snapshot=True),
    Variant("qcow2-lazy", lazy=True),
    Variant("qcow2-lazy-backing", lazy=True, backing=True),
    Variant("qcow2-lazy-snapshot", lazy=True, snapshot=True),
    Variant("qcow2-4k", backing=True, cluster=4096),
    Variant("qcow2-compressed", snapshot=True, compressed=True),
    Variant("qcow2-lazy-4k", lazy=True, snapshot=True, cluster=4096),
]}


def run(argv, ok=(0,), **kw):
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=120, **kw)
    if p.returncode not in ok:
        raise AssertionError(f"{' '.join(argv)} exited {p.returncode}:\n{p.stdout}")
    return p


def _backing_blocks():
    """The backing file holds data in 3 of every 4 clusters of the first 48 MiB."""
    for c in range(48 * MiB // CLUSTER):
        if c % 4 != 3:
            yield from range(c * BLOCKS_PER_CLUSTER, (c + 1) * BLOCKS_PER_CLUSTER)


def _prefill_ranges():
    """Ranges (first block, count) the image itself holds before the workload:
    whole clusters, half clusters and single blocks, so later writes hit
    allocated, partially allocated and unallocated clusters."""
    ranges = []
    for c in range(0, 256, 3):
        first = c * BLOCKS_PER_CLUSTER
        if c % 2 == 0:
            ranges.append((first, BLOCKS_PER_CLUSTER))
        else:
            ranges.append((first + 4, 6))
    ranges.append((700 * BLOCKS_PER_CLUSTER + 15, 2))  # straddles a cluster boundary
    return ranges


def _postsnap_ranges():
    """Written after the snapshot: overwrite some shared clusters partially."""
    return [(c * BLOCKS_PER_CLUSTER + 2, 3) for c in range(0, 256, 12)]


def _qemu_io_write(image, fmt, ranges, op, workdir, compress_clusters=0):
    """Stamped writes; whole `compress_clusters`-sized aligned ranges are
    written as compressed clusters."""
    if not ranges:
        return
    cmds = []
    for i, (first, count) in enumerate(ranges):
        src = os.path.join(workdir, f"stamp-{op}-{i}")
        with open(src, "wb") as f:
            f.write(render_range(stamp(PREP_SEED, op, b) for b in range(first, first + count)))
        whole = compress_clusters and first % compress_clusters == 0 \
            and count % compress_clusters == 0
        cmds += ["-c", f"write -q {'-c ' if whole else ''}-s {src} "
                       f"{first * BLOCK} {count * BLOCK}"]
    run(["qemu-io", "-f", fmt] + cmds + [image])
    for i in range(len(ranges)):
        os.unlink(os.path.join(workdir, f"stamp-{op}-{i}"))


class Template:
    """A prepared image plus what every block of it (and of its snapshot) holds."""

    def __init__(self, variant, workdir):
        self.variant = variant
        self.workdir = workdir
        self.path = os.path.join(workdir, "template." + variant.fmt)
        self.backing_path = None
        self.backing = [ZERO] * BLOCKS      # what an unallocated block shows
        self.initial = None                 # value per block at workload start
        self.snapshot = None                # value per block in snapshot s1

    def prepare(self):
        v = self.variant
        if v.backing:
            self._make_backing()
        if v.fmt == "raw":
            with open(self.path, "wb") as f:
                f.truncate(VIRTUAL_SIZE)
        else:
            opts = f"cluster_size={v.cluster}"
            if v.lazy:
                opts += ",lazy_refcounts=on"
            argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-o", opts]
            if self.backing_path:
                argv += ["-b", self.backing_path, "-F", "qcow2"]
            run(argv + [self.path, str(VIRTUAL_SIZE)])
        values = list(self.backing)
        self._write(_prefill_ranges(), OP_PREFILL, values)
        if v.snapshot:
            run(["qemu-img", "snapshot", "-c", "s1", self.path])
            self.snapshot = list(values)
            self._write(_postsnap_ranges(), OP_POSTSNAP, values)
        self.initial = values
        return self

    def _make_backing(self):
        raw = os.path.join(self.workdir, "backing.raw")
        self.backing_path = os.path.join(self.workdir, "backing.qcow2")
        with open(raw, "wb") as f:
            f.truncate(VIRTUAL_SIZE)
            for b in _backing_blocks():
                self.backing[b] = stamp(PREP_SEED, OP_BACKING, b)
                f.seek(b * BLOCK)
                f.write(render_range([self.backing[b]]))
        run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2",
             "-o", f"cluster_size={CLUSTER}", raw, self.backing_path])
        os.unlink(raw)

    def _write(self, ranges, op, values):
        for first, count in ranges:
            for b in range(first, first + count):
                values[b] = stamp(PREP_SEED, op, b)
        if self.variant.fmt == "raw":
            with open(self.path, "r+b") as f:
                for first, count in ranges:
                    f.seek(first * BLOCK)
                    f.write(render_range(values[first:first + count]))
        else:
            per_cluster = self.variant.cluster // BLOCK if self.variant.compressed else 0
            _qemu_io_write(self.path, "qcow2", ranges, op, self.workdir, per_cluster)

    def copy_to(self, path):
        shutil.copyfile(self.path, path)
        return path


def scratch_root():
    """Where images live: $QNBD_CRASH_TMPDIR, else /dev/shm when writable.
    Each check writes and deletes 64 MiB copies; on a disk file system mounted
    with `discard` deleting them dominated the run time."""
    root = os.environ.get("QNBD_CRASH_TMPDIR")
    if root:
        return root
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None


def read_image(path, fmt, workdir, snapshot=None):
    """The guest-visible bytes of an image as qemu reads it (backing chain included)."""
    out = os.path.join(workdir, "readback.raw")
    argv = ["qemu-img", "convert", "-f", fmt, "-O", "raw"]
    if snapshot:
        argv += ["-l", f"snapshot.name={snapshot}"]
    run(argv + [path, out])
    with open(out, "rb") as f:
        data = f.read()
    os.unlink(out)
    return data


class CheckResult:
    def __init__(self, rc, text):
        self.rc, self.text = rc, text
        self.errors = [l for l in text.splitlines() if l.startswith("ERROR")]
        m = re.search(r"^(\d+) leaked clusters were found", text, re.M)
        self.leaks = int(m.group(1)) if m else 0

    def __str__(self):
        return f"qemu-img check exit {self.rc}:\n{self.text.strip()}"


def qemu_img_check(path, repair=None):
    argv = ["qemu-img", "check", "-f", "qcow2"]
    if repair:
        argv += ["-r", repair]
    p = subprocess.run(argv + [path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=120)
    return CheckResult(p.returncode, p.stdout)


def leaks_including_past_eof(path, workdir):
    """Leaked clusters, counting refcounts of clusters past the end of the file.
    qemu-img check looks only at clusters inside the file, but after a crash the
    refcount of a cluster allocated at the end may be on disk while its data is
    not; such a leak only becomes visible once the file grows over it."""
    copy = os.path.join(workdir, "leakcheck.qcow2")
    shutil.copyfile(path, copy)
    with open(copy, "r+b") as f:
        f.truncate(os.path.getsize(copy) + VIRTUAL_SIZE)
    check = qemu_img_check(copy)
    os.unlink(copy)
    return check.leaks


# After a crash with lazy refcounts, qemu reports refcounts that are too low;
# anything else (bad L2 entries, overlaps, out-of-image offsets) is real damage.
_LAZY_OK_ERROR = re.compile(r"^ERROR (cluster \d+ refcount=\d+ reference=\d+|"
                            r"OFLAG_COPIED (data|L2) cluster: .*refcount=\d+)")


_REFERENCE = re.compile(r"reference=(\d+)")


def unexpected_lazy_errors(check, max_reference):
    """ERROR lines a lazy-refcounts crash cannot explain. Without snapshots no
    cluster is referenced twice: reference=2 there means a double allocation."""
    bad = []
    for e in check.errors:
        m = _REFERENCE.search(e)
        if not _LAZY_OK_ERROR.match(e) or (m and int(m.group(1)) > max_reference):
            bad.append(e)
    return bad


def qcow2_incompatible_bits(path):
    with open(path, "rb") as f:
        f.seek(QCOW2_INCOMPAT_OFFSET)
        return int.from_bytes(f.read(8), "big")
