#!/usr/bin/python3
"""Persistent dirty bitmaps against QEMU: bitmaps made by qemu-img are kept
and recorded into while qnbd serves, read back by qemu-img and qemu-nbd -B;
a kill -9 leaves them in use (inconsistent), never clean and wrong."""
import os
import re
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbd  # noqa: E402
import qnbd_harness as h  # noqa: E402

SIZE = 64 * h.MiB
K64 = 64 * 1024


def qemu_img(*args):
    return h.run(["qemu-img", *args]).stdout


def make_image(tmp):
    path = os.path.join(tmp, "disk.qcow2")
    qemu_img("create", "-f", "qcow2", path, str(SIZE))
    qemu_img("bitmap", "--add", path, "b0")
    qemu_img("bitmap", "--add", "-g", "128k", "--disable", path, "b1")
    # Before qnbd: b0 records this write, b1 (disabled) does not.
    h.run(["qemu-io", "-f", "qcow2", "-c", "write 0 4k", path])
    return path


def bitmap_flags(path, share=False):
    """{name: (granularity, [flags])} as qemu-img info --output=json says."""
    import json
    args = ["info", "--output=json"] + (["-U"] if share else []) + [path]
    info = json.loads(qemu_img(*args))
    bms = info.get("format-specific", {}).get("data", {}).get("bitmaps", [])
    return {b["name"]: (b["granularity"], b["flags"]) for b in bms}


def parse_dirty(out):
    runs = []
    for line in out.splitlines():
        off, length, typ = (int(x) for x in line.split()[:3])
        if typ & 1:
            runs.append((off, length))
    return runs


def dirty_map(path, name):
    """The dirty ranges [(offset, length)] of bitmap `name` as qemu-nbd -B
    serves them (started by nbdinfo through socket activation)."""
    out = h.run(["nbdinfo", f"--map=qemu:dirty-bitmap:{name}", "--",
                 "[", "qemu-nbd", "-r", "-B", name, "-f", "qcow2", path, "]"]).stdout
    return parse_dirty(out)


def serve(tmp, path, extra=()):
    return h.Server(tmp, path, fmt="qcow2", extra=extra)


def writes(srv):
    c = nbd.NBD()
    c.connect_uri(srv.uri())
    c.pwrite(b"x" * 4096, h.MiB)  # one granule of b0
    c.zero(3 * K64, 8 * h.MiB)  # three
    c.trim(2 * K64, 16 * h.MiB)
    c.flush()
    c.shutdown()


EXPECTED_B0 = [(0, K64), (h.MiB, K64), (8 * h.MiB, 3 * K64), (16 * h.MiB, 2 * K64)]


def test_recorded_and_kept(tmp):
    path = make_image(tmp)
    before_b1 = dirty_map(path, "b1")
    with serve(tmp, path) as srv:
        writes(srv)
        # While qnbd has the image open, the recording bitmap is in use on disk.
        flags = bitmap_flags(path, share=True)
        assert flags["b0"][1] == ["in-use", "auto"], flags
        assert flags["b1"][1] == [], flags
    flags = bitmap_flags(path)
    assert flags == {"b0": (K64, ["auto"]), "b1": (2 * K64, [])}, flags
    qemu_img("check", path)
    assert dirty_map(path, "b0") == EXPECTED_B0, dirty_map(path, "b0")
    assert dirty_map(path, "b1") == before_b1


def test_kill_leaves_in_use(tmp):
    path = make_image(tmp)
    srv = serve(tmp, path).start()
    try:
        writes(srv)
    finally:
        srv.kill()
    flags = bitmap_flags(path)
    assert flags["b0"][1] == ["in-use", "auto"], flags
    qemu_img("check", path)
    # Reopened: the in-use bitmap is inconsistent; qnbd serves and writes
    # without trusting it, and leaves it in use, as QEMU does.
    with serve(tmp, path) as srv2:
        writes(srv2)
    flags = bitmap_flags(path)
    assert flags["b0"][1] == ["in-use", "auto"], flags
    assert flags["b1"][1] == [], flags
    qemu_img("check", path)


def test_read_only_untouched(tmp):
    path = make_image(tmp)
    before = h.sha256_file(path)
    with serve(tmp, path, extra=["-r"]) as srv:
        c = nbd.NBD()
        c.connect_uri(srv.uri())
        c.pread(4096, 0)
        c.shutdown()
    assert h.sha256_file(path) == before


def nbdinfo_map(context, uri_or_cmd):
    return h.run(["nbdinfo", f"--map={context}", *uri_or_cmd]).stdout


def contexts(uri_or_cmd):
    import json
    info = json.loads(h.run(["nbdinfo", "--json", *uri_or_cmd]).stdout)
    return info["exports"][0].get("contexts", [])


def test_export_equals_qemu_nbd(tmp):
    path = make_image(tmp)
    with serve(tmp, path) as srv:
        writes(srv)
    qemu = ["--", "[", "qemu-nbd", "-r", "-B", "b0", "-B", "b1", "-f", "qcow2", path, "]"]
    with serve(tmp, path, extra=["-r", "-B", "b0", "--bitmap=b1"]) as srv:
        for ctx in ("qemu:dirty-bitmap:b0", "qemu:dirty-bitmap:b1", "base:allocation"):
            mine, ref = nbdinfo_map(ctx, [srv.uri()]), nbdinfo_map(ctx, qemu)
            assert mine == ref, f"{ctx}:\n{mine}\nqemu-nbd:\n{ref}"
        assert sorted(contexts([srv.uri()])) == sorted(contexts(qemu)), contexts([srv.uri()])
        c = nbd.NBD()
        c.add_meta_context("qemu:dirty-bitmap:b0")
        c.add_meta_context("base:allocation")
        c.connect_uri(srv.uri())
        seen = {}

        def cb(metacontext, offset, entries, err):
            seen[metacontext] = list(entries)

        c.block_status(4 * h.MiB, 0, cb, nbd.CMD_FLAG_REQ_ONE)
        assert seen["qemu:dirty-bitmap:b0"] == [K64, 1], seen
        assert len(seen["base:allocation"]) == 2, seen
        c.block_status(2 * h.MiB, 16 * h.MiB - K64, cb)
        assert seen["qemu:dirty-bitmap:b0"] == [K64, 0, 2 * K64, 1, 2 * h.MiB - 3 * K64, 0], seen
        c.shutdown()


def test_bad_bitmap_refused_at_start(tmp):
    path = make_image(tmp)
    for extra in (["-B", "nope"],):
        srv = serve(tmp, path, extra=extra)
        try:
            srv.start()
        except AssertionError as e:
            assert "Bitmap 'nope' is not found" in open(srv.log).read(), e
        else:
            srv.stop()
            raise AssertionError("qnbd served an image without the bitmap")


if __name__ == "__main__":
    h.main([test_recorded_and_kept, test_kill_leaves_in_use, test_read_only_untouched,
            test_export_equals_qemu_nbd, test_bad_bitmap_refused_at_start])
