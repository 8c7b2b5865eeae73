"""TLS test material made with the real tools: a CA, server and client
certificates with gnutls' certtool (ECDSA keys: fast to generate), PSK files
with psktool, in the directory layouts qemu's tls-creds-x509 and libnbd's
tls-certificates= read (ca-cert.pem + server-*.pem or client-*.pem)."""
import os
import shutil
import subprocess
import time

import qnbd_harness as h


def _certtool(*args):
    subprocess.run(["certtool", *args], check=True, capture_output=True, timeout=30)


def _template(path, lines):
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def _key(path):
    _certtool("--generate-privkey", "--key-type=ecdsa", "--outfile", path)
    return path


class Pki:
    """A CA under tmp/NAME with helpers to issue server and client cert dirs."""

    def __init__(self, tmp, name="pki", cn="qnbd test CA"):
        self.dir = os.path.join(tmp, name)
        os.makedirs(self.dir)
        self.ca_key = _key(os.path.join(self.dir, "ca-key.pem"))
        self.ca_cert = os.path.join(self.dir, "ca-cert.pem")
        t = _template(os.path.join(self.dir, "ca.info"),
                      [f'cn = "{cn}"', "ca", "cert_signing_key", "expiration_days = 2"])
        _certtool("--generate-self-signed", "--load-privkey", self.ca_key,
                  "--template", t, "--outfile", self.ca_cert)

    def _issue(self, out_dir, role, lines):
        os.makedirs(out_dir, exist_ok=True)
        shutil.copy(self.ca_cert, os.path.join(out_dir, "ca-cert.pem"))
        key = _key(os.path.join(out_dir, f"{role}-key.pem"))
        t = _template(os.path.join(out_dir, f"{role}.info"), lines)
        _certtool("--generate-certificate", "--load-ca-certificate", self.ca_cert,
                  "--load-ca-privkey", self.ca_key, "--load-privkey", key,
                  "--template", t, "--outfile", os.path.join(out_dir, f"{role}-cert.pem"))
        return out_dir

    def server(self, name="server", expired=False):
        dates = (['activation_date = "2020-01-01 00:00:00"',
                  'expiration_date = "2020-01-02 00:00:00"'] if expired
                 else ["expiration_days = 2"])
        return self._issue(os.path.join(self.dir, name), "server",
                           ['organization = "qnbd tests"', "cn = localhost", "dns_name = localhost",
                            "ip_address = 127.0.0.1", "tls_www_server", "signing_key",
                            "encryption_key"] + dates)

    def client(self, name, cn, expired=False):
        """A client cert dir; its subject DN (RFC 4514) is f"CN={cn},O=qnbd tests"."""
        dates = (['activation_date = "2020-01-01 00:00:00"',
                  'expiration_date = "2020-01-02 00:00:00"'] if expired
                 else ["expiration_days = 2"])
        return self._issue(os.path.join(self.dir, name), "client",
                           ['organization = "qnbd tests"', f'cn = "{cn}"', "tls_www_client",
                            "signing_key", "encryption_key"] + dates)


def psk_file(tmp, users, name="keys.psk"):
    """A psktool key file with a random key per user; returns its path."""
    path = os.path.join(tmp, name)
    for u in users:
        subprocess.run(["psktool", "-u", u, "-p", path], check=True, capture_output=True,
                       timeout=30)
    return path


def nbds_unix(srv, name="", **params):
    """nbds+unix URI with libnbd's query parameters (tls-certificates=, tls-psk-file=...)."""
    q = "".join(f"&{k.replace('_', '-')}={v}" for k, v in params.items())
    return f"nbds+unix:///{name}?socket={srv.sock}{q}"


def log_text(srv):
    with open(srv.log, errors="replace") as f:
        return f.read()


def wait_log(srv, needle, timeout=10):
    """Until the server's log holds `needle` (re-read every 20 ms, failing after timeout)."""
    deadline = time.monotonic() + timeout
    while needle not in log_text(srv):
        if time.monotonic() > deadline:
            raise AssertionError(f"log never showed {needle!r}:\n{log_text(srv)[-3000:]}")
        time.sleep(0.02)


def run_fails(argv, **kw):
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=kw.pop("timeout", 60), **kw)
    assert p.returncode != 0, f"{argv} should have failed:\n{p.stdout}\n{p.stderr}"
    return p


__all__ = ["Pki", "psk_file", "nbds_unix", "log_text", "wait_log", "run_fails", "h"]
