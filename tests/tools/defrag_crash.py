"""SIGKILL at random points of `qnbd-img defrag`: after each kill the image
reads exactly as before (qemu-img compare), qemu-img check finds no
corruption (leaked clusters are allowed: a move killed after its copy was
counted), and after `check -r leaks` a second defrag completes, checks
clean and leaves the same content. Kill points: after a random number of
cycles (one progress line each), plus a random delay inside the next one.
QNBD_DEFRAG_CRASH_ITERATIONS sets the number of kills (default 6)."""
import os
import random
import shutil
import signal
import subprocess
import time

from imgtest import QNBD_IMG, check, check_eq, cleanup, finish, qemu_img, qnbd, run, tmpdir

WORK = tmpdir()
ITERATIONS = int(os.environ.get("QNBD_DEFRAG_CRASH_ITERATIONS", "6"))


def path(name):
    return os.path.join(WORK, name)


def prepare():
    """Random-order writes, a snapshot, more writes, trims: every kind of move."""
    img = path("orig.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", img, "4M")
    rng = random.Random(11)
    order = list(range(1024))
    rng.shuffle(order)
    cmds = [f"write -P {i % 250 + 1} {i * 4}k 4k" for i in order[:200]]
    run("qemu-io", "-f", "qcow2", img, input="\n".join(cmds) + "\n")
    qemu_img("snapshot", "-c", "s1", img)
    more = [f"write -P {i % 200 + 7} {i * 4}k 4k" for i in order[100:900]]
    more += ["write -P 0x77 3M 256k"]
    more += [f"discard {i * 64}k 64k" for i in sorted(rng.sample(range(64), 16))]
    run("qemu-io", "-f", "qcow2", img, input="\n".join(more) + "\n")
    run("qemu-img", "convert", "-l", "snapshot.name=s1", "-O", "raw", img, path("s1.raw"))
    return img


def snapshot_same(img, label):
    run("qemu-img", "convert", "-l", "snapshot.name=s1", "-O", "raw", img, path("s1.now.raw"))
    rc, out, _ = qemu_img("compare", "-f", "raw", "-F", "raw", path("s1.raw"),
                          path("s1.now.raw"), ok=None)
    check_eq(rc, 0, f"{label}: snapshot s1 unchanged ({out.strip()})")


def defrag_killed(img, cycles, delay):
    """Starts defrag, lets `cycles` progress updates pass, waits `delay`, kills."""
    p = subprocess.Popen([QNBD_IMG, "defrag", "-p", "--batch", "16k", img],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = 0
    while seen < cycles:
        b = p.stdout.read(1)
        if not b:
            break
        seen += b == b"\r"
    time.sleep(delay)  # a random kill point inside the next cycle, not synchronisation
    p.send_signal(signal.SIGKILL)
    p.communicate()
    return p.returncode, seen


def main():
    orig = prepare()
    rng = random.Random(int(os.environ.get("QNBD_DEFRAG_CRASH_SEED", "5")))
    killed = 0
    for it in range(ITERATIONS):
        img = path(f"crash{it}.qcow2")
        shutil.copy(orig, img)
        rc, seen = defrag_killed(img, rng.randint(1, 150), rng.random() * 0.002)
        killed += rc == -signal.SIGKILL
        label = f"iteration {it} (killed after {seen} cycles, rc {rc})"
        rc, out, err = qemu_img("check", img, ok=None)
        check(rc in (0, 3) and "ERROR" not in out + err, f"{label}: qemu-img check rc {rc}: {out}")
        rc, out, _ = qemu_img("compare", orig, img, ok=None)
        check_eq(rc, 0, f"{label}: content after the kill ({out.strip()})")
        qnbd("check", "-r", "leaks", img, ok=(0, 3))
        qnbd("defrag", "-q", img)
        rc, out, _ = qemu_img("check", img, ok=None)
        check_eq(rc, 0, f"{label}: check after a complete defrag ({out.strip()})")
        rc, out, _ = qemu_img("compare", orig, img, ok=None)
        check_eq(rc, 0, f"{label}: content after a complete defrag ({out.strip()})")
        snapshot_same(img, label)
        os.unlink(img)
    check(killed >= ITERATIONS // 2, f"only {killed} of {ITERATIONS} runs were killed mid-way")
    cleanup(WORK)
    finish()


main()
