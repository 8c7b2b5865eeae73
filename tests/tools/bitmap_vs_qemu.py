"""qnbd-img bitmap against qemu-img bitmap: the same operations on twin
images give the same bitmaps (qemu-img info), the same dirty maps (qemu-nbd
-B, nbdinfo) and clean images (qemu-img check); errors as qemu-img's."""
import json
import os

from imgtest import check, check_eq, cleanup, finish, qemu_img, qemu_io, qnbd, run, tmpdir

WORK = tmpdir()
SIZE = "64M"


def bitmaps(img):
    info = json.loads(qemu_img("info", "--output=json", img)[1])
    return info.get("format-specific", {}).get("data", {}).get("bitmaps", [])


def dirty_map(img, name):
    out = run("nbdinfo", f"--map=qemu:dirty-bitmap:{name}", "--",
              "[", "qemu-nbd", "-r", "-B", name, "-f", "qcow2", img, "]")[1]
    return out


def twins(name, cluster="64k"):
    paths = []
    for tool in ("qemu", "qnbd"):
        p = os.path.join(WORK, f"{name}-{tool}.qcow2")
        qemu_img("create", "-f", "qcow2", "-o", f"cluster_size={cluster}", p, SIZE)
        paths.append(p)
    return paths


def both(paths, *args):
    """Runs `bitmap ARGS FILE BITMAP` with qemu-img on the first twin and
    qnbd-img on the second (args[-1] is the bitmap name)."""
    *opts, bitmap = args
    qemu_img("bitmap", *opts, paths[0], bitmap)
    qnbd("bitmap", *opts, paths[1], bitmap)


def compare(paths, names, what):
    check_eq(bitmaps(paths[1]), bitmaps(paths[0]), f"{what}: qemu-img info bitmaps")
    for p in paths:
        rc = qemu_img("check", p, ok=None)[0]
        check_eq(rc, 0, f"{what}: qemu-img check {os.path.basename(p)}")
    for n in names:
        check_eq(dirty_map(paths[1], n), dirty_map(paths[0], n), f"{what}: dirty map of {n}")


def scenario_ops(cluster):
    what = f"cluster {cluster}"
    p = twins(f"ops-{cluster}", cluster)
    both(p, "--add", "a")
    both(p, "--add", "-g", "128k", "--disable", "b")
    both(p, "--add", "-g", "512", "c")
    compare(p, ["a", "b", "c"], what + " after add")
    for img in p:  # enabled bitmaps record qemu-io's writes
        qemu_io(img, "write 1M 4k", "write -z 5M 300k", "discard 9M 64k")
    compare(p, ["a", "b", "c"], what + " after writes")
    both(p, "--merge", "a", "b")
    both(p, "--enable", "b")
    both(p, "--disable", "a")
    both(p, "--clear", "c")
    compare(p, ["a", "b", "c"], what + " after merge/enable/disable/clear")
    both(p, "--remove", "a")
    compare(p, ["b", "c"], what + " after remove")
    both(p, "--remove", "b")
    both(p, "--remove", "c")
    compare(p, [], what + " after removing all")


def scenario_merge_other_file():
    p = twins("merge-src")
    src = os.path.join(WORK, "src.qcow2")
    qemu_img("create", "-f", "qcow2", src, SIZE)
    qemu_img("bitmap", "--add", src, "s")
    qemu_io(src, "write 3M 64k")
    both(p, "--add", "d")
    both(p, "--merge", "s", "-b", src, "-F", "qcow2", "d")
    compare(p, ["d"], "merge from another file")


def scenario_errors():
    p = twins("errors")
    both(p, "--add", "a")
    for args in (["--add", "a"], ["--add", "-g", "100", "x"], ["--add", "-g", "256", "x"],
                 ["--clear", "missing"], ["--remove", "missing"]):
        *opts, name = args
        rq = qemu_img("bitmap", *opts, p[0], name, ok=None)
        rn = qnbd("bitmap", *opts, p[1], name, ok=None)
        check_eq(rn[0], rq[0], f"exit status of bitmap {args}")
        check_eq(rn[2].replace("qnbd-img", "qemu-img"), rq[2], f"message of {args}")
    compare(p, ["a"], "after refused operations")


try:
    scenario_ops("4k")  # the 4 KiB default granularity next to 512 B and 128 KiB
    scenario_merge_other_file()
    scenario_errors()
finally:
    cleanup(WORK)
finish()
