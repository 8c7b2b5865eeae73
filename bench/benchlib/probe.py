"""What the qnbd binary can do (does it serve raw / qcow2 correctly, does it have
--lazy-refcounts), and the noise-free per-request figures: callgrind
instructions per request and strace syscalls per request."""
import os
import re
import signal
import subprocess
import time

from . import images, workloads
from .servers import Server, ServerError, Target, _connectable

PATTERN = 0x5A


def _serves(qnbd, fmt, rundir):
    """None if qnbd serves a small image made by qemu-img/qemu-io with the right
    bytes, else the error."""
    import nbd
    path = os.path.join(rundir, f"probe.{fmt}")
    if os.path.exists(path):
        os.unlink(path)
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, path, "8M"], check=True)
    subprocess.run(["qemu-io", "-f", fmt, "-c", f"write -q -P {PATTERN} 1M 64k", path],
                   check=True)
    srv = Server(Target("probe", "qnbd", "writeback"), qnbd, path, fmt, rundir)
    try:
        srv.start(timeout=20)
        h = nbd.NBD()
        h.connect_uri(srv.uri)
        data, size = h.pread(65536, 1 << 20), h.get_size()
        h.shutdown()
        if size != 8 << 20 or data != bytes([PATTERN]) * 65536:
            return f"qnbd serves {fmt} wrongly (size {size}, data mismatch)"
        return None
    except (ServerError, OSError, nbd.Error) as e:
        return f"qnbd cannot serve {fmt}: {str(e)[:300]}"
    finally:
        try:
            srv.stop(timeout=20)
        except (ServerError, OSError):
            pass
        os.unlink(path)


def probe_qnbd(qnbd, rundir):
    if not (qnbd and os.access(qnbd, os.X_OK)):
        err = f"no qnbd binary at {qnbd}"
        return {"raw": err, "qcow2": err, "lazy": False}
    helptext = subprocess.run([qnbd, "--help"], capture_output=True, text=True)
    helptext = helptext.stdout + helptext.stderr
    return {"raw": _serves(qnbd, "raw", rundir), "qcow2": _serves(qnbd, "qcow2", rundir),
            "lazy": "--lazy-refcounts" in helptext}


def _fg_command(t, qnbd, image, sock):
    """Foreground (no --fork) server command, for running under valgrind."""
    if t.kind == "qnbd":
        return [qnbd, "-k", sock, "-f", "qcow2", "--cache", t.cache, "--log-level", "warn", image]
    cmd = ["qemu-nbd", "-k", sock, "-f", "qcow2", "-t", "-e", "0", f"--cache={t.cache}"]
    return cmd + (["--aio=native"] if t.cache == "none" else []) + [image]


def _callgrind_total(t, qnbd, image, rundir, w, n):
    sock = os.path.join(rundir, "cg.sock")
    if os.path.exists(sock):
        os.unlink(sock)
    out = os.path.join(rundir, "callgrind.out")
    log = os.path.join(rundir, "callgrind.log")
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
           f"--log-file={log}"] + _fg_command(t, qnbd, image, sock)
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not _connectable(sock):
            if p.poll() is not None or time.monotonic() > deadline:
                raise ServerError(f"{t.name} under valgrind did not serve: "
                                  f"{open(log).read()[-300:]}")
            time.sleep(0.1)
        fio = subprocess.run(workloads_fio(w, f"nbd+unix:///?socket={sock}", n),
                             capture_output=True, text=True)
        if fio.returncode != 0:
            raise ServerError(f"fio under callgrind failed: {fio.stderr[-200:]}")
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=300)
    m = re.search(r"Collected\s*:\s*(\d+)", open(log).read())
    if not m:
        raise ServerError(f"{t.name}: no callgrind total in {log}")
    return int(m.group(1))


def workloads_fio(w, uri, n):
    from .drivers import fio_args
    return fio_args(w, uri, 0, number_ios=n) + ["--output-format=terse"]


