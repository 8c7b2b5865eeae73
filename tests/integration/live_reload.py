#!/usr/bin/python3
"""Live exports: SIGHUP re-reads the config. Added exports are served at
once; a removed export refuses new clients while its connected clients keep
working, and is closed (lock released) when the last leaves; a changed image
takes effect once the old clients are gone; a description change at once;
exports_dir files count; a bad config is rejected whole with file:line and
the old one keeps serving. systemd's RELOADING=1 ... READY=1/STATUS= is the
synchronisation: the test owns the NOTIFY_SOCKET."""
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbd  # noqa: E402
import qnbd_harness as h  # noqa: E402

SIZE = 4 * h.MiB


class Notify:
    """The NOTIFY_SOCKET systemd would own; the server reports to it."""

    def __init__(self, tmp):
        self.path = os.path.join(tmp, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)

    def next(self, timeout=30):
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode()

    def wait_ready(self):
        """Messages up to READY=1; returns (all messages, STATUS)."""
        seen = []
        while True:
            msg = self.next()
            seen.append(msg)
            if "READY=1" in msg.split("\n"):
                status = [x for x in msg.split("\n") if x.startswith("STATUS=")]
                return seen, status[0][len("STATUS="):] if status else ""


@contextlib.contextmanager
def server(tmp, exports, extra_yaml=""):
    notify = Notify(tmp)
    os.environ["NOTIFY_SOCKET"] = notify.path
    try:
        cfg = write(tmp, exports, extra_yaml)
        with h.Server(tmp, config=cfg) as srv:
            notify.wait_ready()
            yield srv, notify
    finally:
        del os.environ["NOTIFY_SOCKET"]


def write(tmp, exports, extra_yaml=""):
    path = h.write_config(tmp, exports)
    if extra_yaml:
        with open(path, "a") as f:
            f.write(extra_yaml)
    return path


def reload(srv, notify):
    os.kill(srv.pid, signal.SIGHUP)
    seen, status = notify.wait_ready()
    assert any(m.startswith("RELOADING=1") for m in seen), seen
    return status


def image(tmp, name, seed):
    return h.make_sparse_image(os.path.join(tmp, name), SIZE, [(0, 65536)], seed=seed)


def connect(srv, name):
    c = nbd.NBD()
    c.set_full_info(True)
    c.connect_uri(srv.uri(name))
    return c


def refused(srv, name):
    """The server answers NBD_OPT_GO for `name` with an error (NBD_REP_ERR_UNKNOWN)."""
    try:
        connect(srv, name).shutdown()
    except nbd.Error as e:
        assert "has no export named" in str(e), str(e)  # libnbd on NBD_REP_ERR_UNKNOWN
        return True
    return False


