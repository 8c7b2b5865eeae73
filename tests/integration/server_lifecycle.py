#!/usr/bin/python3
"""The server as a process: connection limit, handshake timeout, draining on
SIGTERM/SIGINT, O_DIRECT mode, and clean start-up errors."""
import os
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbd  # noqa: E402
import nbd_wire as w  # noqa: E402
import qnbd_harness as h  # noqa: E402

SIZE = 16 * h.MiB


def image(tmp, data=((0, h.MiB),)):
    return h.make_sparse_image(os.path.join(tmp, "disk.raw"), SIZE, list(data))


def connect(srv):
    c = nbd.NBD()
    c.connect_uri(srv.unix_uri())
    return c


def refused(srv):
    """True if the server closes a new connection without greeting it."""
    c = w.Conn.unix(srv.sock, timeout=10)
    try:
        return c.sock.recv(18) == b""
    except ConnectionResetError:
        return True
    finally:
        c.close()


def test_max_connections(tmp):
    with h.Server(tmp, image(tmp), extra=["--max-connections", "2"]) as srv:
        a, b = connect(srv), connect(srv)
        assert refused(srv), "a third client was accepted with --max-connections 2"
        assert a.pread(4096, 0) == h.pattern(0, 4096)  # the two admitted clients still work
        assert b.pread(4096, 4096) == h.pattern(4096, 4096)
        a.shutdown()
        # The slot frees once the server has finished with `a`. Every attempt
        # below is answered by the server (refusal or service), none is a sleep.
        deadline = time.monotonic() + 10
        while True:
            try:
                c = connect(srv)
                break
            except nbd.Error:
                assert time.monotonic() < deadline, "slot never freed after a client left"
        assert c.pread(4096, 8192) == h.pattern(8192, 4096)
        b.shutdown()
        c.shutdown()


def test_handshake_timeout(tmp):
    with h.Server(tmp, image(tmp), extra=["--handshake-timeout", "1"]) as srv:
        idle_session = connect(srv)  # negotiated: not subject to the handshake limit
        start = time.monotonic()  # before connect, so the server's 1 s cannot have started earlier
        stalled = w.Conn.unix(srv.sock, timeout=15)
        stalled.greeting()
        assert stalled.is_closed_by_server(), "stalled handshake never dropped"
        elapsed = time.monotonic() - start
        assert 0.9 < elapsed < 10, elapsed
        stalled.close()
        assert idle_session.pread(4096, 0) == h.pattern(0, 4096)
        idle_session.shutdown()


def drain_on_signal(tmp, signum):
    """A FUA write known to be inside the server when the signal arrives must
    still be completed and acknowledged before the server exits 0."""
    img = h.make_sparse_image(os.path.join(tmp, "disk.raw"), 48 * h.MiB, [(40 * h.MiB, h.MiB)])
    srv = h.Server(tmp, img).start()
    c = connect(srv)
    data = bytearray(b"\x61") * (32 * h.MiB)
    write = c.aio_pwrite(nbd.Buffer.from_bytearray(data), 0, flags=nbd.CMD_FLAG_FUA)
    probe = c.aio_pread(nbd.Buffer(4096), 40 * h.MiB)
    # The server reads requests in order: once the later read is answered,
    # the whole write has been received.
    while not c.aio_command_completed(probe):
        c.poll(-1)
    write_in_flight = c.aio_in_flight() > 0
    os.kill(srv.pid, signum)
    while not c.aio_command_completed(write):  # raises if the write is lost
        c.poll(-1)
    pid, srv.pid = srv.pid, None
    status = h.wait_pid(pid, 20)
    assert status is not None, "server did not exit after the signal"
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, h.describe_status(status)
    assert h.read_file_range(img, 0, 32 * h.MiB) == bytes(data), "acknowledged write not in the file"
    assert not os.path.exists(srv.sock), "Unix socket left behind"
    return write_in_flight


def test_sigterm_drains(tmp):
    in_flight = drain_on_signal(tmp, signal.SIGTERM)
    print(f"  write still in flight when SIGTERM was sent: {in_flight}")


def test_sigint_drains(tmp):
    in_flight = drain_on_signal(tmp, signal.SIGINT)
    print(f"  write still in flight when SIGINT was sent: {in_flight}")


def test_cache_none_o_direct(tmp):
    img = image(tmp, ((0, h.MiB), (4 * h.MiB, h.MiB)))
    out = os.path.join(tmp, "out.raw")
    with h.Server(tmp, img, extra=[] if h.is_reference() else ["--cache", "none"]) as srv:
        h.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", srv.unix_uri(), out])
        assert h.sha256_file(out) == h.sha256_file(img)
        # Unaligned writes: the client or the server must make them work.
        p = h.run(["qemu-io", "-f", "raw", srv.unix_uri(), "-c", "write -P 0x5a 1000 3000",
                   "-c", "write -P 0x5b 5M 12345", "-c", "read -P 0x5a 1000 3000"])
        assert "failed" not in p.stdout, p.stdout
    assert h.read_file_range(img, 0, 1000) == h.pattern(0, 1000)
    assert h.read_file_range(img, 1000, 3000) == b"\x5a" * 3000
    assert h.read_file_range(img, 4000, 1000) == h.pattern(4000, 1000)
    assert h.read_file_range(img, 5 * h.MiB, 12345) == b"\x5b" * 12345


