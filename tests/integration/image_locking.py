#!/usr/bin/python3
"""QEMU-compatible image locking, both directions, against the real qemu-io,
qemu-img and qemu-nbd: a served read-write image refuses other writers and
consistent readers (qemu-img info -U still works), qnbd refuses an image
qemu-nbd writes (naming the conflict), read-only and force-share exports share
as QEMU's do, backing files are locked, and --check-config tests the locks."""
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbd  # noqa: E402
import qnbd_harness as h  # noqa: E402

LOCKED = "Failed to get"  # qemu's message on a lock conflict


def qcow2(tmp, name="disk.qcow2", backing=None):
    path = os.path.join(tmp, name)
    argv = ["qemu-img", "create", "-f", "qcow2"]
    if backing:
        argv += ["-b", backing, "-F", "qcow2"]
    h.run(argv + [path, "16M"])
    return path


def tool(*argv):
    return subprocess.run(list(argv), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=60)


def refused(p):
    return p.returncode != 0 and LOCKED in p.stderr


def qnbd(tmp, image, *extra):
    return h.Server(tmp, image, fmt="qcow2", extra=list(extra))


def start_fails(tmp, argv):
    p = subprocess.run([h.server_binary()] + argv, capture_output=True, text=True, timeout=30,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 1, (p.returncode, p.stderr)
    return p.stderr


def test_served_read_write_keeps_qemu_out(tmp):
    img = qcow2(tmp)
    with qnbd(tmp, img) as srv:
        assert refused(tool("qemu-io", "-c", "write 0 4k", img))
        assert refused(tool("qemu-io", "-r", "-c", "read 0 4k", img))
        assert refused(tool("qemu-img", "info", img))
        assert refused(tool("qemu-nbd", "-k", os.path.join(tmp, "q.sock"), img))
        # -U shares everything: allowed, as against qemu-nbd
        p = tool("qemu-img", "info", "-U", "--output=json", img)
        assert p.returncode == 0 and '"virtual-size": 16777216' in p.stdout, p.stderr
        c = nbd.NBD()
        c.connect_uri(srv.uri())
        c.pwrite(b"x" * 4096, 0)
        c.flush()
        c.shutdown()
    # released at exit
    assert tool("qemu-io", "-c", "write 0 4k", img).returncode == 0
    h.run(["qemu-img", "check", img])


def test_qemu_nbd_writer_keeps_qnbd_out(tmp):
    img = qcow2(tmp)
    sock = os.path.join(tmp, "nbd.sock")
    with h.QemuNbd(tmp, img):
        err = start_fails(tmp, ["-k", sock, "-f", "qcow2", img])
        assert "write lock held by another process" in err, err
        err = start_fails(tmp, ["-k", sock, "-r", "-f", "qcow2", img])
        assert "write lock held by another process" in err, err
        # force-share reads what a writer may change, as qemu-img -U does
        with qnbd(tmp, img, "-r", "--force-share") as srv:
            assert h.run(["nbdinfo", "--size", srv.uri()]).stdout.strip() == str(16 << 20)
        # --check-config tests the locks too
        err = start_fails(tmp, ["--check-config", "-f", "qcow2", img])
        assert "write lock held by another process" in err, err


def test_readers_share(tmp):
    img = qcow2(tmp)
    with qnbd(tmp, img, "-r"):
        assert tool("qemu-io", "-r", "-c", "read 0 4k", img).returncode == 0
        assert tool("qemu-img", "info", img).returncode == 0
        assert refused(tool("qemu-io", "-c", "write 0 4k", img))
        with h.QemuNbd(tmp, img, "-r"):
            pass  # a read-only qemu-nbd starts beside a read-only qnbd
    with h.QemuNbd(tmp, img, "-r"):
        with qnbd(tmp, img, "-r"):
            pass


def test_backing_file_locked(tmp):
    base = qcow2(tmp, "base.qcow2")
    top = qcow2(tmp, "top.qcow2", backing=base)
    with qnbd(tmp, top):
        assert refused(tool("qemu-io", "-c", "write 0 4k", base))
        assert tool("qemu-io", "-r", "-c", "read 0 4k", base).returncode == 0
    with h.QemuNbd(tmp, base):
        err = start_fails(tmp, ["-k", os.path.join(tmp, "nbd.sock"), "-f", "qcow2", top])
        assert "base.qcow2: write lock held by another process" in err, err


def test_check_config_forgives_its_own_server(tmp):
    img = qcow2(tmp)
    pid_file = os.path.join(tmp, "qnbd.pid")
    cfg = os.path.join(tmp, "qnbd.yaml")
    with open(cfg, "w") as f:
        f.write(f"listen: {{unix: {tmp}/nbd.sock, tcp: false}}\npid_file: {pid_file}\n"
                f"exports:\n  - {{name: a, path: {img}, format: qcow2}}\n")
    with h.Server(tmp, config=cfg):
        p = tool(h.server_binary(), "--check-config", "--config", cfg)
        assert p.returncode == 0 and "configuration OK" in p.stdout, p.stderr


if __name__ == "__main__":
    h.main([test_served_read_write_keeps_qemu_out, test_qemu_nbd_writer_keeps_qnbd_out,
            test_readers_share, test_backing_file_locked,
            test_check_config_forgives_its_own_server])
