#!/usr/bin/python3
"""Online defragmentation (--defrag auto) through a real qnbd server.

1. A randomly written image with trimmed holes, served with --defrag auto at
   a low rate: a client writes and zeroes in bursts between the pass's
   progress lines (the pass pauses while the client is busy, so the bursts
   land on clusters before, during and after their moves). When the log says
   the pass is done, every byte reads as the client's model, and after
   SIGTERM qemu-img check is clean, the file shrank, and qemu-img compare
   with the model holds.
2. SIGKILL during passes (after a random number of progress lines): the
   image reads as before and qemu-img check finds no corruption (leaks
   allowed), repeated QNBD_DEFRAG_KILLS times (default 4).
"""
import os
import random
import subprocess
import sys
import tempfile
import time

import nbd

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from qnbd_server import Server  # noqa: E402

CLUSTER = 64 * 1024
CLUSTERS = 256
failures = []


def run(*args, ok=(0,)):
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if ok is not None and p.returncode not in ok:
        raise AssertionError(f"{args} -> {p.returncode}: {p.stdout}{p.stderr}")
    return p


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what, flush=True)


def make_image(path, seed):
    """Random order writes, then trims: fragmented, with reclaimable space."""
    run("qemu-img", "create", "-q", "-f", "qcow2", path, str(CLUSTERS * CLUSTER))
    rng = random.Random(seed)
    order = list(range(CLUSTERS))
    rng.shuffle(order)
    model = bytearray(CLUSTERS * CLUSTER)
    cmds = []
    for i in order:
        cmds.append(f"write -q -P {i % 250 + 1} {i * CLUSTER} {CLUSTER}")
        model[i * CLUSTER:(i + 1) * CLUSTER] = bytes([i % 250 + 1]) * CLUSTER
    for i in rng.sample(range(CLUSTERS), CLUSTERS // 4):
        cmds.append(f"discard -q {i * CLUSTER} {CLUSTER}")
        model[i * CLUSTER:(i + 1) * CLUSTER] = bytes(CLUSTER)
    subprocess.run(["qemu-io", "-f", "qcow2", path], input="\n".join(cmds) + "\n", text=True,
                   check=True, capture_output=True)
    return model


def wait_log(srv, needle, count, deadline):
    """Waits until `needle` appears `count` times in the server log (or the pass ends)."""
    while time.monotonic() < deadline:
        text = open(srv.log, errors="replace").read()
        if text.count(needle) >= count or "defrag: pass done" in text:
            return text.count(needle)
        srv.assert_alive()
        time.sleep(0.01)  # polling a log file for a line, with a deadline
    raise AssertionError(f"no '{needle}' #{count} in the log: {srv.log_tail()}")


def write_model(model, path):
    with open(path, "wb") as f:
        f.write(model)


def client_during_pass(work):
    img = os.path.join(work, "online.qcow2")
    model = make_image(img, 1)
    size_before = os.path.getsize(img)
    rng = random.Random(2)
    extra = ["--defrag", "auto", "--defrag-rate", "6M", "--log-level", "info"]
    with Server(work, img, fmt="qcow2", extra=extra) as srv:
        h = nbd.NBD()
        h.connect_uri(srv.uri())
        deadline = time.monotonic() + 120
        wait_log(srv, "defrag: pass starts", 1, deadline)
        seen = 0
        while "defrag: pass done" not in open(srv.log).read():
            for _ in range(8):
                c = rng.randrange(CLUSTERS)
                off = c * CLUSTER + rng.randrange(0, CLUSTER, 4096)
                if rng.random() < 0.2:
                    h.zero(4096, off)
                    model[off:off + 4096] = bytes(4096)
                else:
                    data = rng.randbytes(4096)
                    h.pwrite(data, off)
                    model[off:off + 4096] = data
            seen = wait_log(srv, "defrag: ", seen + 1, deadline)
        got = bytearray()
        for off in range(0, len(model), 1 << 20):
            got += h.pread(1 << 20, off)
        check(got == model, "online: the export reads as the client's model after the pass")
        h.shutdown()
        log = open(srv.log).read()
    check("defrag: pass done" in log, "online: the pass finished")
    r = run("qemu-img", "check", img, ok=None)
    check(r.returncode == 0, f"online: qemu-img check: {r.stdout}")
    raw = os.path.join(work, "model.raw")
    write_model(model, raw)
    r = run("qemu-img", "compare", "-F", "raw", img, raw, ok=None)
    check(r.returncode == 0, f"online: qemu-img compare with the model: {r.stdout}")
    size_after = os.path.getsize(img)
    check(size_after < size_before - CLUSTERS // 8 * CLUSTER,
          f"online: the file shrank ({size_before} -> {size_after})")


def kills(work, n):
    rng = random.Random(3)
    orig = os.path.join(work, "orig.qcow2")
    model = make_image(orig, 4)
    raw = os.path.join(work, "orig.raw")
    write_model(model, raw)
    for k in range(n):
        img = os.path.join(work, f"kill{k}.qcow2")
        run("cp", orig, img)
        extra = ["--defrag", "auto", "--defrag-rate", "32M", "--log-level", "info"]
        srv = Server(work, img, fmt="qcow2", extra=extra).start()
        wait_log(srv, "defrag: ", rng.randint(1, 6), time.monotonic() + 60)
        srv.kill()
        r = run("qemu-img", "check", img, ok=None)
        check(r.returncode in (0, 3) and "ERROR" not in r.stdout + r.stderr,
              f"kill {k}: qemu-img check rc {r.returncode}: {r.stdout}")
        r = run("qemu-img", "compare", "-F", "raw", img, raw, ok=None)
        check(r.returncode == 0, f"kill {k}: content after SIGKILL: {r.stdout}")
        os.unlink(img)


def main():
    with tempfile.TemporaryDirectory(prefix="qnbd-defrag-", dir="/dev/shm") as work:
        client_during_pass(work)
        kills(work, int(os.environ.get("QNBD_DEFRAG_KILLS", "4")))
    print(f"{len(failures)} failed")
    sys.exit(1 if failures else 0)


main()
