#!/usr/bin/python3
"""Protocol floods over raw sockets (Unix socket, so no per-address bound
applies): 1,000 concurrent clients doing I/O; clients that disconnect at
every byte offset of the handshake and of a request; requests at every
length/offset boundary; a client that pipelines writes and never reads its
replies. After each: the server is alive, serves a new client correct data,
its descriptors return to the count before, and its peak RSS (VmHWM) stays
under a bound. Figures are printed as `FIGURE name value`."""
import os
import select
import struct
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
import nbd_wire as w  # noqa: E402
import qnbd_harness as h  # noqa: E402
from qnbd_server import fd_count, wait_for  # noqa: E402

SIZE = 64 * h.MiB
CLIENTS = int(os.environ.get("QNBD_FLOOD_CLIENTS", "1000"))
RSS_BOUND_MB = 512  # peak RSS allowed for the whole test (64 MiB in flight per client cap)


def figure(name, value):
    print(f"FIGURE {name} {value}", flush=True)


def proc_status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


class Flood:
    def __init__(self, tmp):
        self.image = h.make_sparse_image(os.path.join(tmp, "disk.raw"), SIZE, [(0, h.MiB)])
        self.server = h.Server(tmp, self.image, name="disk",
                               extra=["--max-connections", str(CLIENTS + 100)])

    def __enter__(self):
        self.server.start()
        self.fds0 = fd_count(self.server.pid)
        return self

    def __exit__(self, *exc):
        return self.server.__exit__(*exc)

    def connect(self):
        return w.Conn.unix(self.server.sock, timeout=30)

    def healthy(self):
        """Alive, serves correct data to a new client, descriptors back to the start."""
        self.server.assert_alive()
        c = self.connect().handshake("disk")
        assert c.read(4096, 8192) == (0, h.pattern(4096, 8192)), "served data is wrong"
        c.close()
        pid = self.server.pid
        wait_for(lambda: fd_count(pid) <= self.fds0, what=f"descriptors back to {self.fds0}")
        return fd_count(pid)


def test_thousand_clients(tmp):
    with Flood(tmp) as fx:
        pid = fx.server.pid
        conns = []
        for _ in range(CLIENTS):
            conns.append(fx.connect())
        for c in conns:
            c.greeting()
            c.client_flags()
            c.option(w.OPT_GO, struct.pack(">I", 4) + b"disk" + struct.pack(">H", 0))
        for c in conns:
            while True:
                _, rtype, _ = c.option_reply()
                if rtype != w.REP_INFO:
                    assert rtype == w.REP_ACK, hex(rtype)
                    break
        figure("flood_connected_fds", fd_count(pid))
        # Every client writes its own 4 KiB and reads it back, all in flight at once.
        for i, c in enumerate(conns):
            off = h.MiB + i * 4096
            c.request(w.CMD_WRITE, off, 4096, cookie=i, payload=h.pattern(off, 4096, 7))
        for i, c in enumerate(conns):
            assert c.reply() == (0, i, b"")
            off = h.MiB + i * 4096
            c.request(w.CMD_READ, off, 4096, cookie=i)
        served = 0
        for i, c in enumerate(conns):
            err, cookie, data = c.reply(4096)
            off = h.MiB + i * 4096
            if (err, cookie, data) == (0, i, h.pattern(off, 4096, 7)):
                served += 1
        for c in conns:
            c.close()
        figure("flood_clients_served", f"{served}/{CLIENTS}")
        assert served == CLIENTS
        figure("flood_fds_before_after", f"{fx.fds0}/{fx.healthy()}")
        figure("flood_peak_rss_kb", proc_status(pid, "VmHWM"))


def handshake_bytes():
    """What a client sends in a GO handshake, and the server's greeting length."""
    name = b"disk"
    return (struct.pack(">I", w.FLAG_FIXED_NEWSTYLE | w.FLAG_NO_ZEROES)
            + struct.pack(">QII", w.IHAVEOPT, w.OPT_GO, 4 + len(name) + 2)
            + struct.pack(">I", len(name)) + name + struct.pack(">H", 0))


def test_disconnect_at_every_byte(tmp):
    with Flood(tmp) as fx:
        hs = handshake_bytes()
        for cut in range(len(hs)):
            for rst in (False, True):
                c = fx.connect()
                c.greeting()
                c.send(hs[:cut])
                c.reset() if rst else c.close()
        req = struct.pack(">IHHQQI", w.REQUEST_MAGIC, 0, w.CMD_WRITE, 1, 2 * h.MiB, 512)
        req += h.pattern(2 * h.MiB, 512, 3)
        for cut in range(len(req)):
            c = fx.connect().handshake("disk")
            c.send(req[:cut])
            c.reset() if cut % 2 else c.close()
        figure("disconnect_cuts", len(hs) * 2 + len(req))
        figure("disconnect_fds_before_after", f"{fx.fds0}/{fx.healthy()}")


