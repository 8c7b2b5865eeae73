#!/usr/bin/python3
"""Interop with qemu-img and qemu-io: data read through qnbd equals the file,
and data written through qnbd lands in the file."""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qnbd_harness as h  # noqa: E402

SIZE = 32 * h.MiB
DATA = [(0, 64 * 1024), (3 * h.MiB + 512, 200 * 1024), (SIZE - 4096, 4096)]


def test_qemu_img_convert_from_nbd(tmp):
    image = h.make_sparse_image(os.path.join(tmp, "disk.raw"), SIZE, DATA)
    before = h.sha256_file(image)
    out = os.path.join(tmp, "out.raw")
    with h.Server(tmp, image) as srv:
        h.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", srv.unix_uri(), out])
        h.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", srv.unix_uri(), image])
        info = h.run(["qemu-img", "info", "--output=json", srv.unix_uri()]).stdout
        assert f'"virtual-size": {SIZE}' in info, info
    assert h.sha256_file(out) == before, "converted copy differs from the served file"
    assert h.sha256_file(image) == before, "reading modified the served file"


def test_qemu_img_convert_to_nbd_over_tcp(tmp):
    image = h.make_sparse_image(os.path.join(tmp, "disk.raw"), SIZE, [])
    src = h.make_sparse_image(os.path.join(tmp, "src.raw"), SIZE, DATA, seed=7)
    with h.Server(tmp, image, name="tgt", tcp=True, unix=False) as srv:
        h.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, srv.tcp_uri()])
        h.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", src, srv.tcp_uri()])
    assert h.sha256_file(image) == h.sha256_file(src)


def test_qemu_img_compare_detects_difference(tmp):
    # Guards against a compare that passes whatever it is given.
    image = h.make_sparse_image(os.path.join(tmp, "disk.raw"), SIZE, DATA)
    other = h.make_sparse_image(os.path.join(tmp, "other.raw"), SIZE, DATA, seed=1)
    with h.Server(tmp, image) as srv:
        p = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw",
                              srv.unix_uri(), other], capture_output=True, text=True)
        assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)


def qemu_img_map(target):
    """[(start, length, data, zero)] from qemu-img map, adjacent equal runs merged."""
    out = json.loads(h.run(["qemu-img", "map", "-f", "raw", "--output=json", target]).stdout)
    merged = []
    for e in out:
        run = (e["start"], e["length"], e["data"], e["zero"])
        if merged and merged[-1][2:] == run[2:] and merged[-1][0] + merged[-1][1] == run[0]:
            merged[-1] = (merged[-1][0], merged[-1][1] + run[1]) + run[2:]
        else:
            merged.append(run)
    return merged


def test_qemu_img_map_matches_file(tmp):
    # qemu's own NBD client reads base:allocation; it must see what qemu sees in the file.
    aligned = [(0, h.MiB), (4 * h.MiB, 2 * h.MiB), (SIZE - h.MiB, h.MiB)]
    image = h.make_sparse_image(os.path.join(tmp, "disk.raw"), SIZE, aligned)
    with h.Server(tmp, image) as srv:
        over_nbd = qemu_img_map(srv.unix_uri())
    direct = qemu_img_map(image)
    assert len(direct) == 5, direct
    assert over_nbd == direct, (over_nbd, direct)


def test_qemu_io_write_then_read(tmp):
    image = h.make_sparse_image(os.path.join(tmp, "disk.raw"), SIZE, DATA)
    with h.Server(tmp, image) as srv:
        p = h.run(["qemu-io", "-f", "raw", srv.unix_uri(),
                   "-c", "write -P 0xab 0 64k",
                   "-c", "write -P 0xcd 1M 4k",
                   "-c", "write -z 2M 128k",
                   "-c", "read -P 0xab 0 64k",
                   "-c", "read -P 0xcd 1M 4k",
                   "-c", "read -P 0 2M 128k",
                   "-c", "flush"])
        assert "Pattern verification failed" not in p.stdout + p.stderr, p.stdout
        # qemu-io reports per-command failures on stdout but still exits 0.
        assert "failed" not in p.stdout, p.stdout
    assert h.read_file_range(image, 0, 64 * 1024) == b"\xab" * 65536
    assert h.read_file_range(image, h.MiB, 4096) == b"\xcd" * 4096
    assert h.read_file_range(image, 2 * h.MiB, 128 * 1024) == bytes(128 * 1024)
    # Untouched data beside the writes is intact.
    off, length = DATA[1]
    assert h.read_file_range(image, off, length) == h.pattern(off, length)


def test_qemu_io_aio_writes_over_tcp(tmp):
    image = h.make_sparse_image(os.path.join(tmp, "disk.raw"), SIZE, [])
    cmds = []
    for i in range(16):
        cmds += ["-c", f"aio_write -P {0x10 + i} {i * 256}k 256k"]
    cmds += ["-c", "aio_flush"]
    for i in range(16):
        cmds += ["-c", f"read -P {0x10 + i} {i * 256}k 256k"]
    with h.Server(tmp, image, tcp=True, unix=False) as srv:
        p = h.run(["qemu-io", "-f", "raw", srv.tcp_uri()] + cmds)
        assert "failed" not in p.stdout, p.stdout
    for i in range(16):
        assert h.read_file_range(image, i * 256 * 1024, 256 * 1024) == bytes([0x10 + i]) * 262144


if __name__ == "__main__":
    h.main([test_qemu_img_convert_from_nbd, test_qemu_img_convert_to_nbd_over_tcp,
            test_qemu_img_compare_detects_difference, test_qemu_img_map_matches_file,
            test_qemu_io_write_then_read,
            test_qemu_io_aio_writes_over_tcp])
