#!/usr/bin/python3
"""TLS with the real clients: libnbd (nbdinfo, nbdcopy, nbdsh, the python
binding) and QEMU (qemu-img, qemu-io with --object tls-creds-x509/psk), over
nbds+unix and nbds:// TCP, X.509 and PSK; every command over TLS."""
import json
import os
import shutil
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbd  # noqa: E402
import qnbd_harness as h  # noqa: E402
import tls_common as t  # noqa: E402

SIZE = 16 * h.MiB
DATA = [(0, 64 * 1024), (3 * h.MiB, 1 * h.MiB)]


def x509_server(tmp, pki, tcp=False, extra=()):
    image = h.make_sparse_image(os.path.join(tmp, "disk.raw"), SIZE, DATA)
    return h.Server(tmp, image, name="disk", tcp=tcp,
                    extra=["--tls-certificates", pki.server(), "--log-level", "debug", *extra])


def test_nbdinfo_nbdcopy_x509_unix_and_tcp(tmp):
    pki = t.Pki(tmp)
    client = pki.client("c1", "client1")
    with x509_server(tmp, pki, tcp=True) as srv:
        uri = t.nbds_unix(srv, "disk", tls_certificates=client)
        e = json.loads(h.run(["nbdinfo", "--json", uri]).stdout)
        assert e["TLS"] is True and e["exports"][0]["export-size"] == SIZE, e
        tcp = f"nbds://127.0.0.1:{srv.port}/disk?tls-certificates={client}"
        e = json.loads(h.run(["nbdinfo", "--json", tcp]).stdout)
        assert e["TLS"] is True, e
        copy = os.path.join(tmp, "copy.raw")
        h.run(["nbdcopy", tcp, copy])
        assert h.sha256_file(copy) == h.sha256_file(srv.image)
        # and back the other way, over the Unix socket, with new content
        src = h.make_sparse_image(os.path.join(tmp, "src.raw"), SIZE, [(h.MiB, 2 * h.MiB)], seed=7)
        h.run(["nbdcopy", src, uri])
        assert h.sha256_file(srv.image) == h.sha256_file(src)
        # all data, many requests in flight: replies still being sent when
        # the next requests are read
        full = h.make_sparse_image(os.path.join(tmp, "full.raw"), SIZE, [(0, SIZE)], seed=9)
        h.run(["nbdcopy", full, uri])
        h.run(["nbdcopy", "--requests=16", uri, copy])
        assert h.sha256_file(copy) == h.sha256_file(full)
        assert "TLSv1.3" in t.log_text(srv), "the debug log names the TLS version"
        assert "kernel TLS send" in t.log_text(srv), "and whether kernel TLS took over"


def test_commands_over_tls_python_and_nbdsh(tmp):
    pki = t.Pki(tmp)
    client = pki.client("c1", "client1")
    with x509_server(tmp, pki) as srv:
        uri = t.nbds_unix(srv, "disk", tls_certificates=client)
        g = nbd.NBD()
        g.set_uri_allow_local_file(True)
        g.add_meta_context("base:allocation")
        g.connect_uri(uri)
        assert g.get_tls_negotiated() and g.can_trim() and g.can_zero() and g.can_flush()
        assert g.pread(64 * 1024, 0) == h.pattern(0, 64 * 1024)
        big = h.pattern(0, 4 * h.MiB, seed=3)  # larger than the receive buffer, many records
        g.pwrite(big, 8 * h.MiB, nbd.CMD_FLAG_FUA)
        assert g.pread(len(big), 8 * h.MiB) == big
        g.flush()
        g.zero(h.MiB, 3 * h.MiB)
        assert g.pread(h.MiB, 3 * h.MiB) == bytes(h.MiB)
        g.trim(64 * 1024, 0)
        extents = []
        g.block_status(4 * h.MiB, 8 * h.MiB,
                       lambda ctx, off, ents, err: extents.extend(ents) or 0)
        assert extents and extents[0] == 4 * h.MiB, extents  # one extent, data
        g.shutdown()
        # nbdsh is `python3 -m nbd`; its script runs with `h` as the handle
        got = h.run(["/usr/bin/python3", "-m", "nbd", "-c", "h.set_uri_allow_local_file(True)",
                     "-c", f"h.connect_uri({uri!r})",
                     "-c", "import sys; sys.stdout.write(h.pread(16, 8*1024*1024).hex())"]).stdout
        assert got == big[:16].hex(), got
    assert h.read_file_range(srv.image, 8 * h.MiB, len(big)) == big


def test_psk_libnbd_and_wrong_key(tmp):
    keys = t.psk_file(tmp, ["alice"])
    wrong = t.psk_file(tmp, ["alice"], name="wrong.psk")
    image = h.make_sparse_image(os.path.join(tmp, "disk.raw"), SIZE, DATA)
    with h.Server(tmp, image, name="disk", extra=["--tls-psk", keys, "--log-level", "debug"]) as srv:
        ok = f"nbds+unix://alice@/disk?socket={srv.sock}&tls-psk-file={keys}"
        e = json.loads(h.run(["nbdinfo", "--json", ok]).stdout)
        assert e["TLS"] is True, e
        assert "PSK user alice" in t.log_text(srv)
        bad = f"nbds+unix://alice@/disk?socket={srv.sock}&tls-psk-file={wrong}"
        t.run_fails(["nbdinfo", bad])
        t.wait_log(srv, "TLS handshake failed")
        srv.assert_alive()
        h.run(["nbdinfo", ok])


def qemu_x509(client_dir):
    return ["--object", f"tls-creds-x509,id=tls0,dir={client_dir},endpoint=client"]


