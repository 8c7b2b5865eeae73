"""Load generators: fio's nbd engine, and a small libnbd loop for FUA writes
(fio's nbd engine cannot set the FUA flag). Both return the same dict."""
import json
import random
import subprocess
import time


def fio_args(w, uri, runtime, number_ios=None):
    args = ["fio", "--name=w", "--ioengine=nbd", f"--uri={uri}", f"--rw={w.rw}",
            f"--bs={w.bs}", f"--iodepth={w.qd}", "--randrepeat=1", "--norandommap"]
    if number_ios:
        # fio's number_ios does not stop a time_based or looping job; io_size does
        args.append(f"--io_size={number_ios * bs_bytes(w.bs)}")
    elif w.time_based:
        args += ["--time_based", f"--runtime={runtime}"]
    else:
        args += [f"--runtime={runtime}"]  # a cap: a fast target may finish the device
    if w.fsync:
        args.append("--fsync=1")
    if w.jobs > 1:
        args += [f"--numjobs={w.jobs}", "--group_reporting"]
    return args


def run_fio(w, uri, runtime, out_path):
    args = fio_args(w, uri, runtime) + ["--output-format=json", f"--output={out_path}"]
    p = subprocess.run(args, capture_output=True, text=True)
    if p.returncode != 0:
        return {"error": f"fio rc={p.returncode}: {(p.stderr or p.stdout).strip()[-300:]}"}
    job = json.load(open(out_path))["jobs"][0]
    d = job["write"] if w.writes else job["read"]
    if job.get("error"):
        return {"error": f"fio job error {job['error']}"}
    pct = d.get("clat_ns", {}).get("percentile", {})
    secs = max(job["job_runtime"], 1) / 1000.0
    moved = job["read"]["io_bytes"] + job["write"]["io_bytes"]
    return {"iops": d["iops"], "mib_s": d["bw_bytes"] / 2**20,
            "p99_us": pct.get("99.000000", 0) / 1000.0, "bytes": moved, "secs": secs,
            "ios": d["total_ios"], "client_cpu": job["usr_cpu"] + job["sys_cpu"]}


def bs_bytes(bs):
    mult = {"k": 1 << 10, "m": 1 << 20}
    return int(bs[:-1]) * mult[bs[-1].lower()] if bs[-1].isalpha() else int(bs)


def run_fua(w, uri, runtime, out_path):
    """QD1 random writes, each with NBD_CMD_FLAG_FUA, for `runtime` seconds."""
    import nbd  # /usr/bin/python3's libnbd binding
    h = nbd.NBD()
    h.connect_uri(uri)
    try:
        if not h.can_fua():
            return {"error": "server does not advertise FUA"}
        size, bs = h.get_size(), bs_bytes(w.bs)
        buf = random.Random(1).randbytes(bs)
        rng = random.Random(7)
        blocks = size // bs
        lat = []
        t0 = time.monotonic()
        end = t0 + runtime
        while True:
            t = time.monotonic()
            if t >= end:
                break
            h.pwrite(buf, rng.randrange(blocks) * bs, nbd.CMD_FLAG_FUA)
            lat.append(time.monotonic() - t)
        secs = time.monotonic() - t0
    finally:
        h.shutdown()
    lat.sort()
    n = len(lat)
    res = {"iops": n / secs, "mib_s": n * bs / secs / 2**20,
           "p99_us": lat[min(n - 1, int(n * 0.99))] * 1e6 if n else 0,
           "bytes": n * bs, "secs": secs, "ios": n}
    json.dump(res, open(out_path, "w"))
    return res


def run(w, uri, runtime, out_path):
    if w.rw == "fua":
        return run_fua(w, uri, runtime, out_path)
    return run_fio(w, uri, runtime, out_path)
