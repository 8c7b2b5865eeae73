#!/usr/bin/python3
"""TLS required and bad input: plaintext clients refused (libnbd tls=off, raw
bytes), the STARTTLS injection case (CVE-2021-3716), garbage instead of a
TLS record, a client stopping mid handshake, expired certificates, a key
that does not match its certificate. The server logs each and carries on."""
import os
import ssl
import struct
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbd_wire as w  # noqa: E402
import qnbd_harness as h  # noqa: E402
import tls_common as t  # noqa: E402

REP_ERR_TLS_REQD = 0x80000005


def server(tmp, certs, extra=()):
    image = h.make_sparse_image(os.path.join(tmp, "disk.raw"), 4 * h.MiB, [(0, 4096)])
    return h.Server(tmp, image, name="disk",
                    extra=["--tls=require", "--tls-certificates", certs, *extra])


def plain(srv):
    c = w.Conn.unix(srv.sock)
    c.greeting()
    c.client_flags()
    return c


def tls_over(c, pki):
    """Wraps a raw connection after STARTTLS's ACK (python's ssl, OpenSSL)."""
    ctx = ssl.create_default_context(cafile=pki.ca_cert)
    ctx.check_hostname = False
    c.sock = ctx.wrap_socket(c.sock, server_hostname="localhost")
    return c


def starttls(c):
    c.option(w.OPT_STARTTLS)
    opt, rtype, _ = c.option_reply()
    assert (opt, rtype) == (w.OPT_STARTTLS, w.REP_ACK), (opt, hex(rtype))


def test_plaintext_clients_refused(tmp):
    pki = t.Pki(tmp)
    with server(tmp, pki.server()) as srv:
        p = t.run_fails(["nbdinfo", f"nbd+unix:///disk?socket={srv.sock}"])
        assert "not supported" in p.stderr.lower() or "tls" in p.stderr.lower(), p.stderr
        p = t.run_fails(["nbdinfo", "--list", f"nbd+unix:///?socket={srv.sock}"])
        c = plain(srv)
        for opt in (w.OPT_LIST, w.OPT_INFO, w.OPT_GO):
            if opt == w.OPT_LIST:
                c.option(opt)
                _, rtype, _ = c.option_reply()
            else:
                rtype = c.go("disk", opt)
            assert rtype == REP_ERR_TLS_REQD, (opt, hex(rtype))
        c.option(w.OPT_EXPORT_NAME, b"disk")  # old style cannot be refused: disconnect
        assert c.is_closed_by_server()
        t.wait_log(srv, "EXPORT_NAME without TLS")
        h.run(["nbdinfo", t.nbds_unix(srv, "disk", tls_certificates=pki.client("c", "c"))])


def test_starttls_injection_discarded(tmp):
    pki = t.Pki(tmp)
    with server(tmp, pki.server()) as srv:
        c = plain(srv)
        # STARTTLS and, in the same send, a GO an attacker slipped in after it
        injected = struct.pack(">QII", w.IHAVEOPT, w.OPT_GO, 8) + b"\0\0\0\4disk"[:8]
        c.send(struct.pack(">QII", w.IHAVEOPT, w.OPT_STARTTLS, 0) + injected)
        opt, rtype, _ = c.option_reply()
        assert (opt, rtype) == (w.OPT_STARTTLS, w.REP_ACK)
        tls_over(c, pki)
        c.option(w.OPT_LIST)  # the first reply inside TLS answers this, not the GO
        opt, rtype, data = c.option_reply()
        assert (opt, rtype) == (w.OPT_LIST, w.REP_SERVER), (opt, hex(rtype))
        t.wait_log(srv, f"discarding {len(injected)} bytes sent in the clear after STARTTLS")
        c.close()


def test_garbage_and_stalled_handshakes(tmp):
    pki = t.Pki(tmp)
    with server(tmp, pki.server(), extra=["--handshake-timeout", "1"]) as srv:
        c = plain(srv)
        starttls(c)
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # not a TLS record
        assert c.is_closed_by_server()
        t.wait_log(srv, "TLS handshake failed")
        c = plain(srv)
        starttls(c)
        c.send(b"\x16\x03\x01\x02\x00\x01")  # a ClientHello that never ends
        assert c.is_closed_by_server()
        t.wait_log(srv, "handshake not finished within 1 s")
        c = plain(srv)  # STARTTLS twice is refused inside TLS
        starttls(c)
        tls_over(c, pki)
        c.option(w.OPT_STARTTLS)
        assert c.option_reply()[1] == w.REP_ERR_INVALID
        c.close()
        srv.assert_alive()


def test_expired_certificates(tmp):
    pki = t.Pki(tmp)
    expired_client = pki.client("old", "old-client", expired=True)
    with server(tmp, pki.server(), extra=["--tls-verify-peer"]) as srv:
        t.run_fails(["nbdinfo", t.nbds_unix(srv, "disk", tls_certificates=expired_client)])
        t.wait_log(srv, "certificate has expired")
        h.run(["nbdinfo", t.nbds_unix(srv, "disk", tls_certificates=pki.client("c", "c"))])
    os.unlink(srv.log)
    image = h.make_sparse_image(os.path.join(tmp, "disk.raw"), h.MiB, [])
    with h.Server(tmp, image, name="disk", tcp=True, unix=False,
                  extra=["--tls-certificates", pki.server("expired", expired=True)]) as srv:
        assert "has expired" in t.log_text(srv)
        # (libnbd checks the server's certificate over TCP, where it has a host name)
        t.run_fails(["nbdinfo", f"nbds://127.0.0.1:{srv.port}/disk?tls-certificates="
                     + pki.client("c", "c")])
        t.wait_log(srv, "TLS handshake failed")
        srv.assert_alive()


def test_mismatched_key_and_bad_psk_file_refused_at_start(tmp):
    pki = t.Pki(tmp)
    a, b = pki.server("a"), pki.server("b")
    os.replace(os.path.join(b, "server-key.pem"), os.path.join(a, "server-key.pem"))
    image = h.make_sparse_image(os.path.join(tmp, "disk.raw"), h.MiB, [])
    qnbd = h.server_binary()
    p = subprocess.run([qnbd, "--tls-certificates", a, "-k", os.path.join(tmp, "s"), image],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and "does not match" in p.stderr, p.stderr
    bad = os.path.join(tmp, "bad.psk")
    with open(bad, "w") as f:
        f.write("alice:xyz\n")
    p = subprocess.run([qnbd, "--tls-psk", bad, "-k", os.path.join(tmp, "s"), image],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and "line 1" in p.stderr, p.stderr
    p = subprocess.run([qnbd, "--tls=require", "-k", os.path.join(tmp, "s"), image],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and "needs certificates" in p.stderr, p.stderr


if __name__ == "__main__":
    h.main([test_plaintext_clients_refused, test_starttls_injection_discarded,
            test_garbage_and_stalled_handshakes, test_expired_certificates,
            test_mismatched_key_and_bad_psk_file_refused_at_start])
