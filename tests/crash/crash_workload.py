"""A write-heavy NBD workload with many requests in flight, killed mid-stream.

Every request is recorded in an ImageModel with two client-side event numbers:
when it was sent and when its successful reply arrived. The kill point is a
count of completed replies, so no timing or sleeps are involved.
"""
import select

import nbd

from crash_images import BLOCKS, BLOCKS_PER_CLUSTER
from crash_model import BLOCK, Op, describe, describe_value, render, render_range

# A server that sends no reply for this long is hung (not slow, even under ASan).
STALL_SECONDS = 60
# Hot clusters get many small overlapping-in-time writes to one cluster.
HOT_CLUSTERS = 6


class Workload:
    """Requests go to one or more connections; with several, the server must
    advertise MULTI_CONN, so a FLUSH on any connection covers writes acknowledged
    on all of them (the model does not care which connection carried what)."""

    def __init__(self, handles, model, rng, nops, depth, kill_at, kill, hot_base,
                 over_backing_limit):
        self.handles, self.model, self.rng = handles, model, rng
        handle = handles[0]
        self.nops, self.depth, self.kill_at, self.kill_fn = nops, depth, kill_at, kill
        self.hot_base = hot_base
        self.over_limit = over_backing_limit
        self.flush_every = rng.randint(4, 40)
        self.fua_rate = rng.choice([0.0, 0.05, 0.2])
        self.seq = 0
        self.inflight = {}          # op index -> (Op, buffer or None)
        self.busy = set()           # blocks with a request in flight
        self.completed = 0
        self.killed = False
        self.errors_before_kill = []
        self.read_mismatches = []
        self.can = {"fua": handle.can_fua(), "trim": handle.can_trim(),
                    "zero": handle.can_zero()}

    def _tick(self):
        self.seq += 1
        return self.seq

    # ---- choosing requests -------------------------------------------------

    def _range(self):
        r = self.rng.random()
        if r < 0.35:    # anywhere: mostly allocating writes
            count = self.rng.randint(1, 16)
            first = self.rng.randrange(0, BLOCKS - count)
        elif r < 0.5:   # hot clusters: sub-cluster writes racing in one cluster
            count = self.rng.randint(1, 4)
            first = self.hot_base * BLOCKS_PER_CLUSTER + self.rng.randrange(
                0, HOT_CLUSTERS * BLOCKS_PER_CLUSTER - count)
        elif r < 0.65:  # aligned half clusters: a zero or trim of one half racing a
            # write to the other must not be widened to the whole cluster
            count = BLOCKS_PER_CLUSTER // 2
            first = (self.hot_base + self.rng.randrange(HOT_CLUSTERS)) * BLOCKS_PER_CLUSTER \
                + self.rng.choice([0, count])
        elif r < 0.9:   # partial clusters over backing/prefilled data: copy-on-write
            count = self.rng.randint(1, 8)
            first = self.rng.randrange(0, self.over_limit - count)
        else:           # large, may straddle clusters
            count = self.rng.randint(16, 64)
            first = self.rng.randrange(0, BLOCKS - count)
        return first, count

    def _choose(self, index):
        if index % self.flush_every == self.flush_every - 1:
            return Op(index, "flush", 0, 0, False)
        r = self.rng.random()
        kind = "write"
        if r < 0.12 and self.can["zero"]:
            kind = "zero"
        elif r < 0.22 and self.can["trim"]:
            kind = "trim"
        elif r < 0.32:
            kind = "read"
        fua = self.can["fua"] and self.rng.random() < self.fua_rate
        for _ in range(20):
            first, count = self._range()
            if not self.busy.intersection(range(first, first + count)):
                return Op(index, kind, first, count, fua)
        return None

    # ---- issuing and completing ----------------------------------------------

    def _check_read(self, op, data):
        """A read sees exactly what the completed requests left (nothing that
        overlaps it is in flight), before any crash: no stale or torn data."""
        done = {o.index for o in self.model.ops if o.acked is not None}
        for i, b in enumerate(range(op.first, op.first + op.count)):
            got = bytes(data[i * BLOCK:(i + 1) * BLOCK])
            allowed, _ = self.model.allowed(b, done)
            if not any(got == render(v) for v in allowed):
                self.read_mismatches.append(
                    f"{op}: block {b} read {describe(got)}, expected "
                    f"{sorted(describe_value(v) for v in allowed)}; "
                    f"ops on it: {self.model.by_block.get(b, [])}")

    def _completion(self, op, buf=None):
        def done(err):
            err = int(getattr(err, "value", err))
            if err == 0 and op.kind == "read":
                op.acked = self._tick()
                self._check_read(op, buf.to_bytearray())
            elif err == 0:
                op.acked = self._tick()
            else:
                op.error = err
                if not self.killed:
                    self.errors_before_kill.append(op)
            self.completed += 1
            self.inflight.pop(op.index, None)
            self.busy.difference_update(range(op.first, op.first + op.count))
            return 1
        return done

    def _issue(self, op):
        h = self.rng.choice(self.handles)
        flags = nbd.CMD_FLAG_FUA if op.fua else 0
        buf = None
        op.issued = self._tick()
        if op.kind != "read":
            self.model.add(op)
        self.inflight[op.index] = (op, None)
        self.busy.update(range(op.first, op.first + op.count))
        cb = self._completion(op)
        offset, length = op.first * BLOCK, op.count * BLOCK
        if op.kind == "read":
            buf = nbd.Buffer(length)
            self.inflight[op.index] = (op, buf)
            h.aio_pread(buf, offset, completion=self._completion(op, buf))
        elif op.kind == "write":
            data = render_range(self.model.written_value(op, b)
                                for b in range(op.first, op.first + op.count))
            buf = nbd.Buffer.from_bytearray(bytearray(data))
            self.inflight[op.index] = (op, buf)
            h.aio_pwrite(buf, offset, completion=cb, flags=flags)
        elif op.kind == "zero":
            if self.rng.random() < 0.3:
                flags |= nbd.CMD_FLAG_NO_HOLE
            h.aio_zero(length, offset, completion=cb, flags=flags)
        elif op.kind == "trim":
            h.aio_trim(length, offset, completion=cb, flags=flags)
        else:
            h.aio_flush(completion=cb)

    def _maybe_kill(self):
        if self.killed:
            return
        finished = len(self.model.ops) >= self.nops and not self.inflight
        if self.completed >= self.kill_at or finished:
            self.killed = True
            self.kill_fn()

    def _stalled(self):
        ops = sorted(self.inflight.values(), key=lambda x: x[0].index)
        raise AssertionError(f"no reply for {STALL_SECONDS}s with {len(ops)} requests in "
                             f"flight (server hung?): {[o for o, _ in ops][:8]}")

    def run(self):
        index = 0
        while True:
            while not self.killed and index < self.nops and len(self.inflight) < self.depth:
                op = self._choose(index)
                if op is None:
                    break
                self._issue(op)
                index += 1
            self._maybe_kill()
            if not self.inflight:
                break
            try:
                self._poll()
            except nbd.Error:
                if not self.killed:
                    raise
                if all(h.aio_is_dead() or h.aio_is_closed() for h in self.handles):
                    break  # whatever is still in flight was never acknowledged
        return self

    def _poll(self):
        if len(self.handles) == 1:
            if self.handles[0].poll(STALL_SECONDS * 1000) == 0:
                self._stalled()
            return
        readers, writers = {}, {}
        for h in self.handles:
            if h.aio_is_dead() or h.aio_is_closed():
                continue
            d = h.aio_get_direction()
            if d & nbd.AIO_DIRECTION_READ:
                readers[h.aio_get_fd()] = h
            if d & nbd.AIO_DIRECTION_WRITE:
                writers[h.aio_get_fd()] = h
        if not readers and not writers:
            raise nbd.Error("no connection left to poll", 107)
        r, w, _ = select.select(list(readers), list(writers), [], STALL_SECONDS)
        if not r and not w:
            self._stalled()
        for fd in r:
            readers[fd].aio_notify_read()
        for fd in w:
            writers[fd].aio_notify_write()