def wait_log(srv, text, timeout=20):
    """The server's log reaching `text` (it logs each step of a reload)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(srv.log, errors="replace") as f:
            if text in f.read():
                return
        srv.assert_alive()
        time.sleep(0.02)
    raise AssertionError(f"server never logged {text!r}\n{srv.log_tail()}")


def test_add_remove_update(tmp):
    a, b, c = image(tmp, "a.raw", 1), image(tmp, "b.raw", 2), image(tmp, "c.raw", 3)
    exports = [{"name": "a", "path": a}, {"name": "b", "path": b, "description": "old"}]
    with server(tmp, exports) as (srv, notify):
        ca, cb = connect(srv, "a"), connect(srv, "b")
        assert cb.get_export_description() == "old"
        write(tmp, [{"name": "b", "path": b, "description": "new"}, {"name": "c", "path": c}])
        t0 = time.monotonic()
        assert reload(srv, notify).startswith("serving 2 export(s)")
        reload_s = time.monotonic() - t0
        # c at once, b's new description for new clients, a refused
        assert connect(srv, "c").pread(4096, 0) == h.pattern(0, 4096, seed=3)
        assert connect(srv, "b").get_export_description() == "new"
        assert refused(srv, "a")
        # the clients of a and b noticed nothing
        ca.pwrite(b"A" * 4096, 8192)
        ca.flush()
        assert ca.pread(4096, 0) == h.pattern(0, 4096, seed=1)
        assert cb.pread(4096, 0) == h.pattern(0, 4096, seed=2)
        # a is closed once its last client leaves; its lock goes with it
        ca.shutdown()
        wait_log(srv, "export 'a': closed, image lock released")
        assert h.read_file_range(a, 8192, 4096) == b"A" * 4096
        p = subprocess.run(["qemu-io", "-f", "raw", "-c", "write 0 4k", a],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, p.stderr
        cb.shutdown()
        print(f"reload with 2 connected clients took {reload_s * 1000:.1f} ms")


def test_qcow2_removed_closes_clean(tmp):
    img = os.path.join(tmp, "q.qcow2")
    h.run(["qemu-img", "create", "-f", "qcow2", "-o", "lazy_refcounts=on", img, "16M"])
    keep = image(tmp, "keep.raw", 4)
    with server(tmp, [{"name": "keep", "path": keep}],
                extra_yaml=f"  - {{name: q, path: {img}, format: qcow2, lazy_refcounts: true}}\n") \
            as (srv, notify):
        c = connect(srv, "q")
        c.pwrite(b"q" * 65536, 0)  # dirty bit set while served (lazy refcounts)
        write(tmp, [{"name": "keep", "path": keep}])
        reload(srv, notify)
        c.shutdown()
        wait_log(srv, "export 'q': closed, image lock released")
        # written back, dirty bit cleared, lock released: qemu-img check is clean
        h.run(["qemu-img", "check", img])
        out = h.run(["qemu-io", "-c", "read -P 0x71 0 64k", img]).stdout
        assert "read 65536/65536" in out


def test_change_waits_for_old_clients(tmp):
    one, two = image(tmp, "one.raw", 5), image(tmp, "two.raw", 6)
    with server(tmp, [{"name": "x", "path": one}]) as (srv, notify):
        old = connect(srv, "x")
        write(tmp, [{"name": "x", "path": two}])
        reload(srv, notify)
        # the old image still serves while an old client is connected
        assert connect(srv, "x").pread(4096, 0) == h.pattern(0, 4096, seed=5)
        old.shutdown()
        wait_log(srv, "export 'x': " + two)
        assert connect(srv, "x").pread(4096, 0) == h.pattern(0, 4096, seed=6)


def test_bad_config_rejected_whole(tmp):
    a, b = image(tmp, "a.raw", 7), image(tmp, "b.raw", 8)
    with server(tmp, [{"name": "a", "path": a}]) as (srv, notify):
        ca = connect(srv, "a")
        cfg = write(tmp, [{"name": "a", "path": a}, {"name": "b", "path": b}])
        with open(cfg, "a") as f:
            f.write("max_conections: 3\n")
        status = reload(srv, notify)
        assert "reload rejected" in status and "qnbd.yaml:5: unknown key 'max_conections'" in status, \
            status
        assert refused(srv, "b")
        # an added image another process writes rejects the whole reload too:
        # c opens fine, q is locked by qemu-nbd, so neither is served
        c = image(tmp, "c.raw", 9)
        q = os.path.join(tmp, "q.qcow2")
        h.run(["qemu-img", "create", "-f", "qcow2", q, "16M"])
        write(tmp, [{"name": "a", "path": a}, {"name": "c", "path": c}],
              extra_yaml=f"  - {{name: q, path: {q}, format: qcow2}}\n")
        with h.QemuNbd(tmp, q):
            status = reload(srv, notify)
            assert "export 'q'" in status and "write lock held by another process" in status, \
                status
            assert refused(srv, "c") and refused(srv, "q")
        assert ca.pread(4096, 0) == h.pattern(0, 4096, seed=7)
        assert reload(srv, notify).startswith("serving 3 export(s)")
        assert connect(srv, "c").pread(4096, 0) == h.pattern(0, 4096, seed=9)
        ca.shutdown()


def test_exports_dir(tmp):
    a = image(tmp, "a.raw", 9)
    d = os.path.join(tmp, "exports.d")
    os.mkdir(d)
    with server(tmp, [{"name": "a", "path": a}], extra_yaml=f"exports_dir: {d}\n") as (srv, notify):
        vm = image(d, "vm1.raw", 10)
        with open(os.path.join(d, "vm1.yaml"), "w") as f:
            f.write("exports:\n  - {name: vm1, path: vm1.raw, format: raw}\n")
        reload(srv, notify)
        assert connect(srv, "vm1").pread(4096, 0) == h.pattern(0, 4096, seed=10)
        os.unlink(os.path.join(d, "vm1.yaml"))
        reload(srv, notify)
        assert refused(srv, "vm1")
        assert os.path.exists(vm)


if __name__ == "__main__":
    h.main([test_add_remove_update, test_qcow2_removed_closes_clean,
            test_change_waits_for_old_clients, test_bad_config_rejected_whole, test_exports_dir])
