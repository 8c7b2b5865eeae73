#!/usr/bin/python3
"""Wire-level checks libnbd hides: EXPORT_NAME with and without NO_ZEROES,
structured-reply chunk layout, metadata-context negotiation, zero-length
requests. Each checks bytes on the wire against the NBD spec."""
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbd_wire as w  # noqa: E402
from badinput_common import DATA, SIZE, Fixture  # noqa: E402
import qnbd_harness as h  # noqa: E402

HAS_FLAGS = 1


def connect(fx):
    c = w.Conn.unix(fx.server.sock, timeout=15)
    c.greeting()
    c.client_flags()
    return c


def structured_session(fx, contexts=("base:allocation",)):
    c = connect(fx)
    c.option(w.OPT_STRUCTURED_REPLY)
    assert c.option_reply()[1] == w.REP_ACK
    ids = {}
    if contexts:
        ids, rtype = w.meta_context_option(c, w.OPT_SET_META_CONTEXT, "disk", list(contexts))
        assert rtype == w.REP_ACK, hex(rtype)
    assert c.go("disk") == w.REP_ACK
    return c, ids


def test_export_name_with_and_without_zeroes(tmp):
    with Fixture(tmp) as fx:
        for no_zeroes in (True, False):
            c = w.Conn.unix(fx.server.sock, timeout=15)
            hsflags = c.greeting()
            assert hsflags & w.FLAG_NO_ZEROES, "server should offer NO_ZEROES"
            c.client_flags(w.FLAG_FIXED_NEWSTYLE | (w.FLAG_NO_ZEROES if no_zeroes else 0))
            c.option(w.OPT_EXPORT_NAME, b"disk")
            size, tflags = struct.unpack(">QH", c.recv_exact(10))
            assert size == SIZE and tflags & HAS_FLAGS, (size, tflags)
            if not no_zeroes:
                assert c.recv_exact(124) == bytes(124)
            # The very next bytes must be the reply to our read (no stray padding).
            assert c.read(DATA[1][0], 4096) == (0, h.pattern(DATA[1][0], 4096))
            c.close()
        fx.assert_healthy()


def test_info_then_go_agree(tmp):
    with Fixture(tmp) as fx:
        c = connect(fx)
        assert c.go("disk", opt=w.OPT_INFO) == w.REP_ACK
        info = (c.size, c.tflags)
        assert c.go("disk") == w.REP_ACK
        assert (c.size, c.tflags) == info
        assert c.read(0, 512) == (0, h.pattern(0, 512))
        c.close()


def test_unusual_export_name(tmp):
    name = "disk é/ x?#%"  # UTF-8, spaces, URI metacharacters
    with Fixture(tmp, name=name) as fx:
        c = connect(fx)
        c.option(w.OPT_LIST)
        listed = []
        while True:
            _, rtype, data = c.option_reply()
            if rtype != w.REP_SERVER:
                assert rtype == w.REP_ACK, hex(rtype)
                break
            n = struct.unpack(">I", data[:4])[0]
            listed.append(data[4:4 + n].decode())
        assert listed == [name], listed
        assert c.go(name) == w.REP_ACK
        assert c.read(0, 4096) == (0, h.pattern(0, 4096))
        c.close()


def test_structured_read_chunks(tmp):
    with Fixture(tmp) as fx:
        c, _ = structured_session(fx, contexts=())
        off, length = DATA[1][0] + DATA[1][1] - 64 * 1024, 512 * 1024  # 64 KiB data, then hole
        c.request(w.CMD_READ, off, length, cookie=11)
        chunks = w.structured_replies(c, 11)
        assert chunks[-1]["flags"] & w.REPLY_FLAG_DONE
        covered, content = [], bytearray(length)
        for ch in chunks:
            assert ch["kind"] == "chunk", "READ with structured replies must use chunks"
            p = ch["payload"]
            if ch["type"] == w.REPLY_TYPE_OFFSET_DATA:
                at = struct.unpack(">Q", p[:8])[0]
                assert len(p) > 8
                covered.append((at, len(p) - 8))
                content[at - off:at - off + len(p) - 8] = p[8:]
            elif ch["type"] == w.REPLY_TYPE_OFFSET_HOLE:
                at, n = struct.unpack(">QI", p)
                assert n > 0
                covered.append((at, n))
            else:
                assert ch["type"] == w.REPLY_TYPE_NONE and ch is chunks[-1] and not p, ch
        covered.sort()
        pos = off
        for at, n in covered:
            assert at == pos, f"gap or overlap at {at} (expected {pos})"
            pos += n
        assert pos == off + length
        assert bytes(content) == h.pattern(off, 64 * 1024) + bytes(length - 64 * 1024)

        # DF: one content chunk for the whole (mixed) range.
        c.request(w.CMD_READ, off, 128 * 1024, flags=w.CMD_FLAG_DF, cookie=12)
        chunks = [ch for ch in w.structured_replies(c, 12) if ch["type"] != w.REPLY_TYPE_NONE]
        assert len(chunks) == 1, [ch["type"] for ch in chunks]

        # Errors on READ come as an error chunk, never a simple reply.
        c.request(w.CMD_READ, SIZE, 4096, cookie=13)
        chunks = w.structured_replies(c, 13)
        err = chunks[-1]
        assert err["kind"] == "chunk" and err["type"] in (w.REPLY_TYPE_ERROR, w.REPLY_TYPE_ERROR_OFFSET), err
        code, msglen = struct.unpack(">IH", err["payload"][:6])
        assert code == w.EINVAL and len(err["payload"]) >= 6 + msglen

        # A payload-less command may get a simple reply or a NONE chunk.
        c.request(w.CMD_FLUSH, 0, 0, cookie=14)
        r = w.structured_reply(c)
        assert r["cookie"] == 14 and r["flags"] & w.REPLY_FLAG_DONE
        assert r["kind"] == "simple" and r["error"] == 0 or r["type"] == w.REPLY_TYPE_NONE, r
        c.close()
        fx.assert_healthy()