def test_qemu_img_and_qemu_io_x509(tmp):
    pki = t.Pki(tmp)
    client = pki.client("c1", "client1")
    with x509_server(tmp, pki, tcp=True) as srv:
        opts = f"driver=nbd,host=127.0.0.1,port={srv.port},export=disk,tls-creds=tls0"
        info = json.loads(h.run(["qemu-img", "info", "--output=json", *qemu_x509(client),
                                 "--image-opts", opts]).stdout)
        assert info["virtual-size"] == SIZE, info
        out = os.path.join(tmp, "out.qcow2")
        h.run(["qemu-img", "convert", *qemu_x509(client), "--image-opts", opts, "-O", "qcow2", out])
        h.run(["qemu-img", "check", out])
        h.run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw", out, srv.image])
        h.run(["qemu-io", *qemu_x509(client), "--image-opts", opts,
               "-c", "write -P 0x5a 1M 64k", "-c", "flush", "-c", "read -P 0x5a 1M 64k"])
    assert h.read_file_range(srv.image, h.MiB, 65536) == b"\x5a" * 65536


def test_qemu_img_psk(tmp):
    keys = t.psk_file(tmp, ["qemu"], name="keys.psk")  # qemu reads DIR/keys.psk
    image = h.make_sparse_image(os.path.join(tmp, "disk.raw"), SIZE, DATA)
    with h.Server(tmp, image, name="disk", tcp=True, extra=["--tls-psk", keys]) as srv:
        opts = f"driver=nbd,host=127.0.0.1,port={srv.port},export=disk,tls-creds=tls0"
        obj = ["--object", f"tls-creds-psk,id=tls0,dir={tmp},username=qemu,endpoint=client"]
        h.run(["qemu-io", *obj, "--image-opts", opts, "-r", "-c", "read -P 0 5M 64k"])
        info = json.loads(h.run(["qemu-img", "info", "--output=json", *obj,
                                 "--image-opts", opts]).stdout)
        assert info["virtual-size"] == SIZE, info


def test_qemu_client_certificate_allowed_and_refused(tmp):
    pki = t.Pki(tmp)
    good = pki.client("good", "vm-host-1")
    other = pki.client("other", "vm-host-2")
    image = h.make_sparse_image(os.path.join(tmp, "disk.raw"), SIZE, DATA)
    config = os.path.join(tmp, "qnbd.yaml")
    port = h.free_tcp_port()
    with open(config, "w") as f:
        f.write(f"listen: {{host: 127.0.0.1, port: {port},\n"
                f"  tls: {{mode: require, certificates: {pki.server()}, verify_peer: true}}}}\n"
                f"exports:\n  - name: disk\n    path: {image}\n    format: raw\n"
                f"    allow:\n      - dn: 'CN=vm-host-1,O=qnbd tests'\n")
    with h.Server(tmp, config=config) as srv:
        opts = f"driver=nbd,host=127.0.0.1,port={port},export=disk,tls-creds=tls0"
        h.run(["qemu-img", "info", *qemu_x509(good), "--image-opts", opts])
        p = t.run_fails(["qemu-img", "info", *qemu_x509(other), "--image-opts", opts])
        assert "disk" in p.stderr, p.stderr
        t.wait_log(srv, "export 'disk' refused: no allow rule matches")
        assert "CN=vm-host-2,O=qnbd tests" in t.log_text(srv)
        # no certificate at all: verify_peer ends the TLS handshake
        t.run_fails(["nbdinfo", f"nbds://127.0.0.1:{port}/disk?tls-certificates={pki.dir}"])
        t.wait_log(srv, "TLS handshake failed")


def test_certificates_replaced_and_reloaded_on_sighup(tmp):
    """New certificate files behind the same paths are picked up on SIGHUP, with
    no restart; unreadable ones are refused and the old credentials kept."""
    old, new = t.Pki(tmp, "old", cn="old CA"), t.Pki(tmp, "new", cn="new CA")
    old_client, new_client = old.client("c1", "client1"), new.client("c2", "client2")
    certs = os.path.join(tmp, "server-certs")
    shutil.copytree(old.server(), certs)
    image = h.make_sparse_image(os.path.join(tmp, "disk.raw"), SIZE, DATA)
    with h.Server(tmp, image, name="disk", tcp=True,
                  extra=["--tls-certificates", certs]) as srv:
        def works(client):
            # over TCP: libnbd verifies the server's certificate only when it has a host name
            uri = f"nbds://127.0.0.1:{srv.port}/disk?tls-certificates={client}"
            return subprocess.run(["nbdinfo", "--size", uri], capture_output=True,
                                  timeout=60).returncode == 0
        assert works(old_client) and not works(new_client)
        new_server = new.server()
        for f in ("ca-cert.pem", "server-cert.pem", "server-key.pem"):
            shutil.copy(os.path.join(new_server, f), os.path.join(certs, f))
        os.kill(srv.pid, signal.SIGHUP)
        t.wait_log(srv, "TLS credentials reloaded")
        assert works(new_client) and not works(old_client)
        with open(os.path.join(certs, "server-key.pem"), "w") as f:
            f.write("not a key\n")
        os.kill(srv.pid, signal.SIGHUP)
        t.wait_log(srv, "TLS reload failed, keeping the previous credentials")
        assert works(new_client), "a failed reload dropped the working credentials"


if __name__ == "__main__":
    h.main([test_nbdinfo_nbdcopy_x509_unix_and_tcp, test_commands_over_tls_python_and_nbdsh,
            test_psk_libnbd_and_wrong_key, test_qemu_img_and_qemu_io_x509, test_qemu_img_psk,
            test_qemu_client_certificate_allowed_and_refused,
            test_certificates_replaced_and_reloaded_on_sighup])
