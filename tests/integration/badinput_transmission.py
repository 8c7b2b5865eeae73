#!/usr/bin/python3
"""Hostile or dying clients during transmission: bad requests get errors and
the connection keeps working; protocol violations close only that connection;
clients that vanish never take the server down or corrupt the file."""
import os
import signal
import socket
import struct
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbd_wire as w  # noqa: E402
from badinput_common import DATA, SIZE, Fixture  # noqa: E402
import qnbd_harness as h  # noqa: E402


def session(fx):
    return w.Conn.unix(fx.server.sock, timeout=15).handshake("disk")


def assert_conn_works(c):
    off = DATA[0][0]
    assert c.read(off + 512, 8192, cookie=99) == (0, h.pattern(off + 512, 8192))


def test_unknown_command_and_flags_get_einval(tmp):
    with Fixture(tmp) as fx:
        c = session(fx)
        cases = [
            ("unknown command 99", 99, 0, 0, 4096),
            ("unknown command 0x7fff", 0x7FFF, 0, 0, 0),
            ("unknown flag bit 15 on READ", w.CMD_READ, 1 << 15, 0, 4096),
            ("REQ_ONE on READ", w.CMD_READ, w.CMD_FLAG_REQ_ONE, 0, 4096),
            ("NO_HOLE on READ", w.CMD_READ, w.CMD_FLAG_NO_HOLE, 0, 4096),
            ("BLOCK_STATUS without a negotiated context", w.CMD_BLOCK_STATUS, 0, 0, 4096),
        ]
        for i, (what, cmd, flags, off, length) in enumerate(cases):
            c.request(cmd, off, length, flags=flags, cookie=1000 + i)
            error, cookie, _ = c.reply()
            assert cookie == 1000 + i, what
            assert error == w.EINVAL, f"{what}: error {error}"
            assert_conn_works(c)
        # A WRITE with a bad flag still carries its payload: the server must
        # consume it (or the next request would be read from the middle of it).
        for i, flags in enumerate((1 << 15, w.CMD_FLAG_REQ_ONE, w.CMD_FLAG_DF)):
            c.request(w.CMD_WRITE, 0, 4096, flags=flags, cookie=2000 + i, payload=b"\xab" * 4096)
            error, cookie, _ = c.reply()
            assert (error, cookie) == (w.EINVAL, 2000 + i), (flags, error, cookie)
            assert_conn_works(c)
        c.close()
        fx.assert_healthy()  # and none of those writes happened


def test_out_of_range_requests(tmp):
    with Fixture(tmp) as fx:
        c = session(fx)
        assert c.size == SIZE
        cases = [
            ("read past end", w.CMD_READ, SIZE, 4096, w.EINVAL),
            ("read straddling end", w.CMD_READ, SIZE - 512, 4096, w.EINVAL),
            ("read offset+len wraps 2^64", w.CMD_READ, 2**64 - 512, 4096, w.EINVAL),
            ("trim past end", w.CMD_TRIM, SIZE, 4096, w.EINVAL),
            ("write_zeroes past end", w.CMD_WRITE_ZEROES, SIZE - 4096, 1 << 30, w.ENOSPC),
        ]
        for what, cmd, off, length, want in cases:
            c.request(cmd, off, length, cookie=5)
            error, _, _ = c.reply()
            assert error == want, f"{what}: got error {error}, want {want}"
            assert_conn_works(c)
        # A write past the end: payload consumed, ENOSPC, connection in sync.
        c.request(w.CMD_WRITE, SIZE - 512, 4096, cookie=6, payload=b"\xee" * 4096)
        error, cookie, _ = c.reply()
        assert (error, cookie) == (w.ENOSPC, 6), error
        assert_conn_works(c)
        c.close()
        fx.assert_healthy()


def test_bad_request_magic_closes_connection(tmp):
    with Fixture(tmp) as fx:
        c = session(fx)
        assert_conn_works(c)
        c.request(w.CMD_READ, 0, 4096, magic=0x12560953)
        assert c.is_closed_by_server(), "bad request magic must close the connection"
        c.close()
        fx.assert_healthy()


def test_truncated_write_payload_then_close(tmp):
    with Fixture(tmp) as fx:
        for mode in ("close", "reset"):
            c = session(fx)
            c.request(w.CMD_WRITE, DATA[0][0], 65536, cookie=3, payload=b"\x5a" * 1000)
            c.close() if mode == "close" else c.reset()
            fx.assert_healthy()  # nothing of the partial payload reached the file


def test_oversized_requests_are_refused(tmp):
    with Fixture(tmp) as fx:
        c = session(fx)
        # A 33 MiB READ (over the advertised 32 MiB): an error, or a disconnect.
        c.request(w.CMD_READ, 0, 33 * h.MiB, cookie=8)
        try:
            error, cookie, _ = c.reply()
            assert error in (w.EINVAL, w.EOVERFLOW) and cookie == 8, error
            assert_conn_works(c)
        except w.Closed:
            pass
        c.close()
        fx.assert_healthy()
        c = session(fx)
        # 64 MiB WRITE header, little payload: either an error or a disconnect.
        c.request(w.CMD_WRITE, 0, 64 * h.MiB, cookie=9, payload=b"\x11" * 4096)
        c.sock.settimeout(5)
        try:
            error, cookie, _ = c.reply()
            assert error != 0 and cookie == 9, error
        except (w.Closed, TimeoutError):
            pass
        c.close()
        fx.assert_healthy()


