#!/usr/bin/python3
"""qemu:allocation-depth against qemu-nbd -A: the same context lists and the
same runs (nbdinfo --map, block status with and without REQ_ONE) on backing
chains of depth 1-3 holding data, zero, compressed and extended-L2
subclusters, backing files shorter than their overlays, and raw images."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbd  # noqa: E402
import qnbd_harness as h  # noqa: E402

CONTEXT = "qemu:allocation-depth"
K = 1024


def qemu_img(*args):
    return h.run(["qemu-img", *args]).stdout


def qemu_io(path, fmt, *cmds):
    argv = ["qemu-io", "-f", fmt]
    for c in cmds:
        argv += ["-c", c]
    h.run(argv + [path])


def make_chain(tmp):
    """base (4M) <- mid (6M, extended L2) <- top (8M, extended L2)."""
    base = os.path.join(tmp, "base.qcow2")
    mid = os.path.join(tmp, "mid.qcow2")
    top = os.path.join(tmp, "top.qcow2")
    qemu_img("create", "-f", "qcow2", base, "4M")
    qemu_io(base, "qcow2", "write 0 128k", "write -z 256k 64k", "write -c 512k 64k",
            "write 3M 4k")
    qemu_img("create", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=64k",
             "-b", base, "-F", "qcow2", mid, "6M")
    qemu_io(mid, "qcow2", "write 128k 64k", "write -z 512k 64k", "write 1026k 4k",
            "write -z 1100k 2k", "write 5M 64k")
    qemu_img("create", "-f", "qcow2", "-o", "extended_l2=on",
             "-b", mid, "-F", "qcow2", top, "8M")
    qemu_io(top, "qcow2", "write 3078k 2k", "write -z 64k 2k", "write -c 2M 64k",
            "write -z 260k 4k", "write 7M 6k")
    return base, mid, top


def qemu_cmd(path, fmt):
    return ["[", "qemu-nbd", "-r", "-A", "-f", fmt, path, "]"]


def nbdinfo_map(target):
    return h.run(["nbdinfo", f"--map={CONTEXT}", *target]).stdout


def contexts(target):
    import json
    info = json.loads(h.run(["nbdinfo", "--json", *target]).stdout)
    return sorted(info["exports"][0].get("contexts", []))


def statuses(connect, size, flags):
    """Each block status reply for CONTEXT over the image, asked from a few
    offsets: [(offset, [len, depth, ...])]."""
    c = nbd.NBD()
    c.add_meta_context(CONTEXT)
    connect(c)
    assert c.can_meta_context(CONTEXT)
    out = []
    for off in range(0, size, 62 * K):
        got = []

        def cb(metacontext, offset, entries, err):
            if metacontext == CONTEXT:
                got.extend(entries)

        c.block_status(min(size - off, 3 * 1024 * K), off, cb, flags)
        out.append((off, got))
    c.shutdown()
    return out


def compare(tmp, path, fmt, extra=("-A",)):
    qemu = qemu_cmd(path, fmt)
    size = int(h.run(["nbdinfo", "--size", "--", *qemu]).stdout)
    with h.Server(tmp, path, fmt=fmt, read_only=True, extra=list(extra)) as srv:
        mine, ref = nbdinfo_map([srv.uri()]), nbdinfo_map(["--", *qemu])
        assert mine == ref, f"{path}:\n{mine}\nqemu-nbd:\n{ref}"
        assert contexts([srv.uri()]) == contexts(["--", *qemu]), contexts([srv.uri()])
        for flags in (0, nbd.CMD_FLAG_REQ_ONE):
            m = statuses(lambda c: c.connect_uri(srv.uri()), size, flags)
            r = statuses(lambda c: c.connect_systemd_socket_activation(qemu[1:-1]), size, flags)
            assert m == r, f"{path} flags {flags}:\n{m}\nqemu-nbd:\n{r}"
    return mine


def test_chains(tmp):
    base, mid, top = make_chain(tmp)
    depths = {}
    for path in (base, mid, top):
        out = compare(tmp, path, "qcow2")
        depths[path] = {int(line.split()[2]) for line in out.splitlines()}
    # The chains are what they claim: every depth of each chain occurs.
    assert depths[base] == {0, 1}, depths
    assert depths[mid] == {0, 1, 2}, depths
    assert depths[top] == {0, 1, 2, 3}, depths


def test_raw(tmp):
    raw = os.path.join(tmp, "disk.raw")
    h.make_sparse_image(raw, 4 * 1024 * K + 512, [(64 * K, 4 * K)])
    compare(tmp, raw, "raw")
    over = os.path.join(tmp, "over.qcow2")
    qemu_img("create", "-f", "qcow2", "-b", raw, "-F", "raw", over, "6M")
    qemu_io(over, "qcow2", "write 1M 64k")
    compare(tmp, over, "qcow2")


def test_yaml_and_absent(tmp):
    base, mid, top = make_chain(tmp)
    cfg = os.path.join(tmp, "qnbd.yaml")
    with open(cfg, "w") as f:
        f.write(f"listen: {{unix: {os.path.join(tmp, 'nbd.sock')}, tcp: false}}\n"
                "exports:\n"
                f"  - {{name: d, path: {top}, format: qcow2, read_only: true,"
                " allocation_depth: true}\n"
                f"  - {{name: n, path: {mid}, format: qcow2, read_only: true}}\n")
    with h.Server(tmp, config=cfg) as srv:
        assert nbdinfo_map([srv.uri("d")]) == nbdinfo_map(["--", *qemu_cmd(top, "qcow2")])
        # Not asked for: not offered, as qemu-nbd without -A.
        assert CONTEXT not in contexts([srv.uri("n")])


if __name__ == "__main__":
    h.main([test_chains, test_raw, test_yaml_and_absent])
