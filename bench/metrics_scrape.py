#!/usr/bin/python3
"""What scraping /metrics costs the data path (a benchmark, not a test).

Serves one fully allocated qcow2 image with --metrics and runs fio 4k random
reads (ioengine=nbd, Unix socket) in rounds, alternating: no scraper, then a
scraper fetching /metrics at 10 Hz for the whole round (Prometheus scrapes
every 15 s by default, so 10 Hz is 150x the usual load). Prints each round's
IOPS, the medians and the ratio with/without; a ratio near 1.00 within the
round-to-round spread means scraping costs nothing measurable.

    bench/metrics_scrape.py [--qnbd build-release/server/qnbd] [--rounds 3]
                            [--runtime 10] [--iodepth 32] [--size 512M]
"""
import argparse
import json
import os
import select
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fio(uri, runtime, iodepth, out):
    subprocess.run(["fio", "--name=r", "--ioengine=nbd", f"--uri={uri}", "--rw=randread",
                    "--bs=4k", f"--iodepth={iodepth}", "--time_based", f"--runtime={runtime}",
                    "--output-format=json", f"--output={out}"], check=True,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    with open(out) as f:
        return json.load(f)["jobs"][0]["read"]["iops"]


class Scraper(threading.Thread):
    """GET /metrics every 0.1 s until stopped; counts scrapes and their time."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.stop_event = threading.Event()
        self.count = 0
        self.seconds = 0.0
        self.size = 0

    def run(self):
        while not self.stop_event.wait(0.1):
            t = time.monotonic()
            with urllib.request.urlopen(self.url, timeout=5) as r:
                self.size = len(r.read())
            self.seconds += time.monotonic() - t
            self.count += 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qnbd", default=os.path.join(HERE, "..", "build-release", "server", "qnbd"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runtime", type=int, default=10)
    ap.add_argument("--iodepth", type=int, default=32)
    ap.add_argument("--size", default="512M")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="qnbd-metrics-bench-", dir="/var/tmp") as tmp:
        image = os.path.join(tmp, "disk.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "preallocation=full",
                        image, a.size], check=True)
        sock, port, pid_file = os.path.join(tmp, "nbd.sock"), free_port(), os.path.join(tmp, "pid")
        subprocess.run([a.qnbd, "--fork", "--pid-file", pid_file, "-k", sock, "-f", "qcow2",
                        "--metrics", f"127.0.0.1:{port}", image], check=True)
        with open(pid_file) as f:
            pid = int(f.read())
        uri = f"nbd+unix:///?socket={sock}"
        iops = {False: [], True: []}
        try:
            for r in range(a.rounds):
                for scraping in (False, True):
                    s = Scraper(port)
                    if scraping:
                        s.start()
                    v = fio(uri, a.runtime, a.iodepth, os.path.join(tmp, "fio.json"))
                    if scraping:
                        s.stop_event.set()
                        s.join()
                    iops[scraping].append(v)
                    extra = (f", {s.count} scrapes, {1000 * s.seconds / max(s.count, 1):.2f} ms "
                             f"each, {s.size} bytes") if scraping else ""
                    print(f"round {r + 1} {'with' if scraping else 'without'} scraper: "
                          f"{v:.0f} IOPS{extra}", flush=True)
        finally:
            fd = os.pidfd_open(pid)
            os.kill(pid, 15)
            select.select([fd], [], [], 30)  # exited: the image is written back
            os.close(fd)
        off, on = statistics.median(iops[False]), statistics.median(iops[True])
        spread = (max(iops[False]) - min(iops[False])) / off if off else 0
        print(f"median without {off:.0f} IOPS, with 10 Hz scraper {on:.0f} IOPS: "
              f"ratio {on / off:.3f} (round-to-round spread without: {100 * spread:.1f}%)")


if __name__ == "__main__":
    main()
