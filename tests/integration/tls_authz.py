#!/usr/bin/python3
"""Per-export allow-lists, both directions: address ranges (TCP), Unix peers
by uid, PSK user names (X.509 subjects: tls_interop.py, with QEMU). A client
that is not allowed does not see the export in LIST, gets NBD_REP_ERR_POLICY
on GO, and the refusal is logged with the peer and the reason."""
import json
import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbd_wire as w  # noqa: E402
import qnbd_harness as h  # noqa: E402
import tls_common as t  # noqa: E402


def config(tmp, listen, exports):
    """YAML with one small raw image per (name, [allow rules]) export."""
    lines = [f"listen: {listen}", "exports:"]
    for name, allow in exports:
        path = h.make_sparse_image(os.path.join(tmp, f"{name}.raw"), h.MiB, [])
        rules = ", ".join(f"'{r}'" for r in allow)
        lines.append(f"  - {{name: {name}, path: {path}, format: raw, allow: [{rules}]}}")
    path = os.path.join(tmp, "qnbd.yaml")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def listed(uri):
    out = json.loads(h.run(["nbdinfo", "--list", "--json", uri]).stdout)
    return sorted(e["export-name"] for e in out["exports"])


def test_address_ranges_over_tcp(tmp):
    port = h.free_tcp_port()
    cfg = config(tmp, f"{{host: 127.0.0.1, port: {port}}}",
                 [("lan", ["10.0.0.0/8"]), ("local", ["192.168.0.0/16", "127.0.0.0/8"]),
                  ("host", ["127.0.0.1"]), ("v6", ["::1/128"]), ("open", [])])
    with h.Server(tmp, config=cfg) as srv:
        assert listed(f"nbd://127.0.0.1:{port}/") == ["host", "local", "open"]
        h.run(["nbdinfo", f"nbd://127.0.0.1:{port}/local"])
        t.run_fails(["nbdinfo", f"nbd://127.0.0.1:{port}/lan"])
        t.wait_log(srv, "export 'lan' refused: no allow rule matches (address 127.0.0.1")
        c = w.Conn(socket.create_connection(("127.0.0.1", port), timeout=10))
        c.greeting()
        c.client_flags()
        assert c.go("v6") == w.REP_ERR_POLICY
        assert c.go("lan") == w.REP_ERR_POLICY
        assert c.go("host") == w.REP_ACK
        c = w.Conn(socket.create_connection(("127.0.0.1", port), timeout=10))
        c.greeting()
        c.client_flags()
        c.option(w.OPT_EXPORT_NAME, b"lan")  # old style: disconnected
        assert c.is_closed_by_server()


def test_unix_peers_by_uid(tmp):
    me = os.getuid()
    cfg = config(tmp, f"{{unix: {os.path.join(tmp, 'nbd.sock')}, tcp: false}}",
                 [("mine", [f"uid:{me}"]), ("theirs", [f"uid:{me + 1}", "127.0.0.0/8"])])
    with h.Server(tmp, config=cfg) as srv:
        assert listed(srv.unix_uri("")) == ["mine"]
        t.run_fails(["nbdinfo", srv.unix_uri("theirs")])
        t.wait_log(srv, f"export 'theirs' refused: no allow rule matches (uid {me}")


def test_psk_user_names(tmp):
    keys = t.psk_file(tmp, ["alice", "bob"])
    sock = os.path.join(tmp, "nbd.sock")
    cfg = config(tmp, f"{{unix: {sock}, tcp: false, tls: {{psk_file: {keys}}}}}",
                 [("alices", ["psk:alice"]), ("shared", ["psk:alice", "psk:bob"])])
    with h.Server(tmp, config=cfg) as srv:
        def uri(user, name=""):
            return f"nbds+unix://{user}@/{name}?socket={sock}&tls-psk-file={keys}"
        assert listed(uri("alice")) == ["alices", "shared"]
        assert listed(uri("bob")) == ["shared"]
        h.run(["nbdinfo", uri("alice", "alices")])
        t.run_fails(["nbdinfo", uri("bob", "alices")])
        t.wait_log(srv, "export 'alices' refused: no allow rule matches")
        assert "PSK user 'bob'" in t.log_text(srv)


def test_config_rejects_rules_that_cannot_match(tmp):
    cfg = config(tmp, f"{{unix: {os.path.join(tmp, 'nbd.sock')}, tcp: false}}",
                 [("x", ["dn:CN=someone"])])
    p = t.run_fails([h.server_binary(), "--config", cfg, "--check-config"])
    assert "needs TLS with verify_peer" in p.stderr, p.stderr
    cfg = config(tmp, "{tcp: true}", [("y", ["300.1.2.3/8"])])
    p = t.run_fails([h.server_binary(), "--config", cfg, "--check-config"])
    assert "qnbd.yaml:" in p.stderr and "address range" in p.stderr, p.stderr


if __name__ == "__main__":
    h.main([test_address_ranges_over_tcp, test_unix_peers_by_uid, test_psk_user_names,
            test_config_rejects_rules_that_cannot_match])
