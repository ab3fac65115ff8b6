#!/usr/bin/env python3
"""TLS smoke figures (not a test): full TLS + SSE handshakes per second, and
the daemon's memory per idle TLS stream.

    python3 bench/tls_smoke.py [--handshakes 300] [--streams 500]

Starts its own daemon on free loopback ports with a fresh self-signed pair,
ends it by its pid, and stops by itself (every step has a deadline).  The
figures depend on the machine; the benchmark issue records them.
"""

import argparse
import socket
import ssl
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "src")]

from support import Daemon  # noqa: E402
from tls_support import selfsigned, ssl_args  # noqa: E402

REQUEST = b"GET /sse?subscribe=bench HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def open_stream(port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
    sock.sendall(REQUEST)
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(4096)
        if not data:
            raise RuntimeError("closed during the SSE handshake")
        head += data
    return sock


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--handshakes", type=int, default=300)
    parser.add_argument("--streams", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = selfsigned(Path(tmp) / "certs")
        daemon = Daemon(tmp, *ssl_args(cert, key), "-q")
        try:
            context = ssl.create_default_context(cafile=str(cert))
            started = time.perf_counter()
            for _ in range(args.handshakes):
                open_stream(daemon.port, context).close()
            elapsed = time.perf_counter() - started
            print(f"TLS + SSE handshakes: {args.handshakes / elapsed:.0f}/s "
                  f"({args.handshakes} sequential, {ssl.OPENSSL_VERSION})")
            time.sleep(0.5)
            before = rss_kib(daemon.pid)
            streams = [open_stream(daemon.port, context) for _ in range(args.streams)]
            daemon.wait_clients(args.streams, timeout=30)
            after = rss_kib(daemon.pid)
            print(f"memory per idle TLS stream: {(after - before) * 1024 / args.streams:.0f} bytes "
                  f"(RSS {before} KiB -> {after} KiB for {args.streams} streams)")
            for s in streams:
                s.close()
        finally:
            daemon.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
