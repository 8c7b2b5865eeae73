#!/usr/bin/python3
"""Short write / ENOSPC: the server runs with RLIMIT_FSIZE a little above the
image's size (and SIGXFSZ ignored), so writes that would grow the file past it
fail with EFBIG, one of them part-way (a short write). Required:
- the client gets an error reply with ENOSPC, not a hang or a disconnect;
- the server keeps running and the connection keeps serving reads of earlier data;
- after a SIGKILL and a restart without the limit, `qemu-img check` finds no
  corruption and every acknowledged, flushed write reads back (via qemu and qnbd);
- the restarted server allocates again normally.

    QNBD=build/server/qnbd /usr/bin/python3 enospc_test.py --format qcow2
"""
import argparse
import errno
import os
import subprocess
import sys
import tempfile

import nbd

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from qnbd_server import Server, is_reference  # noqa: E402

import crash_images as ci
from crash_model import BLOCK, ImageModel, Op, ZERO, render, stamp
from crash_test import compare

SEED = 4242
CLUSTER_BLOCKS = ci.BLOCKS_PER_CLUSTER
# 4 KiB but not cluster aligned: one 64 KiB write is cut short (a short write)
# without tearing a 4 KiB block, which the model could not attribute.
HEADROOM = 1 * ci.MiB + 3 * BLOCK


class Recorder:
    """Synchronous requests, recorded in an ImageModel like the crash workload."""

    def __init__(self, h, model):
        self.h, self.model, self.tick = h, model, 0
        self.first_error = None

    def _op(self, kind, first, count):
        op = Op(len(self.model.ops), kind, first, count, False)
        self.tick += 1
        op.issued = self.tick
        self.model.add(op)
        return op

    def _run(self, op, call):
        try:
            call()
        except nbd.Error as e:
            op.error = e.args[1]  # .errno is the name, args[1] the number
            self.first_error = self.first_error or (op, e)
            return False
        self.tick += 1
        op.acked = self.tick
        return True

    def write(self, first, count):
        op = self._op("write", first, count)
        data = b"".join(render(stamp(SEED, op.index, b)) for b in range(first, first + count))
        return self._run(op, lambda: self.h.pwrite(data, first * BLOCK))

    def flush(self):
        return self._run(self._op("flush", 0, 0), self.h.flush)


def limit_for(image, fmt):
    if fmt == "raw":
        return ci.VIRTUAL_SIZE // 2 + HEADROOM  # a raw file never grows: cut its upper half
    return os.path.getsize(image) + HEADROOM


def fill_until_error(rec, fmt):
    """Allocating 64 KiB writes, FLUSH after every fourth, until a request fails."""
    start = ci.BLOCKS // 2 - 8 * CLUSTER_BLOCKS if fmt == "raw" else 0
    for i in range(ci.BLOCKS // CLUSTER_BLOCKS):
        first = start + i * CLUSTER_BLOCKS
        if first + CLUSTER_BLOCKS > ci.BLOCKS:
            break
        if not rec.write(first, CLUSTER_BLOCKS):
            return
        if i % 4 == 3 and not rec.flush():
            return
    raise AssertionError("no request failed although the file size limit was reached")


def run(fmt, top):
    image = os.path.join(top, "image." + fmt)
    if fmt == "raw":
        with open(image, "wb") as f:
            f.truncate(ci.VIRTUAL_SIZE)
    else:
        ci.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"cluster_size={ci.CLUSTER}",
                image, str(ci.VIRTUAL_SIZE)])
    model = ImageModel(SEED, [ZERO] * ci.BLOCKS, [ZERO] * ci.BLOCKS)
    limit = limit_for(image, fmt)
    server = Server(top, image, fmt=fmt, file_size_limit=limit).start()
    try:
        h = nbd.NBD()
        h.connect_unix(server.sock)
        rec = Recorder(h, model)
        fill_until_error(rec, fmt)
        op, err = rec.first_error
        print(f"{fmt}: first error after {op.index} requests: {op} -> {err}")
        if err.args[1] != errno.ENOSPC:
            raise AssertionError(f"error reply {err} to {op}, expected ENOSPC")
        if not server.alive():
            raise AssertionError("server died after the ENOSPC error\n" + server.log_tail())
        durable = model.durable_ops()
        for o in model.ops:  # the same connection still serves flushed data
            if o.index in durable:
                got = h.pread(o.count * BLOCK, o.first * BLOCK)
                if got != b"".join(render(stamp(SEED, o.index, b))
                                   for b in range(o.first, o.first + o.count)):
                    raise AssertionError(f"after ENOSPC, read of {o} returned other data")
        if not durable:
            raise AssertionError("nothing was flushed before the error: limit too small")
        rec.write(ci.BLOCKS - 40, 1)  # past the limit as well: must fail cleanly again
        if model.ops[-1].error != errno.ENOSPC:
            raise AssertionError(f"second write past the limit: {model.ops[-1]}")
        if not server.alive():
            raise AssertionError("server died after the second ENOSPC\n" + server.log_tail())
        server.kill()
        del h
    finally:
        if server.pid is not None:
            server.kill()
    verify_after_restart(fmt, image, model, durable, top)


def verify_after_restart(fmt, image, model, durable, top):
    if fmt == "qcow2":
        check = ci.qemu_img_check(image)
        if check.rc not in (0, 3) or check.errors:
            raise AssertionError(f"corruption after ENOSPC and kill\n{check}")
        bad = compare(ci.read_image(image, fmt, top), model, durable, "qemu after ENOSPC")
        if bad:
            raise AssertionError("\n".join(bad))
        print(f"{fmt}: qemu-img check exit {check.rc} ({check.leaks} leaks), data as acknowledged")
    server = Server(top, image, fmt=fmt).start()
    try:
        h = nbd.NBD()
        h.connect_unix(server.sock)
        rec = Recorder(h, model)
        restart_first = len(model.ops)
        chunk = 4 * ci.MiB
        data = b"".join(h.pread(chunk, off) for off in range(0, ci.VIRTUAL_SIZE, chunk))
        bad = compare(data, model, durable, "qnbd restarted after ENOSPC")
        if bad:
            raise AssertionError("\n".join(bad))
        for first in (ci.BLOCKS - 3 * CLUSTER_BLOCKS, ci.BLOCKS - 1):  # now the file may grow
            if not rec.write(first, 1):
                raise AssertionError(f"write after restart without limit: {rec.first_error}")
        if not rec.flush():
            raise AssertionError(f"flush after restart failed: {rec.first_error}")
        del h
        server.stop()
    finally:
        if server.pid is not None:
            server.kill()
    durable = durable | {o.index for o in model.ops[restart_first:] if o.kind == "write"}
    if fmt == "qcow2":
        check = ci.qemu_img_check(image)
        if check.rc not in (0, 3) or check.errors:
            raise AssertionError(f"corruption after restart\n{check}")
        bad = compare(ci.read_image(image, fmt, top), model, durable, "qemu after restart")
        if bad:
            raise AssertionError("\n".join(bad))
    print(f"{fmt}: restarted server reads every acknowledged write and allocates again")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--format", choices=["raw", "qcow2"], required=True)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="qnbd-enospc-", dir=ci.scratch_root()) as top:
        try:
            run(args.format, top)
        except (AssertionError, nbd.Error, OSError, subprocess.SubprocessError) as e:
            print(f"FAIL {args.format}: {e}")
            return 1
    server = "qemu-nbd (reference)" if is_reference() else "qnbd"
    print(f"ENOSPC {args.format}: passed against {server}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