def test_bind_addresses(tmp):
    img = image(tmp)
    for bind, host, uri_host in (("::1", "::1", "[::1]"), ("::", "::1", "[::1]"),
                                 ("0.0.0.0", "127.0.0.1", "127.0.0.1")):
        port = h.free_tcp_port()
        srv = h.Server(tmp, img, unix=False, extra=["-b", bind, "-p", str(port)])
        with srv:
            c = nbd.NBD()
            c.connect_uri(f"nbd://{uri_host}:{port}/")
            assert c.pread(4096, 0) == h.pattern(0, 4096), bind
            c.shutdown()
            with socket.create_connection((host, port), timeout=10) as s:
                assert len(s.recv(18)) > 0


def test_unix_and_tcp_together(tmp):
    # -k with -p opens both listeners (qemu-nbd would open only the socket).
    img = image(tmp)
    with h.Server(tmp, img, tcp=True) as srv:
        for uri in (srv.unix_uri(), srv.tcp_uri()):
            c = nbd.NBD()
            c.connect_uri(uri)
            assert c.pread(4096, 0) == h.pattern(0, 4096), uri
            c.shutdown()


def peak_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_inflight_memory_bounded(tmp):
    """32 pipelined 32 MiB reads (1 GiB of replies) on one connection: the
    server must apply back-pressure instead of buffering them all."""
    img = h.make_sparse_image(os.path.join(tmp, "disk.raw"), 64 * h.MiB,
                              [(0, h.MiB), (32 * h.MiB, h.MiB)])
    with h.Server(tmp, img) as srv:
        before = peak_rss(srv.pid)
        c = w.Conn.unix(srv.sock, timeout=60).handshake("")
        for i in range(32):  # all requests first, replies read only afterwards
            c.request(w.CMD_READ, (i % 2) * 32 * h.MiB, 32 * h.MiB, cookie=i)
        seen, buf = set(), bytearray(32 * h.MiB)
        for _ in range(32):
            error, cookie, data = c.reply(32 * h.MiB, into=buf)
            assert error == 0 and cookie not in seen, (error, cookie)
            seen.add(cookie)
            if cookie in (0, 1):  # spot-check content of each offset once
                off = (cookie % 2) * 32 * h.MiB
                assert data[:4096] == h.pattern(off, 4096) and data[-4096:] == bytes(4096)
        c.close()
        grown = peak_rss(srv.pid) - before
        print(f"  server peak RSS grew by {grown // h.MiB} MiB for 1 GiB of pipelined reads")
        bound = 256 * h.MiB * srv.memory_factor()
        assert grown < bound, f"server buffered {grown // h.MiB} MiB: no back-pressure"


def startup_error(argv, wrapper=()):
    p = subprocess.run([*wrapper, h.server_binary()] + argv, capture_output=True, text=True,
                       timeout=30)
    assert p.returncode != 0, f"{argv}: exit 0"
    err = p.stderr.strip()
    assert err, f"{argv}: no message"
    for bad in ("terminate called", "Aborted", "Sanitizer", "what():", "Assertion"):
        assert bad not in err, f"{argv}: {err}"
    return err


def test_startup_errors(tmp):
    startup_error(["-f", "raw", os.path.join(tmp, "missing.raw")])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        startup_error(["-b", "127.0.0.1", "-p", str(port), "-f", "raw", image(tmp)])
    startup_error(["--no-such-option", image(tmp)])
    bad = os.path.join(tmp, "bad.yaml")
    with open(bad, "w") as f:
        f.write("exports:\n  - {name: a, path: /nonexistent/x.raw, format: raw}\n  - [\n")
    startup_error(["--config", bad])
    # A failed --fork start must not leave a daemon behind or say it is ready.
    pid_file = os.path.join(tmp, "p.pid")
    startup_error(["--fork", "--pid-file", pid_file, "-k", os.path.join(tmp, "s"),
                   "-f", "raw", os.path.join(tmp, "missing.raw")])
    assert not os.path.exists(pid_file)


def test_without_io_uring(tmp):
    """Where io_uring is denied (a container's seccomp profile): the io_uring
    event loop build refuses to start and names the remedy; the epoll build
    serves, its file I/O falling back to plain syscalls."""
    wrapper = [os.environ["QNBD_WITHOUT_IO_URING"]]
    if os.environ["QNBD_IO_URING_LOOP"] == "true":
        err = startup_error(["-k", os.path.join(tmp, "s"), "-f", "raw", image(tmp)], wrapper)
        assert "io_uring is not available" in err and "io_uring_loop=false" in err, err
        return

    class Denied(h.Server):
        def argv(self):
            return wrapper + super().argv()
    with Denied(tmp, image(tmp)) as srv:
        c = connect(srv)
        c.pwrite(h.pattern(7, 8192), 4096)
        c.flush()
        assert c.pread(12288, 0) == h.pattern(0, 4096) + h.pattern(7, 8192)
        c.shutdown()
    assert "io_uring unavailable" in open(srv.log).read()


if __name__ == "__main__":
    h.main([test_max_connections, test_handshake_timeout, test_sigterm_drains,
            test_sigint_drains, test_cache_none_o_direct, test_startup_errors,
            test_bind_addresses, test_unix_and_tcp_together, test_inflight_memory_bounded,
            test_without_io_uring])