def test_reset_with_requests_in_flight(tmp):
    # nbdkit 9d82aa4f: a client that hung up with replies queued crashed the server.
    with Fixture(tmp) as fx:
        for _ in range(3):
            c = session(fx)
            for i in range(32):
                c.request(w.CMD_READ, (i * 1048576) % SIZE, 1048576, cookie=i)
            c.request(w.CMD_FLUSH, 0, 0, cookie=99)
            c.reset()
        fx.assert_healthy()


WRITER = r"""
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
buf = nbd.Buffer.from_bytearray(bytearray(b"\x77" * 1048576))
base = 16 * 1048576
done = 0
announced = False
while True:
    while h.aio_in_flight() < 16:
        h.aio_pwrite(buf, base + (done % 16) * 1048576)
        done += 1
    h.poll(-1)
    while h.aio_peek_command_completed() > 0:
        h.aio_command_completed(h.aio_peek_command_completed())
    if done >= 64 and not announced:
        print("busy", flush=True)
        announced = True
"""

READER = r"""
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
n = 0
announced = False
while True:
    while h.aio_in_flight() < 16:
        h.aio_pread(nbd.Buffer(4 * 1048576), (n % 4) * 4 * 1048576)
        n += 1
    h.poll(-1)
    while h.aio_peek_command_completed() > 0:
        h.aio_command_completed(h.aio_peek_command_completed())
    if n >= 64 and not announced:
        print("busy", flush=True)
        announced = True
"""


def kill_busy_client(fx, script):
    p = subprocess.Popen([sys.executable, "-c", script, fx.server.unix_uri()],
                         stdout=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()  # the client has many requests in flight now
        assert line.strip() == "busy", f"client failed before getting busy: {line!r}"
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stdout.close()


def test_client_killed_mid_transfer(tmp):
    with Fixture(tmp) as fx:
        region = (0, 16 * h.MiB)  # the writer only touches [16 MiB, 32 MiB)
        before = h.read_file_range(fx.image, *region)
        kill_busy_client(fx, WRITER)
        fx.assert_healthy(image_changed=True)
        assert h.read_file_range(fx.image, *region) == before, "data outside the writes changed"
        tail = h.read_file_range(fx.image, 16 * h.MiB, 16 * h.MiB)
        for i in range(16):
            block = tail[i * h.MiB:(i + 1) * h.MiB]
            # Each 1 MiB write is either not there yet, or there; nothing foreign appears.
            assert set(block) <= {0, 0x77}, f"unexpected bytes in block {i}"
        for _ in range(2):
            kill_busy_client(fx, READER)  # replies being sent when the peer vanishes
            fx.assert_healthy(image_changed=True)


def test_half_close_after_requests(tmp):
    # A client that sends its requests and then shuts down its sending side
    # (as `nc -N` does) still gets every reply before the server closes.
    with Fixture(tmp) as fx:
        c = session(fx)
        off = DATA[1][0]
        for i in range(8):
            c.request(w.CMD_READ, off + i * 65536, 65536, cookie=i)
        c.sock.shutdown(socket.SHUT_WR)
        got = {}
        for _ in range(8):
            error, cookie, data = c.reply(65536)
            got[cookie] = (error, data)
        assert sorted(got) == list(range(8))
        for i in range(8):
            assert got[i] == (0, h.pattern(off + i * 65536, 65536)), i
        assert c.is_closed_by_server()
        c.close()
        fx.assert_healthy()


def test_disc_with_requests_in_flight(tmp):
    with Fixture(tmp) as fx:
        c = session(fx)
        for i in range(8):
            c.request(w.CMD_WRITE, 16 * h.MiB + i * 65536, 65536, cookie=i,
                      payload=bytes([0x40 + i]) * 65536)
        c.request(w.CMD_DISC, 0, 0, cookie=100)
        # The spec says the server MUST handle outstanding requests; whether it
        # still replies to them is not said (qemu-nbd 7.2 does not), but any
        # reply that comes must be a success for one of our writes.
        replies = {}
        try:
            for _ in range(8):
                error, cookie, _ = c.reply()
                replies[cookie] = error
        except w.Closed:
            pass
        assert all(cookie in range(8) and error == 0 for cookie, error in replies.items()), replies
        assert c.is_closed_by_server(), "server must close after DISC"
        c.close()
        for i in range(8):
            got = h.read_file_range(fx.image, 16 * h.MiB + i * 65536, 65536)
            assert got == bytes([0x40 + i]) * 65536, f"write {i} before DISC was lost"
        fx.assert_healthy(image_changed=True)


if __name__ == "__main__":
    h.main([test_unknown_command_and_flags_get_einval, test_out_of_range_requests,
            test_bad_request_magic_closes_connection, test_truncated_write_payload_then_close,
            test_oversized_requests_are_refused, test_reset_with_requests_in_flight,
            test_client_killed_mid_transfer, test_half_close_after_requests,
            test_disc_with_requests_in_flight])
