#!/usr/bin/python3
"""Hostile handshakes: each one costs the client its connection (or an error
reply), never the server; the next client is served and the file is unharmed."""
import os
import random
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbd  # noqa: E402
import nbd_wire as w  # noqa: E402
from badinput_common import Fixture  # noqa: E402
import qnbd_harness as h  # noqa: E402


def connect(fx):
    return w.Conn.unix(fx.server.sock, timeout=15)


def test_garbage_instead_of_handshake(tmp):
    rng = random.Random(1)
    with Fixture(tmp) as fx:
        # Garbage sent before reading the greeting, and after it.
        c = connect(fx)
        c.send(bytes(rng.getrandbits(8) for _ in range(4096)))
        assert c.is_closed_by_server(), "server kept a garbage connection open"
        c.close()
        fx.assert_healthy()
        c = connect(fx)
        c.greeting()
        c.client_flags()
        c.send(bytes(rng.getrandbits(8) for _ in range(4096)))
        assert c.is_closed_by_server()
        c.close()
        fx.assert_healthy()
        # Plausible magic, then a garbage option header.
        c = connect(fx)
        c.greeting()
        c.client_flags()
        c.send(struct.pack(">QII", 0x1122334455667788, 7, 10) + b"x" * 10)
        assert c.is_closed_by_server()
        c.close()
        fx.assert_healthy()


def test_unknown_client_flags_disconnect(tmp):
    with Fixture(tmp) as fx:
        c = connect(fx)
        c.greeting()
        c.client_flags(w.FLAG_FIXED_NEWSTYLE | 0x80)
        assert c.is_closed_by_server(), "unknown client flag must close the connection"
        c.close()
        fx.assert_healthy()


def test_oversized_option_length_disconnects(tmp):
    with Fixture(tmp) as fx:
        for opt in (w.OPT_GO, w.OPT_INFO, w.OPT_LIST, 0x1234):
            c = connect(fx)
            c.greeting()
            c.client_flags()
            c.option(opt, b"\0" * 64, length=0xFFFFFFFF)
            # The server must not try to swallow 4 GiB: it closes while we still hold the line.
            assert c.is_closed_by_server(), f"option {opt}: 4 GiB option length not refused"
            c.close()
            fx.assert_healthy()


def test_long_export_names(tmp):
    with Fixture(tmp) as fx:
        for length in (256, 4096):
            c = connect(fx)
            c.greeting()
            c.client_flags()
            assert c.go("n" * length) == w.REP_ERR_UNKNOWN, f"name of {length} bytes"
            # An error message echoing the name must still be a valid string (CVE-2020-10761).
            assert len(c.last_reply) <= 4096, len(c.last_reply)
            c.last_reply.decode("utf-8")
            # Connection still negotiating: the real name still works on it.
            assert c.go("disk") == w.REP_ACK
            assert c.read(0, 4096) == (0, h.pattern(0, 4096))
            c.close()
        # Beyond the spec's 4096-byte limit: an error reply or a disconnect, never success.
        c = connect(fx)
        c.greeting()
        c.client_flags()
        try:
            rtype = c.go("n" * 4097)
            assert rtype & 0x80000000, hex(rtype)
        except w.Closed:
            pass
        c.close()
        # NBD_OPT_EXPORT_NAME cannot fail politely: an unknown long name closes the connection.
        c = connect(fx)
        c.greeting()
        c.client_flags()
        c.option(w.OPT_EXPORT_NAME, b"n" * 4097)
        assert c.is_closed_by_server()
        c.close()
        fx.assert_healthy()


def test_served_names_of_256_and_4096_bytes(tmp):
    for length in (256, 4096):
        with Fixture(tmp, name="e" * length) as fx:
            c = connect(fx)
            c.handshake("e" * length)
            assert c.size == 32 * h.MiB
            assert c.read(8 * h.MiB, 512) == (0, h.pattern(8 * h.MiB, 512))
            c.close()
            fx.assert_healthy()


