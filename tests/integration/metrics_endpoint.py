#!/usr/bin/python3
"""The Prometheus endpoint (--metrics / metrics: {listen:}): a real scrape passes
`promtool check metrics`, and the counters move with libnbd traffic."""
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import nbd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qnbd_harness as h  # noqa: E402

SIZE = 64 * h.MiB
SAMPLE = re.compile(r'^([a-z_]+)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-z_]+)="((?:[^"\\]|\\.)*)"')


def scrape(port, path="/metrics"):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4"), r.headers
        return r.read().decode()


def parse(text):
    """{(name, frozenset(labels)): value} of every sample."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"unparsable sample line: {line!r}"
        labels = frozenset(LABEL.findall(m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def value(samples, name, **labels):
    key = (name, frozenset(labels.items()))
    assert key in samples, f"missing {name}{labels}"
    return samples[key]


def wait_for(cond, timeout, what):
    """Polls `cond` until it holds (the scrape is the only way to observe it)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def promtool_check(text):
    p = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(), \
        f"promtool check metrics: exit {p.returncode}\n{p.stdout}{p.stderr}"


def make_qcow2(tmp):
    path = os.path.join(tmp, "disk.qcow2")
    h.run(["qemu-img", "create", "-q", "-f", "qcow2", path, str(SIZE)])
    # Data from before qnbd opens it: reading it must load (miss) its L2 table.
    h.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 7 {8 * h.MiB} 64k", path])
    return path


def test_scrape_passes_promtool_and_counts_traffic(tmp):
    image = make_qcow2(tmp)
    port = h.free_tcp_port()
    with h.Server(tmp, image, name="vm1", fmt="qcow2",
                  extra=["--metrics", f"127.0.0.1:{port}"]) as srv:
        idle = scrape(port)
        promtool_check(idle)
        s = parse(idle)
        build = [(dict(k[1]), v) for k, v in s.items() if k[0] == "qnbd_build_info"]
        assert len(build) == 1 and build[0][1] == 1 and build[0][0]["version"], build
        assert value(s, "qnbd_connections", export="vm1") == 0
        assert value(s, "qnbd_requests_total", export="vm1", command="write") == 0

        c = nbd.NBD()
        c.set_strict_mode(0)  # let an out-of-range read reach the server
        c.connect_uri(srv.uri("vm1"))
        data = h.pattern(0, h.MiB)
        for i in range(4):
            c.pwrite(data, i * h.MiB)
        c.flush()
        assert c.pread(h.MiB, 0) == data
        assert c.pread(65536, 8 * h.MiB) == b"\x07" * 65536
        try:
            c.pread(4096, SIZE)
            raise AssertionError("a read past the end succeeded")
        except nbd.Error:
            pass
        busy = scrape(port)
        promtool_check(busy)
        s = parse(busy)
        e = {"export": "vm1"}
        assert value(s, "qnbd_connections", **e) == 1
        assert value(s, "qnbd_connections_total", **e) == 1
        assert value(s, "qnbd_requests_in_flight", **e) == 0
        assert value(s, "qnbd_requests_total", command="write", **e) == 4
        assert value(s, "qnbd_request_bytes_total", command="write", **e) == 4 * h.MiB
        assert value(s, "qnbd_requests_total", command="flush", **e) == 1
        assert value(s, "qnbd_requests_total", command="read", **e) == 3
        assert value(s, "qnbd_request_bytes_total", command="read", **e) == h.MiB + 65536 + 4096
        assert value(s, "qnbd_request_errors_total", errno="EINVAL", **e) == 1
        assert value(s, "qnbd_request_errors_total", errno="EIO", **e) == 0
        assert value(s, "qnbd_request_duration_seconds_count", command="write", **e) == 4
        assert value(s, "qnbd_request_duration_seconds_bucket", command="write", le="+Inf",
                     **e) == 4
        assert value(s, "qnbd_request_duration_seconds_sum", command="write", **e) > 0
        assert value(s, "qnbd_metadata_cache_misses_total", cache="l2", **e) >= 1
        assert value(s, "qnbd_metadata_cache_hits_total", cache="l2", **e) >= 1
        assert value(s, "qnbd_metadata_cache_dirty_entries", cache="l2", **e) == 0  # flushed
        assert value(s, "qnbd_metadata_flushes_total", **e) >= 1
        assert value(s, "qnbd_data_syncs_total", **e) >= 1
        assert value(s, "qnbd_image_file_size_bytes", **e) == os.path.getsize(image)
        assert value(s, "qnbd_image_allocated_bytes", **e) >= 4 * h.MiB

        c.shutdown()
        del c
        # The session leaves on its worker after the client's NBD_CMD_DISC;
        # wait for that to show rather than sleeping.
        wait_for(lambda: value(parse(scrape(port)), "qnbd_connections", **e) == 0, 10,
                   "the connection gauge to fall to 0")
        assert value(parse(scrape(port)), "qnbd_connections_total", **e) == 1
    h.run(["qemu-img", "check", "-q", image])


