"""The images the workloads run on.

Shared images are made once per size and reused across invocations (a stamp file
marks a finished one). Fresh images are made for every single run of a write
workload, so every target starts from the same state, and deleted right after:
unlinking drops their dirty page cache, so one run's writeback never lands in
the next run's measurement.
"""
import os
import random
import subprocess

CLUSTER = 64 * 1024
SHARED = ("full", "raw", "frag-seq", "frag-rand", "frag-rev")
FRESH = ("empty", "overlay", "snap", "alloc", "alloc-bitmap")


def run(cmd, **kw):
    kw.setdefault("stdout", subprocess.DEVNULL)
    subprocess.run(cmd, check=True, **kw)


def warm_path(path):
    """Read a file whole so it sits in the page cache: every target then starts
    from the same cache state. Without this, d's backing file was cold for
    whichever --cache writeback target ran first after the O_DIRECT ones (which
    bypass the cache) and warm for the next, and the ratio followed the order."""
    buf = bytearray(1 << 20)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def fsync_path(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def size_tag(nbytes):
    for unit, shift in (("G", 30), ("M", 20)):
        if nbytes % (1 << shift) == 0:
            return f"{nbytes >> shift}{unit}"
    return str(nbytes)


def qemu_io_writes(image, offsets, log):
    """Write 64 KiB clusters with qemu-io in the given guest order, so the host
    clusters are allocated in that order (the layout workload e reads back)."""
    script = "".join(f"write -q -P {(i % 250) + 1} {off} {CLUSTER}\n"
                     for i, off in enumerate(offsets))
    subprocess.run(["qemu-io", "-f", "qcow2", image], input=script.encode(),
                   check=True, stdout=log, stderr=log)


class Images:
    def __init__(self, workdir, size, frag_size, log=print):
        self.dir = workdir
        self.size = size
        self.frag_size = frag_size
        self.say = log
        os.makedirs(workdir, exist_ok=True)

    def path(self, kind):
        if kind == "full":
            return os.path.join(self.dir, f"full-{size_tag(self.size)}.qcow2")
        if kind == "raw":
            return os.path.join(self.dir, f"full-{size_tag(self.size)}.raw")
        if kind.startswith("frag-"):
            return os.path.join(self.dir, f"{kind}-{size_tag(self.frag_size)}.qcow2")
        raise ValueError(kind)

    def fmt(self, kind):
        return "raw" if kind == "raw" else "qcow2"

    # ---- shared images, made once ------------------------------------------------

    def prepare(self, kinds):
        """Make the shared images these workloads need (and, for fresh ones, the
        full image an overlay needs as backing)."""
        need = set(k for k in kinds if k in SHARED)
        if "overlay" in kinds:
            need.add("full")
        if "full" in need:
            need.add("raw")  # full.qcow2 is converted from the random raw image
        for kind in ("raw", "full", "frag-seq", "frag-rand", "frag-rev"):
            if kind in need:
                self._ensure(kind)

    def _ensure(self, kind):
        path = self.path(kind)
        stamp = path + ".done"
        if os.path.exists(stamp) and os.path.exists(path):
            return
        self.say(f"preparing {path}")
        tmp = path + ".tmp"
        with open(os.path.join(self.dir, "prepare.log"), "a") as log:
            if kind == "raw":
                with open(tmp, "wb") as out:
                    run(["head", "-c", str(self.size), "/dev/urandom"], stdout=out)
            elif kind == "full":
                run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2",
                     self.path("raw"), tmp])
            else:
                run(["qemu-img", "create", "-q", "-f", "qcow2", tmp, str(self.frag_size)])
                offsets = list(range(0, self.frag_size, CLUSTER))
                order = kind.split("-", 1)[1]
                if order == "rand":
                    random.Random(42).shuffle(offsets)
                elif order == "rev":
                    offsets.reverse()
                qemu_io_writes(tmp, offsets, log)
        fsync_path(tmp)
        os.rename(tmp, path)
        open(stamp, "w").close()

    def rebuild(self, kind):
        """After a run left a shared image corrupt: make it again."""
        for p in (self.path(kind) + ".done", self.path(kind)):
            if os.path.exists(p):
                os.unlink(p)
        self._ensure(kind)

    # ---- fresh images, one per run -----------------------------------------------

    def fresh(self, kind, lazy, dest):
        """Create a fresh image of `kind` at dest. lazy=True sets the qcow2
        lazy_refcounts feature (how qemu-nbd is put into dirty-bit mode)."""
        opts = ["lazy_refcounts=on"] if lazy else []
        if os.path.exists(dest):
            os.unlink(dest)
        if kind == "empty":
            cmd = ["qemu-img", "create", "-q", "-f", "qcow2"]
        elif kind == "overlay":
            cmd = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
                   "-b", os.path.abspath(self.path("full"))]
        elif kind == "snap":
            # Every cluster allocated (fallocate: no 4 GiB copy per run on a slow
            # shared disk) and shared with the internal snapshot, so every guest
            # write must copy-on-write.
            opts.append("preallocation=falloc")
            cmd = ["qemu-img", "create", "-q", "-f", "qcow2"]
        elif kind in ("alloc", "alloc-bitmap"):
            # Every cluster allocated, writes in place: what recording into
            # an enabled bitmap adds is all that differs between the two.
            opts.append("preallocation=falloc")
            cmd = ["qemu-img", "create", "-q", "-f", "qcow2"]
        else:
            raise ValueError(kind)
        if opts:
            cmd += ["-o", ",".join(opts)]
        run(cmd + [dest, str(self.size)])
        if kind == "overlay":
            warm_path(self.path("full"))
        if kind == "snap":
            run(["qemu-img", "snapshot", "-c", "base", dest])
        if kind == "alloc-bitmap":
            run(["qemu-img", "bitmap", "--add", dest, "b0"])
        return dest


def qemu_img_check(path):
    """'clean', or the first lines of what qemu-img check found."""
    p = subprocess.run(["qemu-img", "check", "-f", "qcow2", path], capture_output=True,
                       text=True)
    if p.returncode == 0:
        return "clean"
    text = (p.stdout + p.stderr).strip().splitlines()
    return f"check rc={p.returncode}: " + " | ".join(text[:3])
