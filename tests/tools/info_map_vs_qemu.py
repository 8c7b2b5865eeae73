"""qnbd-img info and map against qemu-img on images made by qemu-img and
qemu-io: every cluster size, compat 0.10 and 1.1, refcount widths, extended
L2, lazy refcounts, compressed images (zlib and zstd, via convert -c),
backing chains of depth 1-3 over raw and qcow2 bases (and of depth 2-3
with compressed and zero clusters in every layer), internal snapshots,
zero writes and discards, metadata preallocation. JSON output must be equal
(as parsed data), human output equal line for line."""
import json
import os

from imgtest import check_eq, cleanup, finish, qemu_img, qemu_io, qnbd, run, tmpdir

WORK = tmpdir()


def img_path(name):
    return os.path.join(WORK, name)


def fill(img, fmt="qcow2", base=0):
    qemu_io(img, f"write -P 0x{0x10 + base:x} {base * 64}k 200k",
            f"write -P 0x{0x20 + base:x} 1M 4k", f"write -z {2 + base}M 128k",
            f"write -P 0x{0x30 + base:x} 3M 256k", f"discard 3M 64k",
            f"write -z -u 3200k 64k", fmt=fmt)


def without_layout(sub, out, text):
    """qnbd-img info adds its layout figures (tested by defrag_vs_qemu)."""
    if sub != "info":
        return text
    if out == "json":
        data = json.loads(text)
        data.pop("qnbd-layout", None)
        return json.dumps(data)
    return text.split("qnbd layout:\n")[0]


def compare(img):
    name = os.path.basename(img)
    for sub in ("info", "map"):
        for out in ("json", "human"):
            a = qnbd(sub, f"--output={out}", img, ok=None)
            a = (a[0], without_layout(sub, out, a[1]), a[2])
            b = qemu_img(sub, f"--output={out}", img, ok=None)
            label = f"{name}: {sub} --output={out}"
            check_eq(a[0], b[0], label + " exit code")
            if a[0] or b[0]:
                continue
            if out == "json":
                check_eq(json.loads(a[1]), json.loads(b[1]), label)
            else:
                check_eq(a[1].splitlines(), b[1].splitlines(), label)


def create(name, size, *opts):
    img = img_path(name)
    o = ["-o", ",".join(opts)] if opts else []
    qemu_img("create", "-q", "-f", "qcow2", *o, img, size)
    return img


def main():
    for cs in ("512", "4k", "64k", "2M"):
        for opts in (["compat=0.10"], ["compat=1.1", "refcount_bits=1"],
                     ["refcount_bits=64", "lazy_refcounts=on"]):
            img = create(f"c{cs}-{len(opts)}-{opts[-1]}.qcow2", "5M", f"cluster_size={cs}", *opts)
            fill(img)
            compare(img)
    for cs in ("16k", "64k", "1M"):
        img = create(f"extl2-{cs}.qcow2", "5M", f"cluster_size={cs}", "extended_l2=on")
        fill(img)
        compare(img)
    for prealloc in ("metadata", "falloc"):
        img = create(f"prealloc-{prealloc}.qcow2", "5M", f"preallocation={prealloc}")
        compare(img)
        fill(img)
        compare(img)
    img = create("prealloc-extl2.qcow2", "5M", "preallocation=metadata", "extended_l2=on")
    compare(img)

    # Compressed.
    src = img_path("src.raw")
    qemu_img("create", "-q", "-f", "raw", src, "4M")
    qemu_io(src, "write -P 0x5a 0 1M", "write -P 0 1M 1M", "write -P 0xa5 3M 512k", fmt="raw")
    for ctype in ("zlib", "zstd"):
        img = img_path(f"compressed-{ctype}.qcow2")
        qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", "-o",
                 f"compression_type={ctype}", src, img)
        compare(img)

    # Compressed and zero clusters at every depth of a chain of depth 2-3:
    # compressed data seen through unallocated overlays, zero clusters over
    # compressed ones, zero clusters that keep their host cluster (write -z
    # without -u over data) and plain ones, an overlay longer than its base.
    base = img_path("cz-base.qcow2")
    qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", src, base)
    qemu_io(base, "write -z 128k 64k")
    lower = os.path.basename(base)
    for depth in (2, 3):
        top = img_path(f"cz-{depth}.qcow2")
        qemu_img("create", "-q", "-f", "qcow2", "-b", lower, "-F", "qcow2", top,
                 "4M" if depth < 3 else "5M")
        qemu_io(top, f"write -c -P 0x{0x50 + depth:x} {depth}M 128k",
                f"write -z {depth * 256}k 64k", f"write -P 0x{0x60 + depth:x} 3M 192k",
                "write -z 3M 64k", "write -z -u 3136k 64k")
        compare(top)
        lower = os.path.basename(top)

    # Backing chains over raw and qcow2 bases, depth 1-3.
    for base_fmt in ("raw", "qcow2"):
        base = img_path(f"base-{base_fmt}")
        qemu_img("create", "-q", "-f", base_fmt, base, "3M")
        qemu_io(base, "write -P 0x61 0 1M", "write -P 0x62 2M 512k", fmt=base_fmt)
        lower, lower_fmt = os.path.basename(base), base_fmt
        for depth in (1, 2, 3):
            top = img_path(f"chain-{base_fmt}-{depth}.qcow2")
            qemu_img("create", "-q", "-f", "qcow2", "-b", lower, "-F", lower_fmt, top,
                     "4M" if depth < 3 else "5M")
            qemu_io(top, f"write -P 0x{0x40 + depth:x} {depth * 192}k 64k",
                    f"write -z {depth}M 64k", f"discard {depth * 512}k 64k")
            compare(top)
            lower, lower_fmt = os.path.basename(top), "qcow2"

    # Extended L2 overlay: partly written clusters show the backing file
    # through their unallocated subclusters.
    base = img_path("extl2-base.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", base, "4M")
    qemu_io(base, "write -P 0x71 0 2M")
    top = img_path("extl2-top.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-o", "extended_l2=on", "-b", "extl2-base.qcow2",
             "-F", "qcow2", top, "4M")
    qemu_io(top, "write -P 0x72 4k 4k", "write -z 100k 8k", "write -P 0x73 1M 64k",
            "discard 1M 4k", "write -P 0x74 3M 2k")
    compare(top)

    # Persistent bitmaps; one image left "in-use" by a qemu-io that was killed.
    for killed in (False, True):
        img = create(f"bitmaps-{killed}.qcow2", "5M")
        qemu_img("bitmap", "--add", img, "b0")
        qemu_img("bitmap", "--add", "-g", "512", "--disable", img, "b1")
        cmds = ["-c", "write -P 0x21 0 64k"] + (["-c", "sigraise 9"] if killed else [])
        run("qemu-io", "-f", "qcow2", *cmds, img, ok=None)
        compare(img)

    # Internal snapshot, then more writes.
    img = create("snap.qcow2", "5M")
    fill(img)
    qemu_img("snapshot", "-c", "first", img)
    qemu_io(img, "write -P 0x99 0 64k", "discard 1M 64k")
    compare(img)

    # Raw images.
    compare(src)
    rc, _, err = qnbd("info", img_path("missing.qcow2"), ok=None)
    check_eq(rc, 1, "info on a missing file fails")
    cleanup(WORK)
    finish()


main()
