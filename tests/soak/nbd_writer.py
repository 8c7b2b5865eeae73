#!/usr/bin/python3
"""A libnbd client that rewrites a region over and over and reports what is durable.

    nbd_writer.py SOCKET FIRST_BLOCK BLOCKS ROUND [--depth N] [--seed S]

Each pass writes every 4 KiB block of the region once, in a random order, in
batches of --depth requests in flight. Even batches are written with FUA,
odd batches plain and then FLUSHed; once a batch is durable (its FUA
replies, or the FLUSH reply) one line goes to stdout: `PASS BLOCK BLOCK ...`.
A block's content is `stamp(ROUND, PASS, BLOCK)`. It runs until the server
goes away (exit 3) or it is killed; the soak uses it for both.
"""
import random
import struct
import sys

import nbd

BLOCK = 4096
MAGIC = b"QSOK"
_RECORD = struct.Struct("<4sIIIQQ")  # 32 bytes, repeated over the block
assert BLOCK % _RECORD.size == 0


def stamp(round_no, pass_no, block):
    return _RECORD.pack(MAGIC, round_no, pass_no, (round_no * 1_000_003 + pass_no) & 0xFFFFFFFF,
                        block, block ^ 0x5A5A5A5A5A5A5A5A) * (BLOCK // _RECORD.size)


def decode(data, block):
    """(round, pass) of an intact stamp for `block`; None for zeros; raises otherwise."""
    if data == bytes(BLOCK):
        return None
    magic, round_no, pass_no, _, got, _ = _RECORD.unpack_from(data)
    if magic != MAGIC or got != block or data != stamp(round_no, pass_no, block):
        raise ValueError(f"block {block}: neither zeros nor an intact stamp "
                         f"(starts {data[:32].hex()})")
    return round_no, pass_no


def wait_all(h, cookies):
    """Each cookie is retired once; aio_command_completed raises on an error reply."""
    pending = list(cookies)
    while pending:
        pending = [c for c in pending if not h.aio_command_completed(c)]
        if pending:
            h.poll(-1)


def write_batch(h, blocks, round_no, pass_no, fua):
    flags = nbd.CMD_FLAG_FUA if fua else 0
    cookies = [h.aio_pwrite(stamp(round_no, pass_no, b), b * BLOCK, flags=flags)
               for b in blocks]
    wait_all(h, cookies)
    if not fua:
        h.flush()


def main():
    args = sys.argv[1:]
    depth = int(args[args.index("--depth") + 1]) if "--depth" in args else 8
    seed = int(args[args.index("--seed") + 1]) if "--seed" in args else 0
    sock, first, count, round_no = args[0], int(args[1]), int(args[2]), int(args[3])
    rng = random.Random(seed)
    h = nbd.NBD()
    try:
        h.connect_unix(sock)
        for pass_no in range(1 << 31):
            order = list(range(first, first + count))
            rng.shuffle(order)
            for i in range(0, count, depth):
                batch = order[i:i + depth]
                write_batch(h, batch, round_no, pass_no, fua=(i // depth) % 2 == 0)
                print(pass_no, *batch, flush=True)
    except (nbd.Error, BrokenPipeError):
        sys.exit(3)


if __name__ == "__main__":
    main()
