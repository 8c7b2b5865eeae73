#!/usr/bin/python3
"""Self-test of the crash model: the allowed-contents rules and the comparison
must reject what a broken server could leave behind (no server involved)."""
import sys

import crash_images as ci
from crash_model import BLOCK, ZERO, ImageModel, Op, render, stamp
from crash_test import compare

SEED = 7
OLD = stamp(1, -2, 0)


def op(model, kind, first, count, issued, acked, fua=False):
    o = Op(len(model.ops), kind, first, count, fua)
    o.issued, o.acked = issued, acked
    model.add(o)
    return o


def image(values):
    return b"".join(render(v) for v in values)


def fresh():
    initial = [ZERO] * ci.BLOCKS
    initial[0] = OLD
    backing = [ZERO] * ci.BLOCKS
    backing[1] = stamp(1, -1, 1)
    return ImageModel(SEED, initial, backing)


def allowed(model, block):
    return model.allowed(block, model.durable_ops())[0]


def test_flush_covers_only_replies_before_it_was_sent():
    m = fresh()
    before = op(m, "write", 0, 1, 1, 2)
    op(m, "flush", 0, 0, 3, 6)
    after = op(m, "write", 2, 1, 4, 5)   # acked while the flush was in flight
    assert allowed(m, 0) == {m.written_value(before, 0)}
    assert allowed(m, 2) == {ZERO, m.written_value(after, 2)}


def test_unacknowledged_flush_makes_nothing_durable():
    m = fresh()
    w = op(m, "write", 0, 1, 1, 2)
    op(m, "flush", 0, 0, 3, None)
    assert allowed(m, 0) == {OLD, m.written_value(w, 0)}


def test_fua_is_durable_without_flush():
    m = fresh()
    w = op(m, "write", 0, 1, 1, 2, fua=True)
    lost = op(m, "write", 3, 1, 3, None, fua=True)
    assert allowed(m, 0) == {m.written_value(w, 0)}
    assert allowed(m, 3) == {ZERO, m.written_value(lost, 3)}


def test_later_writes_widen_a_durable_floor_but_never_reach_below_it():
    m = fresh()
    a = op(m, "write", 0, 1, 1, 2)
    op(m, "flush", 0, 0, 3, 4)
    b = op(m, "write", 0, 1, 5, 6)
    op(m, "zero", 0, 1, 7, None)
    assert allowed(m, 0) == {m.written_value(a, 0), m.written_value(b, 0), ZERO}


def test_trim_allows_zero_or_backing_but_zero_does_not_allow_backing():
    m = fresh()
    op(m, "trim", 1, 1, 1, 2)
    op(m, "zero", 4, 1, 3, 4)
    op(m, "flush", 0, 0, 5, 6)
    assert allowed(m, 1) == {ZERO, m.backing[1]}
    assert allowed(m, 4) == {ZERO}


def test_compare_rejects_lost_torn_and_misplaced_blocks():
    m = fresh()
    w = op(m, "write", 0, 2, 1, 2)
    op(m, "flush", 0, 0, 3, 4)
    good = [m.written_value(w, 0), m.written_value(w, 1)] + m.initial[2:]
    assert compare(image(good), m, m.durable_ops(), "good") == []
    lost = [OLD] + good[1:]
    assert compare(image(lost), m, m.durable_ops(), "lost")
    swapped = [good[1], good[0]] + good[2:]
    assert len(compare(image(swapped), m, m.durable_ops(), "swapped")) == 2
    torn = bytearray(image(good))
    torn[BLOCK + 512:BLOCK + 1024] = bytes(512)
    assert compare(bytes(torn), m, m.durable_ops(), "torn")
    stray = list(good)
    stray[100] = stamp(SEED, 0, 100)  # data of a write that never touched block 100
    assert compare(image(stray), m, m.durable_ops(), "stray")


def main():
    tests = [v for k, v in sorted(globals().items()) if k.startswith("test_")]
    for t in tests:
        t()
        print(f"ok   {t.__name__}")
    print(f"{len(tests)} model self-tests passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
