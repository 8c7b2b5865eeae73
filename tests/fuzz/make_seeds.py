#!/usr/bin/python3
"""Regenerates the seed corpora under tests/fuzz/corpus/ (committed; rerun
only to change them). qcow2 seeds are images made by qemu-img/qemu-io with
different options; protocol seeds are NBD payloads built as the spec lays
them out (doc/proto.md), prefixed with fuzz_protocol's selector byte."""

import os
import shutil
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")

NBD_REQUEST_MAGIC = 0x25609513
IHAVEOPT = 0x49484156454F5054
CMD = dict(READ=0, WRITE=1, DISC=2, FLUSH=3, TRIM=4, CACHE=5, WRITE_ZEROES=6, BLOCK_STATUS=7)
FUA, NO_HOLE, DF, REQ_ONE, FAST_ZERO = 1, 2, 4, 8, 16
OPT = dict(EXPORT_NAME=1, ABORT=2, LIST=3, STARTTLS=5, INFO=6, GO=7, STRUCTURED_REPLY=8,
           LIST_META_CONTEXT=9, SET_META_CONTEXT=10)


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def request(flags, cmd, cookie, offset, length):
    return struct.pack(">IHHQQI", NBD_REQUEST_MAGIC, flags, cmd, cookie, offset, length)


def protocol_seeds():
    # Selector 0: a request header; the bytes after it feed ExportLimits
    # (FuzzedDataProvider reads integers from the end).
    limits = bytes(range(1, 25))
    reqs = {
        "read": request(0, CMD["READ"], 1, 0, 4096),
        "read-df": request(DF, CMD["READ"], 2, 65536, 32 << 20),
        "write-fua": request(FUA, CMD["WRITE"], 3, 512, 512),
        "flush": request(0, CMD["FLUSH"], 4, 0, 0),
        "trim": request(0, CMD["TRIM"], 5, 1 << 20, 1 << 20),
        "zero-fast": request(NO_HOLE | FAST_ZERO, CMD["WRITE_ZEROES"], 6, 0, 1 << 30),
        "block-status": request(REQ_ONE, CMD["BLOCK_STATUS"], 7, 0, 0xffffffff),
        "cache": request(0, CMD["CACHE"], 8, 4096, 4096),
        "disc": request(0, CMD["DISC"], 9, 0, 0),
        "past-end": request(0, CMD["WRITE"], 10, 0xfffffffffffff000, 8192),
    }
    for name, r in reqs.items():
        write("fuzz_protocol", "req-" + name, b"\x00" + r + limits)
    # Selector 1: option headers.
    for name, opt in OPT.items():
        write("fuzz_protocol", "opt-" + name.lower(),
              b"\x01" + struct.pack(">QII", IHAVEOPT, opt, 0 if opt in (2, 3, 5, 8) else 24))
    # Selector 2: NBD_OPT_INFO/GO payloads (name, info requests).
    def info(name, reqs):
        return struct.pack(">I", len(name)) + name + struct.pack(">H", len(reqs)) + \
            b"".join(struct.pack(">H", q) for q in reqs)
    write("fuzz_protocol", "go-disk", b"\x02" + info(b"disk", [3, 1, 2, 0]))
    write("fuzz_protocol", "go-default", b"\x02" + info(b"", []))
    write("fuzz_protocol", "go-long-name", b"\x02" + info(b"n" * 4096, [3]))
    # Selector 3: LIST/SET_META_CONTEXT payloads.
    def meta(name, queries):
        return struct.pack(">I", len(name)) + name + struct.pack(">I", len(queries)) + \
            b"".join(struct.pack(">I", len(q)) + q for q in queries)
    write("fuzz_protocol", "meta-base", b"\x03" + meta(b"disk", [b"base:allocation"]))
    write("fuzz_protocol", "meta-list-all", b"\x03" + meta(b"", []))
    write("fuzz_protocol", "meta-several",
          b"\x03" + meta(b"disk", [b"base:", b"qemu:dirty-bitmap:b0", b"base:allocation"]))
    # Selector 4: reply encoders.
    write("fuzz_protocol", "encoders", b"\x04" + bytes(range(40)))


