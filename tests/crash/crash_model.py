"""What may be on disk after a crash: a pure model of one image, per 4 KiB block.

Every 4 KiB block a test writes is stamped with (seed, op index, block index,
sector), so any block read back can be attributed to the one operation that
wrote it. The workload never has two overlapping requests in flight, so the
operations touching one block are totally ordered by issue time.

After SIGKILL the allowed contents of a block are:
- nothing older than its last *durable* operation (one acknowledged before an
  acknowledged FLUSH was sent, or an acknowledged FUA request);
- that durable value, or the value of any operation issued after it (acked or
  not: a non-durable write may or may not have reached the file).
A trim may leave the old data, zeroes or (with a backing file) what the backing
file holds there, so it widens the set instead of replacing it.
"""
import struct

BLOCK = 4096
SECTOR = 512
MAGIC = b"QNBDCRSH"
_RECORD = struct.Struct("<8sIiQII")  # magic, seed, op, block, sector, check
RECORDS_PER_SECTOR = SECTOR // _RECORD.size

# Op numbers below zero name content made before the workload started.
OP_BACKING = -1     # written into the backing file
OP_PREFILL = -2     # written into the image itself before the snapshot/workload
OP_POSTSNAP = -3    # written into the image after the internal snapshot

ZERO = ("zero",)
_ZERO_BYTES = bytes(BLOCK)
_cache = {}


def stamp(seed, op, block):
    return ("stamp", seed, op, block)


def render(value):
    """The 4096 bytes a value token stands for."""
    if value == ZERO:
        return _ZERO_BYTES
    data = _cache.get(value)
    if data is None:
        _, seed, op, block = value
        sectors = []
        for s in range(BLOCK // SECTOR):
            check = (seed * 2654435761 + op * 40503 + block * 97 + s) & 0xFFFFFFFF
            rec = _RECORD.pack(MAGIC, seed & 0xFFFFFFFF, op, block, s, check)
            sectors.append(rec * RECORDS_PER_SECTOR)
        data = b"".join(sectors)
        if len(_cache) > 16384:  # 64 MiB
            _cache.clear()
        _cache[value] = data
    return data


def render_range(values):
    return b"".join(render(v) for v in values)


_images = {}


def render_image(values):
    """All blocks of `values` as one bytes object, memoised for the few initial
    images a run compares against over and over."""
    key = id(values)
    hit = _images.get(key)
    if hit is None or hit[0] is not values:
        if len(_images) >= 4:
            _images.clear()
        hit = _images[key] = (values, b"".join(render(v) for v in values))
    return hit[1]


def describe(data):
    """Human-readable attribution of 4096 bytes read back, for failure messages."""
    if data == _ZERO_BYTES:
        return "zeroes"
    if data[:8] == MAGIC:
        _, seed, op, block, sector, _ = _RECORD.unpack_from(data, 0)
        exact = data == render(stamp(seed, op, block))
        what = {OP_BACKING: "backing", OP_PREFILL: "prefill", OP_POSTSNAP: "post-snapshot"}
        name = what.get(op, f"op {op}")
        return f"stamp(seed={seed}, {name}, block={block})" + ("" if exact else " TORN/MIXED")
    return f"unrecognised bytes {data[:16].hex()}..."


def describe_value(value):
    return "zeroes" if value == ZERO else describe(render(value))


class Op:
    """One request of the workload, with the client-side event sequence numbers."""
    __slots__ = ("index", "kind", "first", "count", "fua", "issued", "acked", "error")

    def __init__(self, index, kind, first, count, fua):
        self.index = index
        self.kind = kind          # "write", "zero", "trim", "flush", "read"
        self.first = first        # first 4 KiB block
        self.count = count        # number of blocks
        self.fua = fua
        self.issued = None        # event sequence number when sent
        self.acked = None         # event sequence number of a successful reply
        self.error = None         # errno of a failed reply

    def __repr__(self):
        return (f"Op({self.index} {self.kind} blocks {self.first}+{self.count}"
                f"{' FUA' if self.fua else ''} issued@{self.issued} acked@{self.acked}"
                f" err={self.error})")


class ImageModel:
    """Initial contents per block, plus every operation the workload issued."""

    def __init__(self, seed, initial, backing):
        # initial: list of value tokens per block at workload start;
        # backing: value a block shows when unallocated in the image (ZERO without backing).
        self.seed = seed
        self.initial = initial
        self.backing = backing
        self.ops = []
        self.by_block = {}

    def add(self, op):
        self.ops.append(op)
        if op.kind != "flush":
            for b in range(op.first, op.first + op.count):
                self.by_block.setdefault(b, []).append(op)

    def written_value(self, op, block):
        return stamp(self.seed, op.index, block)

    def durable_ops(self):
        """Ops whose effect must survive a crash: covered by an acked FLUSH, or acked FUA."""
        flush_sends = [o.issued for o in self.ops if o.kind == "flush" and o.acked is not None]
        last_flush_send = max(flush_sends, default=None)
        durable = set()
        for o in self.ops:
            if o.kind == "flush" or o.acked is None:
                continue
            if o.fua or (last_flush_send is not None and o.acked < last_flush_send):
                durable.add(o.index)
        return durable

    def allowed(self, block, durable):
        """(set of allowed value tokens, description of the must-have value or None)."""
        values = {self.initial[block]}
        floor = None
        for o in self.by_block.get(block, ()):
            if o.kind == "write":
                new = {self.written_value(o, block)}
            elif o.kind == "zero":
                new = {ZERO}
            else:  # trim: old data, zeroes or the backing file's data
                new = values | {ZERO, self.backing[block]}
            if o.index in durable:
                values = set(new)
                floor = o
            else:
                values |= new
        return values, floor

    def touched_blocks(self):
        return self.by_block.keys()
