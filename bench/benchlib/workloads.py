"""The workloads of issue 5 (a-h) and issue 4 (flush/FUA per write), and the
targets each is run against."""
from dataclasses import dataclass

from .servers import Target

QNBD_NONE = Target("qnbd-none", "qnbd", "none")
QNBD_WB = Target("qnbd-wb", "qnbd", "writeback")
QEMU_NONE = Target("qemu-none", "qemu", "none")
QEMU_WB = Target("qemu-wb", "qemu", "writeback")

TARGETS = {
    "std": (QNBD_NONE, QNBD_WB, QEMU_NONE, QEMU_WB),
    "flush": (QNBD_NONE, Target("qnbd-none-lazy", "qnbd", "none", lazy=True),
              QNBD_WB, Target("qnbd-wb-lazy", "qnbd", "writeback", lazy=True),
              QEMU_NONE, Target("qemu-none-lazy", "qemu", "none", lazy=True),
              QEMU_WB, Target("qemu-wb-lazy", "qemu", "writeback", lazy=True)),
    "raw": (QNBD_NONE, QNBD_WB, QEMU_NONE, QEMU_WB, Target("nbdkit", "nbdkit")),
}


@dataclass(frozen=True)
class Workload:
    name: str
    desc: str
    image: str           # images.SHARED or images.FRESH kind
    rw: str              # fio rw= (or "fua" for the libnbd FUA driver)
    bs: str
    qd: int
    targets: str         # key of TARGETS
    time_based: bool = True
    fsync: bool = False  # fio fsync=1: an NBD FLUSH after every write
    goal: float = 0.0    # issue 5 target: qnbd / best qemu-nbd (0: none)
    goal_rows: str = ""  # which qnbd rows the goal applies to ("lazy": dirty-bit rows)
    default: bool = True  # part of "all" (the others only when named, to bound run time)
    jobs: int = 1        # fio numjobs: one NBD connection each (multi-conn), QD per job

    @property
    def writes(self):
        return "write" in self.rw or self.rw == "fua"


WORKLOADS = (
    Workload("a-qd1", "4k random read QD1, fully allocated", "full", "randread", "4k", 1,
             "std", goal=1.3),
    Workload("a-qd32", "4k random read QD32, fully allocated", "full", "randread", "4k", 32,
             "std", goal=1.5),
    Workload("b", "4k random write QD32, fully allocated", "full", "randwrite", "4k", 32,
             "std", goal=1.5),
    Workload("b-nobm", "4k random write QD32, preallocated, no bitmap", "alloc", "randwrite",
             "4k", 32, "std", default=False),
    Workload("b-bm", "4k random write QD32, preallocated, one enabled bitmap", "alloc-bitmap",
             "randwrite", "4k", 32, "std", default=False),
    Workload("c", "1M sequential write QD8, empty image", "empty", "write", "1M", 8,
             "std", time_based=False, goal=1.2),
    Workload("d", "4k random write QD32, empty overlay on full backing (COW)", "overlay",
             "randwrite", "4k", 32, "std", goal=2.0),
    Workload("e-seq", "1M seq read QD1, written in sequential 64k order", "frag-seq", "read",
             "1M", 1, "std"),
    Workload("e-rand", "1M seq read QD1, written in random 64k order", "frag-rand", "read",
             "1M", 1, "std", goal=1.5),
    Workload("e-rev", "1M seq read QD1, written in reverse 64k order", "frag-rev", "read",
             "1M", 1, "std", goal=1.5),
    Workload("f", "4k random write QD1 + FLUSH after each, empty image", "empty",
             "randwrite", "4k", 1, "flush", fsync=True, goal=2.0, goal_rows="lazy"),
    Workload("f-snap", "4k random write QD1 + FLUSH after each, image with internal snapshot",
             "snap", "randwrite", "4k", 1, "flush", fsync=True, goal=2.0, goal_rows="lazy"),
    Workload("f-fua", "4k random write QD1 with FUA, empty image", "empty", "fua", "4k", 1,
             "flush", goal=2.0, goal_rows="lazy"),
    Workload("f-fua-snap", "4k random write QD1 with FUA, image with internal snapshot",
             "snap", "fua", "4k", 1, "flush", goal=2.0, goal_rows="lazy", default=False),
    Workload("g", "1M sequential write QD8, allocated image with internal snapshot", "snap",
             "write", "1M", 8, "std", time_based=False, goal=1.5),
    Workload("h-qd1", "raw: 4k random read QD1", "raw", "randread", "4k", 1, "raw", goal=1.0),
    Workload("h-qd32", "raw: 4k random read QD32", "raw", "randread", "4k", 32, "raw",
             goal=1.0),
    Workload("h-w32", "raw: 4k random write QD32", "raw", "randwrite", "4k", 32, "raw",
             goal=1.0),
    Workload("h-mc", "raw: 4k random read, 2 connections x QD16", "raw", "randread", "4k", 16,
             "raw", jobs=2, default=False),
    Workload("h-mc-w", "raw: 4k random write, 2 connections x QD16", "raw", "randwrite", "4k",
             16, "raw", jobs=2, default=False),
)


def select(spec):
    """'all' (the default set), 'every', or a comma list of names or letters
    ('a,e,h-qd1')."""
    if spec in ("", "all"):
        return [w for w in WORKLOADS if w.default]
    if spec == "every":
        return list(WORKLOADS)
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    out = [w for w in WORKLOADS
           if any(w.name == s or w.name.split("-")[0] == s for s in wanted)]
    unknown = [s for s in wanted if not any(w.name == s or w.name.split("-")[0] == s
                                            for w in WORKLOADS)]
    if unknown:
        raise SystemExit(f"unknown workload(s): {', '.join(unknown)}")
    return out