def test_malformed_options_get_errors(tmp):
    with Fixture(tmp) as fx:
        c = connect(fx)
        c.greeting()
        c.client_flags()
        c.option(0x7777, b"whatever")
        assert c.option_reply()[1] == w.REP_ERR_UNSUP
        c.option(w.OPT_LIST, b"data not allowed")
        assert c.option_reply()[1] == w.REP_ERR_INVALID
        # Name length claims more bytes than the option carries.
        c.option(w.OPT_GO, struct.pack(">I", 1000) + b"disk" + struct.pack(">H", 0))
        assert c.option_reply()[1] == w.REP_ERR_INVALID
        # Info request count claims more entries than present.
        c.option(w.OPT_INFO, struct.pack(">I", 4) + b"disk" + struct.pack(">H", 50))
        assert c.option_reply()[1] == w.REP_ERR_INVALID
        # No TLS here: STARTTLS is refused, not half-done.
        c.option(w.OPT_STARTTLS)
        assert c.option_reply()[1] in (w.REP_ERR_UNSUP, w.REP_ERR_POLICY)
        # After all that, the same connection negotiates and reads.
        assert c.go("disk") == w.REP_ACK
        assert c.read(0, 65536) == (0, h.pattern(0, 65536))
        c.close()
        fx.assert_healthy()


def test_many_options(tmp):
    # A client may not keep a connection in negotiation forever with cheap
    # options: each gets ERR_UNSUP, or the server hangs up after enough.
    with Fixture(tmp) as fx:
        c = connect(fx)
        c.greeting()
        c.client_flags()
        answered = 0
        try:
            for i in range(2000):
                c.option(0x1000 + i, b"x" * 100)
                assert c.option_reply()[1] == w.REP_ERR_UNSUP
                answered += 1
        except (w.Closed, BrokenPipeError, ConnectionResetError):
            pass
        print(f"  {answered} unknown options answered before the end")
        c.close()
        fx.assert_healthy()


def test_abandoned_connections(tmp):
    with Fixture(tmp) as fx:
        conns = []
        for i in range(20):
            c = connect(fx)
            if i % 4 >= 1:
                c.greeting()
            if i % 4 >= 2:
                c.client_flags()
            if i % 4 == 3:
                c.send(struct.pack(">QII", w.IHAVEOPT, w.OPT_GO, 100) + b"half")
            conns.append(c)
        # While 20 half-open clients sit there, a real client is served.
        fx.assert_healthy()
        for i, c in enumerate(conns):
            c.reset() if i % 2 else c.close()
        fx.assert_healthy()


def test_connection_flood(tmp):
    # More idle handshakes than their bound (max_handshakes, default 128;
    # they never count against max_connections): every client is greeted and
    # the oldest ones are closed to make room; new clients are served.
    # tests/integration/handshake_flood.py floods with 1,000.
    with Fixture(tmp) as fx:
        conns, greeted = [], 0
        for _ in range(130):
            c = connect(fx)
            try:
                c.greeting()
                greeted += 1
            except w.Closed:
                pass
            conns.append(c)
        assert greeted == 130, f"{greeted} of 130 clients greeted"
        assert conns[0].is_closed_by_server() and conns[1].is_closed_by_server()
        fx.assert_healthy()
        for c in conns:
            c.close()
        # Admission frees up as the server notices the closes; each try is answered.
        deadline = time.monotonic() + 10
        while True:
            try:
                fx.assert_healthy()
                break
            except nbd.Error:
                assert time.monotonic() < deadline, "server did not recover from the flood"


def test_abort_option(tmp):
    with Fixture(tmp) as fx:
        c = connect(fx)
        c.greeting()
        c.client_flags()
        c.option(w.OPT_ABORT)
        try:
            assert c.option_reply()[1] == w.REP_ACK
        except w.Closed:
            pass  # the spec lets the client close without waiting; servers may close early
        assert c.is_closed_by_server()
        c.close()
        fx.assert_healthy()


if __name__ == "__main__":
    h.main([test_garbage_instead_of_handshake, test_unknown_client_flags_disconnect,
            test_oversized_option_length_disconnects, test_long_export_names,
            test_served_names_of_256_and_4096_bytes, test_malformed_options_get_errors,
            test_many_options, test_abandoned_connections, test_connection_flood, test_abort_option])
