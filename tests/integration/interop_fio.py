#!/usr/bin/python3
"""fio's nbd engine: random 4k writes at depth 16 with crc32c verification,
then the served file is checked against what fio read back."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qnbd_harness as h  # noqa: E402

SIZE = 16 * h.MiB


def fio(cwd, uri, *extra):
    argv = ["fio", "--name=qnbd", "--ioengine=nbd", f"--uri={uri}", "--output-format=json",
            "--size=16m", "--bs=4k", "--iodepth=16"] + list(extra)
    # fio leaves verify state files in its working directory.
    out = h.run(argv, timeout=90, cwd=cwd).stdout
    return json.loads(out[out.index("{"):])  # the nbd engine may print a banner first


def assert_clean(report, direction):
    job = report["jobs"][0]
    assert job["error"] == 0, job
    assert job[direction]["io_bytes"] > 0, job[direction]
    return job


def test_fio_randwrite_verify(tmp):
    image = h.make_sparse_image(os.path.join(tmp, "disk.raw"), SIZE, [])
    with h.Server(tmp, image, tcp=True, unix=False) as srv:
        job = assert_clean(fio(tmp, srv.tcp_uri(), "--rw=randwrite", "--verify=crc32c",
                               "--do_verify=1", "--verify_fatal=1"), "write")
        assert job["write"]["io_bytes"] == SIZE, job["write"]
        # A second, separate fio run re-verifies what the first left on the server.
        assert_clean(fio(tmp, srv.tcp_uri(), "--rw=randwrite", "--verify=crc32c",
                         "--verify_only=1", "--verify_fatal=1"), "read")
    # Every 4k block fio wrote carries its verify header: none may still be a hole.
    with open(image, "rb") as f:
        blocks = [f.read(4096) for _ in range(SIZE // 4096)]
    assert all(b != bytes(4096) for b in blocks), "some fio writes never reached the file"


def test_fio_mixed_rw_several_jobs_unix(tmp):
    image = h.make_sparse_image(os.path.join(tmp, "disk.raw"), SIZE, [(0, SIZE)])
    with h.Server(tmp, image) as srv:
        report = fio(tmp, srv.unix_uri(), "--rw=randrw", "--numjobs=4", "--group_reporting",
                     "--verify=crc32c", "--do_verify=1", "--verify_fatal=1",
                     "--offset_increment=4m", "--size=4m")
        job = report["jobs"][0]
        assert job["error"] == 0, job
        assert job["read"]["io_bytes"] > 0 and job["write"]["io_bytes"] > 0, job


if __name__ == "__main__":
    h.main([test_fio_randwrite_verify, test_fio_mixed_rw_several_jobs_unix])