def test_other_paths_and_methods(tmp):
    image = h.make_sparse_image(os.path.join(tmp, "d.raw"), SIZE, [])
    port = h.free_tcp_port()
    config = os.path.join(tmp, "q.yaml")
    with open(config, "w") as f:
        f.write(f"listen: {{unix: {tmp}/nbd.sock, tcp: false}}\n"
                f"metrics: {{listen: \"127.0.0.1:{port}\"}}\n"
                f"exports:\n  - {{name: raw1, path: {image}}}\n")
    with h.Server(tmp, config=config):
        for path, method, code in [("/", "GET", 404), ("/metricsx", "GET", 404),
                                   ("/metrics", "POST", 405)]:
            req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                         data=b"" if method == "POST" else None)
            try:
                urllib.request.urlopen(req, timeout=10)
                raise AssertionError(f"{method} {path} succeeded")
            except urllib.error.HTTPError as err:
                assert err.code == code, (method, path, err.code)
        s = parse(scrape(port, "/metrics?x=1"))
        # A raw export: image size and syncs, no qcow2 cache series.
        assert value(s, "qnbd_image_file_size_bytes", export="raw1") == SIZE
        assert not [k for k in s if k[0].startswith("qnbd_metadata_cache")], "cache series for raw"


def test_bad_metrics_address_is_refused(tmp):
    image = h.make_sparse_image(os.path.join(tmp, "d.raw"), SIZE, [])
    for bad, why in [("127.0.0.1", "HOST:PORT"), ("::1:80", "brackets"),
                     ("127.0.0.1:0", "0"), ("127.0.0.1:x", "x")]:
        p = subprocess.run([h.server_binary(), "--metrics", bad, "--check-config", image],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 1 and "--metrics" in p.stderr and why in p.stderr, (bad, p.stderr)


def test_refusals_counted_by_reason(tmp):
    me = os.getuid()
    port = h.free_tcp_port()
    mine = h.make_sparse_image(os.path.join(tmp, "mine.raw"), h.MiB, [])
    theirs = h.make_sparse_image(os.path.join(tmp, "theirs.raw"), h.MiB, [])
    config = os.path.join(tmp, "q.yaml")
    with open(config, "w") as f:
        f.write(f"listen: {{unix: {tmp}/nbd.sock, tcp: false}}\n"
                f"metrics: {{listen: \"127.0.0.1:{port}\"}}\n"
                "max_connections: 1\nhandshake_timeout: 1\n"
                f"exports:\n  - {{name: mine, path: {mine}, allow: ['uid:{me}']}}\n"
                f"  - {{name: theirs, path: {theirs}, allow: ['uid:{me + 1}']}}\n")
    with h.Server(tmp, config=config) as srv:
        def refused(reason):
            return value(parse(scrape(port)), "qnbd_refusals_total", reason=reason)
        assert refused("policy") == 0 and refused("max_connections") == 0
        p = subprocess.run(["nbdinfo", srv.unix_uri("theirs")], capture_output=True, timeout=60)
        assert p.returncode != 0
        assert refused("policy") >= 1, refused("policy")  # per refused INFO/GO
        c = nbd.NBD()
        c.connect_uri(srv.unix_uri("mine"))
        p = subprocess.run(["nbdinfo", srv.unix_uri("mine")], capture_output=True, timeout=60)
        assert p.returncode != 0, "a second client got in with max_connections: 1"
        assert refused("max_connections") == 1
        c.shutdown()
        # The server frees the slot after it has seen the disconnect; until then
        # a new client is refused at once (closed before any greeting).
        stalled = None
        deadline = time.monotonic() + 15
        while stalled is None:
            assert time.monotonic() < deadline, "the slot was never freed"
            s = socket.socket(socket.AF_UNIX)
            s.connect(srv.sock)
            if s.recv(8) == b"NBDMAGIC":
                stalled = s  # greeted, then silent: the 1 s handshake limit closes it
            else:
                s.close()
        wait_for(lambda: refused("handshake_timeout") == 1, 15, "the handshake timeout")
        stalled.close()
        assert refused("tls_failed") == 0 and refused("tls_required") == 0
        promtool_check(scrape(port))


def test_defrag_progress(tmp):
    image = os.path.join(tmp, "frag.qcow2")
    h.run(["qemu-img", "create", "-q", "-f", "qcow2", image, str(4 * h.MiB)])
    cmds = []
    for i in reversed(range(64)):  # 64 KiB clusters written in reverse order: fragmented
        cmds += ["-c", f"write -P {i + 1} {i * 65536} 64k"]
    h.run(["qemu-io", "-f", "qcow2", *cmds, image])
    port = h.free_tcp_port()
    with h.Server(tmp, image, name="frag", fmt="qcow2",
                  extra=["--metrics", f"127.0.0.1:{port}", "--defrag", "auto"]):
        def passes():
            return value(parse(scrape(port)), "qnbd_defrag_passes_total", export="frag")
        wait_for(lambda: passes() >= 1, 60, "a defragmentation pass")
        text = scrape(port)
        promtool_check(text)
        s = parse(text)
        assert value(s, "qnbd_defrag_clusters_moved_total", export="frag") > 0
        assert value(s, "qnbd_defrag_contiguous_ratio", export="frag") == 1
        assert value(s, "qnbd_defrag_active", export="frag") == 0
    h.run(["qemu-img", "check", "-q", image])
    for i in (0, 63):
        h.run(["qemu-io", "-f", "qcow2", "-c", f"read -P {i + 1} {i * 65536} 64k", image])


if __name__ == "__main__":
    h.main([test_scrape_passes_promtool_and_counts_traffic, test_other_paths_and_methods,
            test_bad_metrics_address_is_refused, test_refusals_counted_by_reason,
            test_defrag_progress])
