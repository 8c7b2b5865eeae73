#!/usr/bin/python3
"""Handshakes never lock out clients: 1,000 connections opened and left idle
in the handshake (some silent, some stopping half-way through an option
header), from 40 addresses and from the normal client's own address. The
server holds at most max_handshakes of them (the oldest are closed), a normal
client still negotiates and reads promptly, no descriptor leaks and memory
stays bounded. Prints the figures."""
import os
import resource
import select
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbd  # noqa: E402
import qnbd_harness as h  # noqa: E402

FLOOD = 1000
MAX_HANDSHAKES = 128  # the default
PER_ADDRESS = 16      # the default
HALF_OPTION = (3).to_bytes(4, "big") + b"IHAVEOPT"  # client flags, then half a header


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError(f"{key} not in /proc/{pid}/status")


def open_idle(port, source, half):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    if half:
        s.sendall(HALF_OPTION)
    return s


def wait_greeted(socks, timeout=60):
    """Every socket got the server's 18-byte greeting (the server accepted it)."""
    want = {s: 18 for s in socks}
    deadline = time.monotonic() + timeout
    while want:
        left = deadline - time.monotonic()
        assert left > 0, f"{len(want)} connections never greeted"
        ready, _, _ = select.select(list(want)[:1000], [], [], left)
        for s in ready:
            try:
                data = s.recv(want[s])
            except ConnectionResetError:
                data = b""
            if not data:  # closed: it must have been greeted first
                raise AssertionError("connection closed before its greeting")
            want[s] -= len(data)
            if want[s] == 0:
                del want[s]


def wait_fds(pid, target, timeout=20):
    deadline = time.monotonic() + timeout
    while fd_count(pid) > target:
        assert time.monotonic() < deadline, f"server holds {fd_count(pid)} fds, had {target}"
        time.sleep(0.02)


def normal_client(port):
    t0 = time.monotonic()
    c = nbd.NBD()
    c.connect_uri(f"nbd://127.0.0.1:{port}/")
    assert c.pread(4096, 0) == h.pattern(0, 4096)
    c.shutdown()
    return time.monotonic() - t0


def test_flood(tmp):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    img = h.make_sparse_image(os.path.join(tmp, "disk.raw"), 16 * h.MiB, [(0, h.MiB)])
    # In the ASan build, freed memory waits in a 256 MiB quarantine that would
    # read as growth; a small one keeps the RSS bound meaningful there (the
    # release build ignores the variable).
    asan = os.environ.get("ASAN_OPTIONS", "")
    os.environ["ASAN_OPTIONS"] = (asan + ":" if asan else "") + "quarantine_size_mb=8"
    with h.Server(tmp, img, unix=False, tcp=True) as srv:
        normal_client(srv.port)  # warm up: buffers, threads
        fds_before = fd_count(srv.pid)
        rss_before = status_kib(srv.pid, "VmRSS")
        socks = []
        t0 = time.monotonic()
        for i in range(FLOOD - 100):  # 40 addresses, 22-23 each: beyond PER_ADDRESS
            socks.append(open_idle(srv.port, f"127.0.0.{2 + i % 40}", half=i % 2 == 1))
        for i in range(100):  # and from the normal client's own address
            socks.append(open_idle(srv.port, "127.0.0.1", half=i % 2 == 1))
        wait_greeted(socks)
        flood_s = time.monotonic() - t0
        held = fd_count(srv.pid) - fds_before
        assert held <= MAX_HANDSHAKES, f"server holds {held} handshakes"
        latency = normal_client(srv.port)
        assert latency < 3, f"normal client needed {latency:.2f} s during the flood"
        rss_flood = status_kib(srv.pid, "VmRSS")
        peak = status_kib(srv.pid, "VmHWM")
        for s in socks:
            s.close()
        wait_fds(srv.pid, fds_before)
        srv.assert_alive()
        assert normal_client(srv.port) < 3
        print(f"{FLOOD} idle connections accepted and greeted in {flood_s:.2f} s; server held "
              f"{held} handshake fds (bound {MAX_HANDSHAKES}); normal client negotiated and read "
              f"in {latency * 1000:.1f} ms; RSS {rss_before} KiB before, {rss_flood} KiB during, "
              f"peak {peak} KiB; fds {fds_before} before and after")
        bound = 128 * 1024 * srv.memory_factor()
        assert rss_flood - rss_before < bound, f"RSS grew by more than {bound // 1024} MiB"


if __name__ == "__main__":
    h.main([test_flood])
