#!/usr/bin/python3
"""Multi-conn while the main thread does everything else at once: four libnbd
connections to one qcow2 export on two workers (so three of them reach the
export through its home worker) write, FLUSH and read back while the metrics
endpoint is scraped and SIGHUP reloads add and remove another export and
change this one's description; then SIGTERM arrives with writes in flight.
The server must drain and exit 0, the image must check clean and hold every
acknowledged write (a write cut by the shutdown may or may not be there).
Written for the TSan build (`./dev.sh tsan`), where it puts these paths under
the race detector together; it runs in every build."""
import os
import subprocess
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbd  # noqa: E402
import live_reload as lr  # noqa: E402
import metrics_endpoint as me  # noqa: E402
import qnbd_harness as h  # noqa: E402

CONNS = 4
BLOCK = 64 * 1024
BLOCKS = 16  # per connection, each connection its own 1 MiB
ROUNDS = 6  # reloads; the writers run throughout
PER_ROUND = 16  # writes (two FLUSHes) each connection makes in every round


class Writer(threading.Thread):
    """Rewrites its blocks in turn with FLUSH every 8 writes and reads one
    back, until `stop` or the server closes the connection (an error only
    once `shutting` is set). `acked` holds the last acknowledged data per
    offset, `pending` the one write sent and not (yet) acknowledged."""

    progress = threading.Condition()  # notified after every write

    def __init__(self, srv, i, shutting, stop):
        super().__init__()
        self.c = lr.connect(srv, "a")
        self.i, self.shutting, self.stop = i, shutting, stop
        self.writes, self.error, self.acked, self.pending = 0, None, {}, None

    def run(self):
        try:
            while not self.stop.is_set():
                off = self.i * BLOCKS * BLOCK + (self.writes % BLOCKS) * BLOCK
                data = h.pattern(off, BLOCK, seed=self.i * 100000 + self.writes)
                self.pending = (off, data)
                self.c.pwrite(data, off)
                self.acked[off], self.pending = data, None
                with self.progress:
                    self.writes += 1
                    self.progress.notify_all()
                if self.writes % 8 == 0:
                    self.c.flush()
                    assert self.c.pread(BLOCK, off) == data, f"conn {self.i} at {off}"
        except nbd.Error as e:
            if not self.shutting.is_set():
                self.error = e
        except AssertionError as e:
            self.error = e


def config(tmp, port, disk, b, round_no):
    """Serves `a` (described by the round) and, in even rounds, `b`."""
    path = os.path.join(tmp, "qnbd.yaml")
    lines = [f"listen: {{unix: {os.path.join(tmp, 'nbd.sock')}, tcp: false}}",
             f"metrics: {{listen: \"127.0.0.1:{port}\"}}",
             "workers: 2",
             "exports:",
             f"  - {{name: a, path: {disk}, format: qcow2, description: \"round {round_no}\"}}"]
    if round_no % 2 == 0:
        lines.append(f"  - {{name: b, path: {b}, format: raw}}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def test_multiconn_reload_shutdown(tmp):
    disk = os.path.join(tmp, "a.qcow2")
    h.run(["qemu-img", "create", "-q", "-f", "qcow2", disk, str(CONNS * BLOCKS * BLOCK)])
    b = lr.image(tmp, "b.raw", 2)
    port = h.free_tcp_port()
    notify = lr.Notify(tmp)
    os.environ["NOTIFY_SOCKET"] = notify.path
    shutting, stop = threading.Event(), threading.Event()
    try:
        with h.Server(tmp, config=config(tmp, port, disk, b, 0)) as srv:
            notify.wait_ready()
            writers = [Writer(srv, i, shutting, stop) for i in range(CONNS)]
            for w in writers:
                w.start()
            before = 0
            for r in range(1, ROUNDS + 1):
                with Writer.progress:  # every connection busy during each round
                    assert Writer.progress.wait_for(
                        lambda: all(w.writes >= r * PER_ROUND or not w.is_alive()
                                    for w in writers), timeout=120)
                assert all(w.error is None for w in writers), [w.error for w in writers]
                s = me.parse(me.scrape(port))
                writes = me.value(s, "qnbd_requests_total", export="a", command="write")
                assert writes >= before, (writes, before)
                before = writes
                config(tmp, port, disk, b, r)
                lr.reload(srv, notify)
                if r % 2 == 0:
                    assert lr.connect(srv, "b").pread(4096, 0) == h.pattern(0, 4096, seed=2)
                else:
                    assert lr.refused(srv, "b")
            srv.assert_alive()
            shutting.set()
            srv.terminate()  # the writers are still writing; stop() requires exit 0
        for w in writers:
            w.join()
            assert w.error is None, f"writer {w.i}: {w.error!r}"
    finally:
        stop.set()
        del os.environ["NOTIFY_SOCKET"]
    total = sum(w.writes for w in writers)
    print(f"  {total} writes on {CONNS} connections over {ROUNDS} reloads and "
          f"{ROUNDS} scrapes; {int(before)} counted by the last scrape")
    assert all(w.writes >= 8 for w in writers), [w.writes for w in writers]
    h.run(["qemu-img", "check", "-q", disk])
    raw = os.path.join(tmp, "a.raw")
    h.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", disk, raw])
    for w in writers:
        for off, data in w.acked.items():
            got = h.read_file_range(raw, off, BLOCK)
            cut = w.pending is not None and w.pending[0] == off and got == w.pending[1]
            assert got == data or cut, f"conn {w.i}: acknowledged write at {off} lost"


if __name__ == "__main__":
    h.main([test_multiconn_reload_shutdown])