def test_boundaries(tmp):
    with Flood(tmp) as fx:
        c = fx.connect().handshake("disk")
        size, max_payload = c.size, 32 * h.MiB
        u64 = (1 << 64) - 1
        # (command, offset, length, expect success)
        cases = [
            (w.CMD_READ, 0, 1, True), (w.CMD_READ, size - 1, 1, True),
            (w.CMD_READ, size, 1, False), (w.CMD_READ, size - 512, 513, False),
            (w.CMD_READ, u64, 1, False), (w.CMD_READ, u64 - 511, 1024, False),
            (w.CMD_READ, 0, max_payload, True), (w.CMD_READ, 0, max_payload + 1, False),
            (w.CMD_READ, 1 << 63, 4096, False),
            (w.CMD_TRIM, size - 4096, 4096, True), (w.CMD_TRIM, size - 4096, 4097, False),
            (w.CMD_TRIM, u64 - 4095, 8192, False),
            (w.CMD_WRITE_ZEROES, size - 512, 512, True), (w.CMD_WRITE_ZEROES, size, 1, False),
            (w.CMD_WRITE_ZEROES, u64, 2, False),
            (w.CMD_BLOCK_STATUS, size, 1, False), (w.CMD_CACHE, u64, 1, False),
            (w.CMD_WRITE, size - 1, 1, True), (w.CMD_WRITE, size, 1, False),
            (w.CMD_WRITE, u64, 1, False),
        ]
        for i, (cmd, off, length, ok) in enumerate(cases):
            payload = b"\x5a" * length if cmd == w.CMD_WRITE else b""
            c.request(cmd, off, length, cookie=i, payload=payload)
            read_len = length if cmd == w.CMD_READ else 0
            err, cookie, _ = c.reply(read_len)
            assert cookie == i, (cookie, i)
            assert (err == 0) == ok, (cmd, off, length, err)
        # A write whose payload is over the limit: the server cannot skip
        # 32 MiB + 1 of payload safely, so it may error or close; either way
        # it must survive and keep serving others.
        c.request(w.CMD_WRITE, 0, max_payload + 1, cookie=99)
        c.close()
        # Zero-length requests: accepted, EINVAL or (writes past the end) ENOSPC; never a hang.
        c = fx.connect().handshake("disk")
        for cmd in (w.CMD_READ, w.CMD_WRITE, w.CMD_TRIM, w.CMD_WRITE_ZEROES):
            for off in (0, size, u64):
                c.request(cmd, off, 0, cookie=cmd)
                err, cookie, _ = c.reply()
                assert cookie == cmd and err in (0, w.EINVAL, w.ENOSPC), (cmd, off, err)
        c.close()
        figure("boundary_cases", len(cases) + 13)
        fx.healthy()


def test_pipeliner_that_never_reads(tmp):
    with Flood(tmp) as fx:
        pid = fx.server.pid
        rss0 = proc_status(pid, "VmRSS")
        hog = fx.connect().handshake("disk")
        hog.sock.setblocking(False)
        payload = h.pattern(4 * h.MiB, 65536, 9)
        sent, stalled_since = 0, None
        # Send writes until the server stops reading for 2 s (back-pressure).
        while stalled_since is None or time.monotonic() - stalled_since < 2:
            req = struct.pack(">IHHQQI", w.REQUEST_MAGIC, 0, w.CMD_WRITE, sent,
                              4 * h.MiB + (sent % 512) * 65536, 65536) + payload
            view = memoryview(req)
            while view:
                try:
                    k = hog.sock.send(view)
                    view = view[k:]
                    stalled_since = None
                except BlockingIOError:
                    if stalled_since is None:
                        stalled_since = time.monotonic()
                    elif time.monotonic() - stalled_since >= 2:
                        break
                    select_wait(hog.sock)
            if view:
                break
            sent += 1
            assert sent < 20000, "server never applied back-pressure"
        rss = proc_status(pid, "VmRSS")
        figure("pipeliner_writes_sent_before_backpressure", sent)
        figure("pipeliner_rss_growth_kb", rss - rss0)
        # Others are still served while the hog is stuck.
        other = fx.connect().handshake("disk")
        assert other.read(0, 65536) == (0, h.pattern(0, 65536))
        other.close()
        assert proc_status(pid, "VmHWM") < RSS_BOUND_MB * 1024
        hog.reset()
        figure("pipeliner_fds_before_after", f"{fx.fds0}/{fx.healthy()}")
        figure("pipeliner_peak_rss_kb", proc_status(pid, "VmHWM"))


def select_wait(sock):
    select.select([], [sock], [], 0.2)


if __name__ == "__main__":
    h.main([test_thousand_clients, test_disconnect_at_every_byte, test_boundaries,
            test_pipeliner_that_never_reads])
