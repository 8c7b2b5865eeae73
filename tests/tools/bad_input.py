"""Bad command lines and malformed images: qnbd-img prints one clear line
("qnbd-img: ...") and exits 1 (63 for checking a raw image, as qemu-img),
never crashes (the suite also runs under ASan/UBSan), and never creates an
image for a refused create."""
import os
import struct

from imgtest import check, check_eq, cleanup, finish, qemu_img, qnbd, tmpdir

WORK = tmpdir()


def p(name):
    return os.path.join(WORK, name)


def expect_error(args, what, rc=1, must_not_exist=None):
    code, out, err = qnbd(*args, ok=None)
    lines = [l for l in err.splitlines() if l]
    check_eq(code, rc, f"{what}: exit code ({err.strip()})")
    check(len(lines) == 1 and lines[0].startswith("qnbd-img: "), f"{what}: one error line: {err!r}")
    check("Sanitizer" not in err and "runtime error" not in err, f"{what}: no sanitizer report")
    if must_not_exist:
        check(not os.path.exists(must_not_exist), f"{what}: no file created")


BAD_CREATE = [
    (["create", "-o", "cluster_size=1000", p("x1"), "1M"], "cluster size not a power of two"),
    (["create", "-o", "cluster_size=4M", p("x2"), "1M"], "cluster size too big"),
    (["create", "-o", "refcount_bits=3", p("x3"), "1M"], "refcount width"),
    (["create", "-o", "refcount_bits=128", p("x4"), "1M"], "refcount width too big"),
    (["create", "-o", "compat=0.10,lazy_refcounts=on", p("x5"), "1M"], "lazy refcounts on v2"),
    (["create", "-o", "compat=0.10,refcount_bits=8", p("x6"), "1M"], "refcount bits on v2"),
    (["create", "-o", "compat=2.0", p("x7"), "1M"], "unknown compat"),
    (["create", "-o", "preallocation=sometimes", p("x8"), "1M"], "unknown preallocation mode"),
    (["create", "-o", "nosuchoption=1", p("x9"), "1M"], "unknown option"),
    (["create", "-o", "cluster_size", p("x10"), "1M"], "option without value"),
    (["create", "-o", "extended_l2=maybe", p("x11"), "1M"], "bad boolean"),
    (["create", "-o", "extended_l2=on,cluster_size=4k", p("x12"), "1M"], "extended L2, small clusters"),
    (["create", "-o", "compression_type=lz4", p("x13"), "1M"], "unknown compression type"),
    (["create", p("x14"), "12Q"], "bad size suffix"),
    (["create", p("x15"), "-5M"], "negative size"),
    (["create", p("x16"), "16E"], "size too large"),
    (["create", p("x17"), "8P"], "size too large for the L1 table"),
    (["create", p("x18")], "missing size"),
    (["create", "-f", "vmdk", p("x19"), "1M"], "unknown format"),
    (["create", "-b", "base.qcow2", "-F", "qcow2", "-o", "preallocation=metadata", p("x20"), "1M"],
     "backing file with preallocation"),
    (["create", "-b", "nonexistent.qcow2", "-F", "qcow2", p("x21"), "1M"], "missing backing file"),
    (["create", "-F", "qcow2", p("x22"), "1M"], "backing format without file"),
    (["create", "-f", "raw", "-o", "cluster_size=4k", p("x23"), "1M"], "qcow2 option for raw"),
    (["create", "-o"], "missing option value"),
    (["create"], "missing file name"),
    (["create", "-u", "-b", "absent.qcow2", "-F", "qcow2", p("x25")], "-u without a size"),
    (["create", "-u", "-b", "absent.qcow2", p("x26"), "1M"], "-u without a backing format"),
    (["create", "--bogus", p("x24"), "1M"], "unknown switch"),
]


def corrupt_header(name, offset, fmt, value):
    img = p(name)
    qemu_img("create", "-q", "-f", "qcow2", img, "1M")
    with open(img, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value))
    return img


def main():
    qemu_img("create", "-q", "-f", "qcow2", p("base.qcow2"), "1M")
    for args, what in BAD_CREATE:
        target = next((a for a in args if a.startswith(WORK) and os.path.basename(a).startswith("x")), None)
        expect_error(args, "create: " + what, must_not_exist=target)
    expect_error(["frobnicate"], "unknown command")
    expect_error(["check", "-r", "some", p("base.qcow2")], "check: bad -r")
    expect_error(["check", "--output=xml", p("base.qcow2")], "check: bad --output")
    expect_error(["info", p("missing")], "info: missing file")
    expect_error(["map", p("missing")], "map: missing file")
    expect_error(["check", p("missing")], "check: missing file")
    raw = p("plain.raw")
    qemu_img("create", "-q", "-f", "raw", raw, "1M")
    expect_error(["check", raw], "check: raw image", rc=63)

    # Backing names are plain file paths only (CVE-2024-4467 class).
    for k, name in enumerate(['json:{"file": {"driver": "file", "filename": "/etc/passwd"}}',
                              "nbd://127.0.0.1:10809/x"]):
        img = p(f"hostile-backing{k}.qcow2")
        qnbd("create", "-q", "-u", "-f", "qcow2", "-b", name, "-F", "raw", img, "1M")
        expect_error(["map", img], f"map refuses backing name {name!r}")

    truncated = p("truncated.qcow2")
    with open(truncated, "wb") as f:
        f.write(b"QFI\xfb\x00\x00\x00\x03")
    bad = [
        (truncated, "truncated header"),
        (corrupt_header("magic.qcow2", 0, ">I", 0x12345678), "bad magic"),
        (corrupt_header("version.qcow2", 4, ">I", 7), "unknown version"),
        (corrupt_header("cbits.qcow2", 20, ">I", 30), "cluster_bits 30"),
        (corrupt_header("l1size.qcow2", 36, ">I", 0xffffffff), "huge l1_size"),
        (corrupt_header("reftable.qcow2", 48, ">Q", 0x12345), "unaligned refcount table"),
        (corrupt_header("rtclusters.qcow2", 56, ">I", 0xffffffff), "huge refcount table"),
        (corrupt_header("snaps.qcow2", 60, ">I", 0xffffffff), "too many snapshots"),
        (corrupt_header("hdrlen.qcow2", 100, ">I", 0xffffffff), "huge header length"),
        (corrupt_header("incompat.qcow2", 72, ">Q", 1 << 40), "unknown incompatible feature"),
    ]
    for img, what in bad:
        if what == "bad magic":  # not qcow2: info and map show it as raw, as qemu-img does
            expect_error(["check", img], "check: " + what, rc=63)
            continue
        for sub in ("info", "map", "check"):
            expect_error([sub, img], f"{sub}: {what}")
    cleanup(WORK)
    finish()


main()
