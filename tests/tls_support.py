"""Test helpers for HTTPS: certificate pairs on disk, a daemon started with
``-ssl``, and a verifying TLS SSE client built on support.SseClient.

Clients wrap their socket with ``suppress_ragged_eofs=False``: a connection
that ends without close_notify raises ``ssl.SSLEOFError`` instead of reading
as a clean end, so every test that reads to the end also checks close_notify.
"""

from __future__ import annotations

import datetime
import socket
import ssl
import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from support import SseClient, pyhasses_env, wait_until
from pyhasses.selfsigned import make_pair


def write_pair(directory, days=365, not_before=None, passphrase=None, common_name="localhost"):
    """Write ``cert.pem`` and ``key.pem`` into ``directory``; return both paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cert_pem, key_pem = make_pair(days, common_name=common_name, not_before=not_before)
    if passphrase is not None:
        key = serialization.load_pem_private_key(key_pem, None)
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.BestAvailableEncryption(passphrase))
    cert, key = directory / "cert.pem", directory / "key.pem"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    return cert, key


def selfsigned(directory):
    """The documented command: ``python3 -m pyhasses.selfsigned DIR``."""
    subprocess.run([sys.executable, "-m", "pyhasses.selfsigned", str(directory)], check=True,
                   env=pyhasses_env(), timeout=30, capture_output=True)
    return Path(directory) / "cert.pem", Path(directory) / "key.pem"


def ssl_args(cert, key):
    return ["-ssl", f"-cert-file={cert}", f"-privatekey-file={key}"]


def client_context(cafile, version=None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cafile))
    if version is not None:
        context.minimum_version = context.maximum_version = version
    context.set_alpn_protocols(["http/1.1"])
    return context


class TlsSseClient(SseClient):
    """support.SseClient over a verifying TLS socket."""

    def __init__(self, host, port, cafile, version=None, timeout=5.0, rcvbuf=None):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        raw = socket.socket(family, socket.SOCK_STREAM)
        if rcvbuf:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        raw.settimeout(timeout)
        raw.connect((host, port))
        self.sock = client_context(cafile, version).wrap_socket(
            raw, server_hostname=host, suppress_ragged_eofs=False)
        self.buf = b""
        self.head = b""

    #: The end must be close_notify: a reset is an error here, and an end
    #: without close_notify raises SSLEOFError.
    ENDS = (EOFError,)


def open_stream(daemon, cafile, subscribe="room1", host="127.0.0.1", version=None, rcvbuf=None):
    client = TlsSseClient(host, daemon.port, cafile, version=version, rcvbuf=rcvbuf)
    client.request(f"GET {daemon.murl}?subscribe={subscribe} HTTP/1.1\r\nHost: localhost\r\n"
                   "Connection: keep-alive\r\n\r\n")
    client.read_handshake()
    return client


def client_hello() -> bytes:
    """A real ClientHello, as the first flight of a TLS client."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def in_days(days: float) -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=days)


def wait_stopped(daemon, timeout=15.0) -> int:
    wait_until(lambda: daemon.proc.poll() is not None, timeout, what="the daemon to exit")
    return daemon.proc.returncode