def callgrind(bench, w, targets, n1=2000, n2=12000):
    """Instructions per request = (total(n2) - total(n1)) / (n2 - n1): start-up and
    shutdown cancel out. User-space instructions only (not the kernel's work)."""
    lines = [f"== callgrind: user-space instructions per request, {w.name} ({w.desc}), "
             f"(I({n2}) - I({n1})) / {n2 - n1}"]
    image = bench.imgs.path(w.image)
    for t in targets:
        err = bench.unavailable(w, t)
        if err:
            lines.append(f"   {t.name:<16}n/a: {err}")
            continue
        try:
            i1 = _callgrind_total(t, bench.qnbd, image, bench.rundir, w, n1)
            i2 = _callgrind_total(t, bench.qnbd, image, bench.rundir, w, n2)
            lines.append(f"   {t.name:<16}{(i2 - i1) / (n2 - n1):,.0f} instructions/request")
        except (ServerError, OSError, subprocess.TimeoutExpired) as e:
            lines.append(f"   {t.name:<16}failed: {str(e)[:300]}")
    return lines


def strace_counts(bench, w, targets, n=20000):
    """Syscalls per request with strace -f -c attached to the running server.
    io_uring work submitted without a syscall is invisible here (that is the point:
    fewer syscalls per request), and so are syncs done through io_uring."""
    lines = [f"== strace -f -c: syscalls per request, {w.name} ({w.desc}), {n} requests"]
    for t in targets:
        err = bench.unavailable(w, t)
        if err:
            lines.append(f"   {t.name:<16}n/a: {err}")
            continue
        path = bench.imgs.path(w.image) if w.image in images.SHARED else \
            bench.imgs.fresh(w.image, t.lazy and t.kind == "qemu",
                             os.path.join(bench.rundir, "image.qcow2"))
        fmt = bench.imgs.fmt(w.image) if w.image in images.SHARED else "qcow2"
        srv = Server(t, bench.qnbd, path, fmt, bench.rundir)
        out = os.path.join(bench.rundir, "strace.out")
        try:
            srv.start()
            st = subprocess.Popen(["strace", "-f", "-c", "-o", out, "-p", str(srv.pid)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            while "attached" not in (st.stderr.readline() or "attached"):
                pass
            time.sleep(0.5)  # let strace attach to every thread before the load starts
            subprocess.run(workloads_fio(w, srv.uri, n), capture_output=True, check=True)
            st.send_signal(signal.SIGINT)
            st.wait(timeout=60)
            srv.stop()
            lines.append(f"   {t.name:<16}{_strace_summary(out, n)}")
        except (ServerError, OSError, subprocess.SubprocessError) as e:
            lines.append(f"   {t.name:<16}failed: {str(e)[:300]}")
            try:
                srv.stop()
            except (ServerError, OSError):
                pass
        if w.image not in images.SHARED and os.path.exists(path):
            os.unlink(path)
    return lines


def _strace_summary(path, n):
    calls, top = 0, []
    for line in open(path):
        f = line.split()
        if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
            c = int(f[3])
            calls += c
            top.append((c, f[-1]))
    top.sort(reverse=True)
    syncs = sum(c for c, name in top if name in ("fsync", "fdatasync", "sync_file_range"))
    best = ", ".join(f"{name} {c / n:.2f}" for c, name in top[:4])
    return f"{calls / n:.2f} syscalls/request ({best}); fsync+fdatasync/request {syncs / n:.2f}"


def profile(bench, say):
    say("-- profile: callgrind and strace")
    tg = workloads.TARGETS["std"]
    wl = {w.name: w for w in workloads.WORKLOADS}
    cg_targets = (workloads.QNBD_WB, workloads.QEMU_WB)
    out = callgrind(bench, wl["a-qd1"], cg_targets)
    for name in ("a-qd1", "a-qd32", "b"):
        out += strace_counts(bench, wl[name], tg)
    for name in ("c", "d"):  # allocating writes: where the loop may block
        out += strace_counts(bench, wl[name], tg, n=3000)
    out += strace_counts(bench, wl["f"], workloads.TARGETS["flush"], n=500)
    for line in out:
        say(line)
    return ["\n".join(out)]
