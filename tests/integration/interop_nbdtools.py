#!/usr/bin/python3
"""Interop with libnbd's tools: nbdinfo (--list, --map, socket activation) and nbdcopy."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qnbd_harness as h  # noqa: E402

SIZE = 32 * h.MiB
# 64 KiB-aligned so the file system's allocation granularity cannot blur the map.
DATA = [(0, 128 * 1024), (4 * h.MiB, 1 * h.MiB), (SIZE - 64 * 1024, 64 * 1024)]


def file_extents(path):
    """Ground truth from the file system: [(offset, length, is_data)] via SEEK_DATA/SEEK_HOLE."""
    out = []
    with open(path, "rb") as f:
        fd, size, pos = f.fileno(), os.fstat(f.fileno()).st_size, 0
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                data = size
            if data > pos:
                out.append((pos, data - pos, False))
            if data >= size:
                break
            hole = os.lseek(fd, data, os.SEEK_HOLE)
            out.append((data, hole - data, True))
            pos = hole
    return out


def merge(extents):
    merged = []
    for off, length, kind in extents:
        if merged and merged[-1][2] == kind and merged[-1][0] + merged[-1][1] == off:
            merged[-1] = (merged[-1][0], merged[-1][1] + length, kind)
        else:
            merged.append((off, length, kind))
    return merged


def test_nbdinfo_list_several_exports(tmp):
    exports = [
        {"name": "alpha", "path": h.make_sparse_image(os.path.join(tmp, "a.raw"), 16 * h.MiB, []),
         "description": "disk alpha"},
        {"name": "beta", "path": h.make_sparse_image(os.path.join(tmp, "b.raw"), 32 * h.MiB, []),
         "read_only": True},
        {"name": "gamma", "path": h.make_sparse_image(os.path.join(tmp, "c.raw"), 48 * h.MiB, []),
         "description": "third"},
    ]
    config = h.write_config(tmp, exports)
    with h.Server(tmp, config=config) as srv:
        out = json.loads(h.run(["nbdinfo", "--list", "--json", srv.unix_uri("")]).stdout)
    listed = {e["export-name"]: e for e in out["exports"]}
    assert sorted(listed) == ["alpha", "beta", "gamma"], listed.keys()
    for e in exports:
        got = listed[e["name"]]
        assert got["export-size"] == os.path.getsize(e["path"]), got
        assert got["is_read_only"] == bool(e.get("read_only")), got
        if "description" in e:
            assert got["description"] == e["description"], got
        else:
            assert got.get("description", "") == "", got
        assert "base:allocation" in got["contexts"], got


def test_nbdinfo_single_export(tmp):
    image = h.make_sparse_image(os.path.join(tmp, "disk.raw"), SIZE, DATA)
    with h.Server(tmp, image, name="disk", description="the disk", read_only=True) as srv:
        e = json.loads(h.run(["nbdinfo", "--json", srv.unix_uri()]).stdout)["exports"][0]
    assert e["export-name"] == "disk"
    assert e["description"] == "the disk"
    assert e["export-size"] == SIZE
    assert e["is_read_only"] is True
    assert e["can_trim"] is False and e["can_zero"] is False, e
    bmin, bpref, bmax = e["block_size_minimum"], e["block_size_preferred"], e["block_size_maximum"]
    assert bmin >= 1 and bmin & (bmin - 1) == 0 and bmin <= 65536, e
    assert bpref >= max(bmin, 512) and bpref & (bpref - 1) == 0, e
    assert bmax >= bpref and bmax >= h.MiB, e


def test_nbdinfo_map_sparse(tmp):
    image = h.make_sparse_image(os.path.join(tmp, "disk.raw"), SIZE, DATA)
    expected = merge(file_extents(image))
    assert len(expected) == 5, expected  # data, hole, data, hole, data
    with h.Server(tmp, image) as srv:
        out = json.loads(h.run(["nbdinfo", "--map", "--json", srv.unix_uri()]).stdout)
    got = []
    for e in out:
        assert e["type"] in (0, 3), e  # data, or hole|zero; never hole without zero here
        got.append((e["offset"], e["length"], e["type"] == 0))
    assert merge(got) == expected, (got, expected)


def test_nbdinfo_socket_activation(tmp):
    image = h.make_sparse_image(os.path.join(tmp, "disk.raw"), SIZE, DATA)
    argv = [h.server_binary(), "-f", "raw"]
    if h.is_reference():
        argv.append("-t")
    out = h.run(["nbdinfo", "--json", "--", "["] + argv + [image, "]"]).stdout
    e = json.loads(out)["exports"][0]
    assert e["export-size"] == SIZE, e


def test_nbdcopy_both_directions(tmp):
    image = h.make_sparse_image(os.path.join(tmp, "disk.raw"), SIZE, DATA)
    served_before = h.sha256_file(image)
    src = h.make_sparse_image(os.path.join(tmp, "src.raw"), SIZE, DATA + [(9 * h.MiB, 3 * h.MiB)], seed=3)
    out = os.path.join(tmp, "out.raw")
    with h.Server(tmp, image) as srv:
        h.run(["nbdcopy", srv.unix_uri(), out])
        assert h.sha256_file(out) == served_before, "nbdcopy from qnbd differs from the file"
        h.run(["nbdcopy", "--connections=4", "--requests=16", src, srv.unix_uri()])
        back = os.path.join(tmp, "back.raw")
        h.run(["nbdcopy", srv.unix_uri(), back])
    assert h.sha256_file(image) == h.sha256_file(src), "nbdcopy to qnbd did not land in the file"
    assert h.sha256_file(back) == h.sha256_file(src)


def test_nbdcopy_sparse_destination_zeroes(tmp):
    # Copying a mostly-empty source over a full image makes nbdcopy use zero/trim.
    image = h.make_sparse_image(os.path.join(tmp, "disk.raw"), SIZE, [(0, SIZE)], seed=5)
    src = h.make_sparse_image(os.path.join(tmp, "src.raw"), SIZE, DATA, seed=6)
    with h.Server(tmp, image) as srv:
        h.run(["nbdcopy", "--flush", src, srv.unix_uri()])
    assert h.sha256_file(image) == h.sha256_file(src)


if __name__ == "__main__":
    h.main([test_nbdinfo_list_several_exports, test_nbdinfo_single_export,
            test_nbdinfo_map_sparse, test_nbdinfo_socket_activation,
            test_nbdcopy_both_directions, test_nbdcopy_sparse_destination_zeroes])
