"""A deliberately small raw-socket NBD client, so tests can send what no real
client would: garbage, lies about lengths, unknown commands, bad magic."""
import socket
import struct

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698

FLAG_FIXED_NEWSTYLE = 1
FLAG_NO_ZEROES = 2

OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_INFO = 6
OPT_GO = 7
OPT_STARTTLS = 5

REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_ERR_UNSUP = 0x80000001
REP_ERR_POLICY = 0x80000002
REP_ERR_INVALID = 0x80000003
REP_ERR_UNKNOWN = 0x80000006
REP_ERR_TOO_BIG = 0x80000009

INFO_EXPORT = 0

CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_CACHE = 5
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7

CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2
CMD_FLAG_REQ_ONE = 1 << 3

EPERM, EIO, EINVAL, ENOSPC, EOVERFLOW = 1, 5, 22, 28, 75


class Closed(Exception):
    """The server closed the connection."""


class Conn:
    def __init__(self, sock):
        self.sock = sock
        self.tflags = None
        self.size = None
        self.last_reply = b""  # payload of the final option reply (error messages)

    @classmethod
    def unix(cls, path, timeout=10):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(path)
        return cls(s)

    def close(self):
        self.sock.close()

    def reset(self):
        """Close with an RST rather than a FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def send(self, data):
        self.sock.sendall(data)

    def recv_exact(self, n, into=None):
        """n bytes; into a caller's reusable bytearray (returned) when given."""
        buf = bytearray(n) if into is None else into
        view, got = memoryview(buf), 0
        while got < n:
            try:
                k = self.sock.recv_into(view[got:n])
            except ConnectionResetError:
                k = 0
            if k == 0:
                raise Closed(f"closed after {got} of {n} bytes")
            got += k
        return bytes(buf) if into is None else buf

    def is_closed_by_server(self):
        """True once the server has closed: reads to EOF (discarding data). Times out if not."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    # -- handshake --
    def greeting(self):
        magic, opt, hsflags = struct.unpack(">QQH", self.recv_exact(18))
        assert magic == NBDMAGIC and opt == IHAVEOPT, (hex(magic), hex(opt))
        assert hsflags & FLAG_FIXED_NEWSTYLE, hsflags
        return hsflags

    def client_flags(self, flags=FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES):
        self.send(struct.pack(">I", flags))

    def option(self, opt, data=b"", length=None):
        length = len(data) if length is None else length
        self.send(struct.pack(">QII", IHAVEOPT, opt, length) + data)

    def option_reply(self):
        magic, opt, rtype, length = struct.unpack(">QIII", self.recv_exact(20))
        assert magic == OPT_REPLY_MAGIC, hex(magic)
        return opt, rtype, self.recv_exact(length)

    def go(self, name, opt=OPT_GO):
        """INFO/GO; returns the final reply type (REP_ACK on success)."""
        raw = name.encode() if isinstance(name, str) else name
        self.option(opt, struct.pack(">I", len(raw)) + raw + struct.pack(">H", 0))
        while True:
            _, rtype, data = self.option_reply()
            if rtype == REP_INFO and struct.unpack(">H", data[:2])[0] == INFO_EXPORT:
                self.size, self.tflags = struct.unpack(">QH", data[2:12])
            elif rtype != REP_INFO:
                self.last_reply = data
                return rtype

    def handshake(self, name=""):
        self.greeting()
        self.client_flags()
        rtype = self.go(name)
        assert rtype == REP_ACK, hex(rtype)
        return self

    # -- transmission (simple replies: no structured reply negotiated) --
    def request(self, cmd, offset, length, flags=0, cookie=1, payload=b"", magic=REQUEST_MAGIC):
        self.send(struct.pack(">IHHQQI", magic, flags, cmd, cookie, offset, length) + payload)

    def reply(self, read_length=0, into=None):
        magic, error, cookie = struct.unpack(">IIQ", self.recv_exact(16))
        assert magic == SIMPLE_REPLY_MAGIC, hex(magic)
        data = self.recv_exact(read_length, into) if error == 0 and read_length else b""
        return error, cookie, data

    def read(self, offset, length, cookie=7):
        self.request(CMD_READ, offset, length, cookie=cookie)
        error, got_cookie, data = self.reply(length)
        assert got_cookie == cookie, (got_cookie, cookie)
        return error, data


# -- structured replies and metadata contexts --
STRUCTURED_REPLY_MAGIC = 0x668E33EF
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10
REP_META_CONTEXT = 4
REPLY_FLAG_DONE = 1
REPLY_TYPE_NONE = 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_OFFSET_HOLE = 2
REPLY_TYPE_BLOCK_STATUS = 5
REPLY_TYPE_ERROR = 0x8001
REPLY_TYPE_ERROR_OFFSET = 0x8002


def meta_context_data(export, queries):
    raw = export.encode()
    out = struct.pack(">I", len(raw)) + raw + struct.pack(">I", len(queries))
    for q in queries:
        out += struct.pack(">I", len(q)) + q.encode()
    return out


def meta_context_option(conn, opt, export, queries):
    """LIST/SET_META_CONTEXT; returns ({id: name}, final reply type)."""
    conn.option(opt, meta_context_data(export, queries))
    contexts = {}
    while True:
        _, rtype, data = conn.option_reply()
        if rtype != REP_META_CONTEXT:
            return contexts, rtype
        contexts[struct.unpack(">I", data[:4])[0]] = data[4:].decode()


def structured_reply(conn):
    """Either kind of reply header; returns dict with kind, flags, type, cookie, payload."""
    magic = struct.unpack(">I", conn.recv_exact(4))[0]
    if magic == SIMPLE_REPLY_MAGIC:
        error, cookie = struct.unpack(">IQ", conn.recv_exact(12))
        return {"kind": "simple", "error": error, "cookie": cookie, "flags": REPLY_FLAG_DONE}
    assert magic == STRUCTURED_REPLY_MAGIC, hex(magic)
    flags, rtype, cookie, length = struct.unpack(">HHQI", conn.recv_exact(16))
    return {"kind": "chunk", "flags": flags, "type": rtype, "cookie": cookie,
            "payload": conn.recv_exact(length)}


def structured_replies(conn, cookie):
    """All chunks of one request, up to the one with REPLY_FLAG_DONE."""
    chunks = []
    while True:
        r = structured_reply(conn)
        assert r["cookie"] == cookie, (r["cookie"], cookie)
        chunks.append(r)
        if r["flags"] & REPLY_FLAG_DONE:
            return chunks