def test_meta_context_negotiation(tmp):
    with Fixture(tmp) as fx:
        c = connect(fx)
        # SET before STRUCTURED_REPLY is an error (spec: SHOULD be ERR_INVALID).
        ctx, rtype = w.meta_context_option(c, w.OPT_SET_META_CONTEXT, "disk", ["base:allocation"])
        assert ctx == {} and rtype == w.REP_ERR_INVALID, (ctx, hex(rtype))
        c.option(w.OPT_STRUCTURED_REPLY)
        assert c.option_reply()[1] == w.REP_ACK
        for queries in ([], ["base:"], ["base:allocation"]):
            ctx, rtype = w.meta_context_option(c, w.OPT_LIST_META_CONTEXT, "disk", queries)
            assert rtype == w.REP_ACK and "base:allocation" in ctx.values(), (queries, ctx)
        ctx, rtype = w.meta_context_option(c, w.OPT_SET_META_CONTEXT, "disk",
                                           ["nosuch:thing", "base:allocation", "base:nosuch"])
        assert rtype == w.REP_ACK and list(ctx.values()) == ["base:allocation"], ctx
        (ctx_id,) = ctx
        assert c.go("disk") == w.REP_ACK
        c.request(w.CMD_BLOCK_STATUS, 0, SIZE, cookie=21)
        chunks = w.structured_replies(c, 21)
        status = [ch for ch in chunks if ch["type"] == w.REPLY_TYPE_BLOCK_STATUS]
        assert len(status) == 1, [ch["type"] for ch in chunks]
        p = status[0]["payload"]
        assert struct.unpack(">I", p[:4])[0] == ctx_id
        descs = [struct.unpack(">II", p[i:i + 8]) for i in range(4, len(p), 8)]
        assert descs and all(n > 0 for n, _ in descs), descs
        # The first descriptor covers DATA[0] = [0, 1 MiB) as data.
        assert descs[0][1] == 0 and descs[0][0] <= DATA[0][1], descs[:2]
        c.close()

        # Zero queries select nothing; BLOCK_STATUS is then refused.
        c, ids = structured_session(fx, contexts=())
        c.request(w.CMD_BLOCK_STATUS, 0, 4096, cookie=22)
        r = w.structured_replies(c, 22)[-1]
        code = r["error"] if r["kind"] == "simple" else struct.unpack(">I", r["payload"][:4])[0]
        assert code == w.EINVAL, r
        c.close()
        fx.assert_healthy()


def test_meta_context_is_per_export(tmp):
    # Spec: contexts set for one export name are not usable after GO to another.
    a = h.make_sparse_image(os.path.join(tmp, "a.raw"), SIZE, DATA)
    b = h.make_sparse_image(os.path.join(tmp, "b.raw"), SIZE, DATA)
    config = h.write_config(tmp, [{"name": "a", "path": a}, {"name": "b", "path": b}])
    with h.Server(tmp, config=config) as srv:
        for go_to, usable in (("a", True), ("b", False)):
            c = w.Conn.unix(srv.sock, timeout=15)
            c.greeting()
            c.client_flags()
            c.option(w.OPT_STRUCTURED_REPLY)
            assert c.option_reply()[1] == w.REP_ACK
            ctx, rtype = w.meta_context_option(c, w.OPT_SET_META_CONTEXT, "a", ["base:allocation"])
            assert rtype == w.REP_ACK and list(ctx.values()) == ["base:allocation"], ctx
            assert c.go(go_to) == w.REP_ACK
            c.request(w.CMD_BLOCK_STATUS, 0, 4096, cookie=50)
            last = w.structured_replies(c, 50)[-1]
            if usable:
                assert last["kind"] == "chunk" and last["type"] == w.REPLY_TYPE_BLOCK_STATUS, last
            else:
                code = last["error"] if last["kind"] == "simple" else struct.unpack(">I", last["payload"][:4])[0]
                assert code == w.EINVAL, (go_to, last)
            c.request(w.CMD_FLUSH, 0, 0, cookie=51)  # still in step
            r = w.structured_reply(c)
            assert r["cookie"] == 51 and r["flags"] & w.REPLY_FLAG_DONE, r
            c.close()
    assert h.sha256_file(a) == h.sha256_file(b)


def test_zero_length_requests(tmp):
    # Unspecified by the spec, but the server SHOULD NOT disconnect.
    with Fixture(tmp) as fx:
        c = w.Conn.unix(fx.server.sock, timeout=15).handshake("disk")
        for i, cmd in enumerate((w.CMD_READ, w.CMD_WRITE, w.CMD_TRIM, w.CMD_WRITE_ZEROES,
                                 w.CMD_CACHE)):
            c.request(cmd, 4096, 0, cookie=30 + i)
            error, cookie, _ = c.reply()
            assert cookie == 30 + i and error in (0, w.EINVAL), (cmd, error)
        c.request(w.CMD_FLUSH, 0, 0, cookie=40)
        assert c.reply() == (0, 40, b"")
        assert c.read(DATA[0][0], 4096) == (0, h.pattern(DATA[0][0], 4096))
        c.close()
        fx.assert_healthy()


if __name__ == "__main__":
    h.main([test_export_name_with_and_without_zeroes, test_info_then_go_agree, test_unusual_export_name,
            test_structured_read_chunks, test_meta_context_negotiation,
            test_meta_context_is_per_export,
            test_zero_length_requests])
