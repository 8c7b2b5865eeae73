"""Images made by qnbd-img create with every option: qemu-img check finds
no errors and no leaks, qemu-img info shows exactly the requested options,
qemu-io can write and read them back (and check stays clean), preallocated
images are fully mapped, and metadata preallocation of a large image is
fast and sparse."""
import itertools
import json
import os
import time

from imgtest import check, check_eq, cleanup, finish, qemu_img, qemu_io, qnbd, tmpdir

WORK = tmpdir()
MiB = 1 << 20


def info(img):
    return json.loads(qemu_img("info", "--output=json", img)[1])


def create(name, size, opts, *extra):
    img = os.path.join(WORK, name)
    args = ["create", "-f", "qcow2"]
    if opts:
        args += ["-o", ",".join(f"{k}={v}" for k, v in opts.items())]
    qnbd(*args, *extra, img, *([size] if size else []))
    return img


def expect_info(img, opts, size):
    i = info(img)
    d = i["format-specific"]["data"]
    label = f"{os.path.basename(img)} {opts}"
    check_eq(i["format"], "qcow2", label + ": format")
    check_eq(i["virtual-size"], size, label + ": virtual size")
    check_eq(i["cluster-size"], int(opts.get("cluster_size", 65536)), label + ": cluster size")
    v3 = opts.get("compat", "1.1") in ("1.1", "v3")
    check_eq(d["compat"], "1.1" if v3 else "0.10", label + ": compat")
    check_eq(d["refcount-bits"], int(opts.get("refcount_bits", 16)), label + ": refcount bits")
    check_eq(d["compression-type"], opts.get("compression_type", "zlib"), label + ": compression")
    if v3:
        check_eq(d["lazy-refcounts"], opts.get("lazy_refcounts", "off") == "on", label + ": lazy")
        check_eq(d["extended-l2"], opts.get("extended_l2", "off") == "on", label + ": extended l2")
        check_eq(d["corrupt"], False, label + ": corrupt")
    check_eq(i["dirty-flag"], False, label + ": dirty")


def expect_clean(img, what):
    rc, out, err = qemu_img("check", "--output=json", img, ok=None)
    check(rc == 0, f"{what}: qemu-img check rc {rc}: {out}{err}")
    rc, out, err = qnbd("check", img, ok=None)
    check(rc == 0, f"{what}: qnbd-img check rc {rc}: {out}{err}")


def exercise(img, what):
    qemu_io(img, "write -P 0xa1 0 4k", "write -P 0xb2 1M 192k", "write -z 2M 64k",
            "discard 1M 64k")
    out = qemu_io(img, "read -P 0xa1 0 4k", "read -P 0xb2 1088k 128k", "read -P 0 2M 64k")
    check("verification failed" not in out, f"{what}: data reads back")
    expect_clean(img, what + " after writes")


MATRIX = {
    "cluster_size": ["512", "4096", "65536", "2097152"],
    "compat": ["0.10", "1.1"],
    "refcount_bits": ["1", "16", "64"],
}


def main():
    n = 0
    for cs, compat, rb in itertools.product(*MATRIX.values()):
        opts = {"cluster_size": cs, "compat": compat}
        if compat == "1.1":
            opts["refcount_bits"] = rb
        elif rb != "16":
            continue
        for prealloc in ("off", "metadata"):
            o = dict(opts, preallocation=prealloc)
            n += 1
            img = create(f"m{n}.qcow2", "6M", o)
            what = f"create {o}"
            expect_info(img, o, 6 * MiB)
            expect_clean(img, what)
            if prealloc == "metadata":
                m = json.loads(qemu_img("map", "--output=json", img)[1])
                check(all(e["data"] and e["present"] for e in m), what + ": every cluster mapped")
            exercise(img, what)
    v3_features = [{"lazy_refcounts": "on"}, {"extended_l2": "on"},
                   {"extended_l2": "on", "cluster_size": "16384"},
                   {"compression_type": "zstd"},
                   {"extended_l2": "on", "preallocation": "metadata"},
                   {"preallocation": "falloc"}, {"preallocation": "full"},
                   {"lazy_refcounts": "on", "refcount_bits": "8", "compression_type": "zstd",
                    "extended_l2": "on", "cluster_size": "32768"}]
    for k, o in enumerate(v3_features):
        img = create(f"f{k}.qcow2", "6M", o)
        expect_info(img, o, 6 * MiB)
        expect_clean(img, f"create {o}")
        if o.get("preallocation") in ("falloc", "full"):
            check(info(img)["actual-size"] >= 6 * MiB, f"{o}: data area allocated")
        exercise(img, f"create {o}")

    # Compressed writes on a zstd image made by qnbd-img.
    img = create("zstd.qcow2", "4M", {"compression_type": "zstd"})
    qemu_io(img, "write -c -P 0x3c 0 64k")
    check("failed" not in qemu_io(img, "read -P 0x3c 0 64k"), "zstd compressed cluster reads")
    expect_clean(img, "zstd after compressed write")

    # Backing files: -b/-F and -o backing_file, size taken from the backing file.
    base = os.path.join(WORK, "base.raw")
    qemu_img("create", "-q", "-f", "raw", base, "3M")
    qemu_io(base, "write -P 0x77 0 1M", fmt="raw")
    top = create("top.qcow2", "", {}, "-b", "base.raw", "-F", "raw")
    i = info(top)
    check_eq((i["backing-filename"], i.get("backing-filename-format"), i["virtual-size"]),
             ("base.raw", "raw", 3 * MiB), "backing file recorded, size from backing")
    check("failed" not in qemu_io(top, "read -P 0x77 0 1M"), "backing data visible")
    expect_clean(top, "overlay")
    top2 = create("top2.qcow2", "8M", {"backing_file": "top.qcow2", "backing_fmt": "qcow2",
                                        "extended_l2": "on", "preallocation": "metadata"})
    check("failed" not in qemu_io(top2, "read -P 0x77 0 1M"),
          "extended L2 preallocated overlay still reads the backing file")
    expect_clean(top2, "overlay with preallocated extended L2")

    # -u: the backing file need not exist yet.
    later = create("later.qcow2", "2M", {}, "-u", "-b", "not-yet.qcow2", "-F", "qcow2")
    i = info(later)
    check_eq((i["backing-filename"], i["backing-filename-format"], i["virtual-size"]),
             ("not-yet.qcow2", "qcow2", 2 * MiB), "-u records an absent backing file")

    # Metadata preallocation of a big image: fast and sparse.
    big = os.path.join(WORK, "big.qcow2")
    t = time.monotonic()
    qnbd("create", "-q", "-f", "qcow2", "-o", "preallocation=metadata", big, "20G")
    elapsed = time.monotonic() - t
    print(f"20 GiB metadata preallocation: {elapsed:.3f} s")
    check(elapsed < 2.0, f"metadata preallocation of 20 GiB took {elapsed:.2f} s")
    i = info(big)
    check(i["actual-size"] < 64 * MiB, "preallocated image is sparse")
    rc, out, err = qemu_img("check", "--output=json", big, ok=None)
    d = json.loads(out)
    check(rc == 0 and d["allocated-clusters"] == d["total-clusters"],
          f"big preallocated image checks clean and fully allocated: {out}{err}")
    cleanup(WORK)
    finish()


main()