def run(*args, cwd):
    subprocess.run(args, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def qcow2_seeds(tmp):
    backing = os.path.join(tmp, "base.raw")
    run("qemu-img", "create", "-q", "-f", "raw", backing, "256K", cwd=tmp)
    variants = {
        "v3-default": ["-o", "cluster_size=64k"],
        "v2": ["-o", "compat=0.10,cluster_size=512"],
        "c512": ["-o", "cluster_size=512"],
        "c2m": ["-o", "cluster_size=2M"],
        "extl2": ["-o", "extended_l2=on,cluster_size=16k"],
        "zstd": ["-o", "compression_type=zstd,cluster_size=512"],
        "lazy": ["-o", "lazy_refcounts=on,cluster_size=512"],
        "refcount1": ["-o", "refcount_bits=1,cluster_size=512"],
        "refcount64": ["-o", "refcount_bits=64,cluster_size=512"],
        "backing": ["-o", "cluster_size=512", "-b", "base.raw", "-F", "raw"],
        "datafile": ["-o", "cluster_size=512,data_file=data.raw,data_file_raw=on"],
        "prealloc": ["-o", "cluster_size=512,preallocation=metadata"],
    }
    images = {}
    for name, opts in variants.items():
        path = os.path.join(tmp, name + ".qcow2")
        run("qemu-img", "create", "-q", "-f", "qcow2", *opts, path, "256K", cwd=tmp)
        images[name] = path
    # Data, zeroes and compressed clusters, then snapshots and a bitmap.
    for name in ["c512", "zstd", "lazy", "refcount1", "refcount64", "backing", "v2", "extl2"]:
        io = ["write -P 0xa5 0 4k", "write -z 8k 1k", "write -c -P 0x3c 64k 4k",
              "write -P 0x11 130560 1024"]
        if name == "extl2":
            io = ["write -P 0xa5 0 4k", "write -z 64k 1k", "write -P 0x11 128k 512"]
        for cmd in io:
            run("qemu-io", "-f", "qcow2", "-c", cmd, images[name], cwd=tmp)
    snap = os.path.join(tmp, "snapshot.qcow2")
    shutil.copy(images["c512"], snap)
    run("qemu-img", "snapshot", "-c", "first", snap, cwd=tmp)
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x77 0 2k", snap, cwd=tmp)
    run("qemu-img", "snapshot", "-c", "second-with-a-longer-name", snap, cwd=tmp)
    images["snapshot"] = snap
    # Left dirty by a killed writer with lazy refcounts (refcounts stale).
    dirty = os.path.join(tmp, "dirty.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=512,lazy_refcounts=on",
        dirty, "256K", cwd=tmp)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 4k", "-c", "write 32k 1k",
                    "-c", "sigraise 9", dirty], cwd=tmp, stdout=subprocess.DEVNULL)
    images["dirty"] = dirty
    bitmap = os.path.join(tmp, "bitmap.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=512", bitmap, "256K",
        cwd=tmp)
    run("qemu-img", "bitmap", "--add", bitmap, "b0", cwd=tmp)
    images["bitmap"] = bitmap

    for name, path in images.items():
        data = open(path, "rb").read()
        cluster = 1 << struct.unpack(">I", data[20:24])[0]
        # The header fuzzer wants cluster 0 (extensions and the backing name
        # sit in its first KiB), plus the snapshot table when it is near.
        head = data[:min(cluster, 1024)]
        nb_snapshots, snapshots_offset = struct.unpack(">IQ", data[60:72])
        if nb_snapshots and snapshots_offset < 16384:
            head = data[:snapshots_offset + 512]
        write("fuzz_qcow2_header", name, head)
        # An L2 table and compressed data as the entry and codec modes see them.
        if name in ("c512", "zstd", "refcount1"):
            l1_offset = struct.unpack(">Q", data[40:48])[0]
            l2_offset = struct.unpack(">Q", data[l1_offset:l1_offset + 8])[0] & 0x00fffffffffffe00
            write("fuzz_qcow2_header", "l2-" + name, b"\x00" + data[l2_offset:l2_offset + 512] +
                  bytes([9, 0, 0, 0, 0, 0, 0, 0, 4, 0]))
            # Guest 64k (written compressed above): L1 index 2, L2 index 0.
            l2c = struct.unpack(">Q", data[l1_offset + 16:l1_offset + 24])[0] & 0x00fffffffffffe00
            l2e = struct.unpack(">Q", data[l2c:l2c + 8])[0]
            if l2e & (1 << 62):
                off = l2e & ((1 << 61) - 1)
                write("fuzz_qcow2_header", "compressed-" + name,
                      b"\x02" + data[off:off + 512] + bytes([0 if name != "zstd" else 1, 0]))
        # The open fuzzer wants whole images: only the small ones.
        if len(data) <= 24576:
            write("fuzz_qcow2_open", name, data)
            write("fuzz_qcow2_check", name, data)


def main():
    if os.path.isdir(CORPUS):
        shutil.rmtree(CORPUS)
    protocol_seeds()
    with tempfile.TemporaryDirectory() as tmp:
        qcow2_seeds(tmp)
    for t in sorted(os.listdir(CORPUS)):
        files = os.listdir(os.path.join(CORPUS, t))
        size = sum(os.path.getsize(os.path.join(CORPUS, t, f)) for f in files)
        print(f"{t}: {len(files)} seeds, {size} bytes")


if __name__ == "__main__":
    sys.exit(main())
