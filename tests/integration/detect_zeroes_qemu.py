#!/usr/bin/python3
"""--detect-zeroes against qemu-nbd's: the same all-zero and data WRITEs
through qnbd and through qemu-nbd with the same mode leave images with the
same content and the same allocation (qemu-img map), which stay thin."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbd  # noqa: E402
import qnbd_harness as h  # noqa: E402

K = 1024
M = K * K
SIZE = 16 * M
ZERO = bytes(64 * K)


def writes(c):
    c.pwrite(bytes(M), 0)  # fresh area, cluster-aligned
    c.pwrite(ZERO, 4 * M)  # over a data cluster
    c.pwrite(bytes(4 * K), 8 * M + 4 * K)  # fresh, inside a cluster
    c.pwrite(bytes(4 * K), 4 * M + 64 * K + 8 * K)  # inside a data cluster
    c.pwrite(b"\x01" + bytes(4 * K - 1), 12 * M)  # data: one non-zero byte
    c.pwrite(bytes(4 * K - 1) + b"\x02", 12 * M + 64 * K)
    c.pwrite(ZERO, 6 * M, nbd.CMD_FLAG_FUA)
    c.flush()


def make(path, fmt):
    h.run(["qemu-img", "create", "-f", fmt, path, str(SIZE)])
    h.run(["qemu-io", "-f", fmt, "-c", "write -P 7 4M 256k", path])


def qemu_map(path, fmt):
    """[(start, length, data, zero)], adjacent runs alike merged: the layer
    holding a zero run (qemu's zero flag, or nothing in an image without a
    backing file) reads the same and is not compared."""
    out = []
    for e in json.loads(h.run(["qemu-img", "map", "--output=json", "-f", fmt, path]).stdout):
        if out and (out[-1][2], out[-1][3]) == (e["data"], e["zero"]):
            out[-1][1] += e["length"]
        else:
            out.append([e["start"], e["length"], e["data"], e["zero"]])
    return out


def through_qnbd(tmp, path, fmt, mode, flag_style):
    extra = [f"--detect-zeroes={mode}"] if flag_style == "cli" else []
    cfg = None
    if flag_style == "yaml":
        cfg = os.path.join(tmp, "qnbd.yaml")
        with open(cfg, "w") as f:
            f.write(f"listen: {{unix: {os.path.join(tmp, 'nbd.sock')}, tcp: false}}\n"
                    f"exports:\n  - {{name: '', path: {path}, format: {fmt},"
                    f" detect_zeroes: {mode}}}\n")
    with h.Server(tmp, path, fmt=fmt, extra=extra, config=cfg) as srv:
        c = nbd.NBD()
        c.connect_uri(srv.uri())
        writes(c)
        c.shutdown()


def through_qemu(path, fmt, mode):
    argv = ["qemu-nbd", "-f", fmt]
    if mode == "unmap":
        argv.append("--discard=unmap")  # qemu-nbd requires it first; qnbd always allows TRIM
    argv.append(f"--detect-zeroes={mode}")
    c = nbd.NBD()
    c.connect_systemd_socket_activation(argv + [path])
    writes(c)
    c.shutdown()


def compare(tmp, fmt, mode, flag_style="cli"):
    mine, ref = os.path.join(tmp, f"mine.{fmt}"), os.path.join(tmp, f"ref.{fmt}")
    make(mine, fmt)
    h.run(["cp", "--sparse=always", mine, ref])  # a raw copy keeps its holes
    through_qnbd(tmp, mine, fmt, mode, flag_style)
    through_qemu(ref, fmt, mode)
    h.run(["qemu-img", "compare", "-f", fmt, "-F", fmt, mine, ref])
    m, r = qemu_map(mine, fmt), qemu_map(ref, fmt)
    assert m == r, f"{fmt} {mode}:\n{m}\nqemu-nbd:\n{r}"
    if fmt == "qcow2":
        h.run(["qemu-img", "check", mine])
    return m


def data_bytes(extents):
    return sum(length for _, length, data, _ in extents if data)


def test_qcow2_modes(tmp):
    off = data_bytes(compare(tmp, "qcow2", "off"))
    on = data_bytes(compare(tmp, "qcow2", "on"))
    unmap = data_bytes(compare(tmp, "qcow2", "unmap", "yaml"))
    # Thin: off writes the zeros as data; on and unmap keep only the real data.
    assert off > on >= unmap, (off, on, unmap)
    assert on <= 256 * K + 128 * K, on


def test_raw_unmap(tmp):
    compare(tmp, "raw", "unmap")


def test_bad_mode_refused(tmp):
    p = h.subprocess.run([os.environ.get("QNBD", "qnbd"), "--detect-zeroes=yes", "x"],
                         capture_output=True, text=True)
    assert p.returncode != 0 and "off|on|unmap" in p.stderr, p.stderr


if __name__ == "__main__":
    h.main([test_qcow2_modes, test_raw_unmap, test_bad_mode_refused])
