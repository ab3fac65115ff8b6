"""Test helpers: the real daemon as a subprocess on free loopback ports, and
raw-socket clients for its SSE port and control port.

Everything here is bounded in time: every wait has a deadline and every
process started is ended by its pid.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"


LOOPBACKS = ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1"))


#: Set (scripts/test documents it): no test installs, removes or adds
#: anything outside its own temporary files.
NO_SYSTEM_CHANGE = bool(os.environ.get("PYHASSES_TEST_NO_SYSTEM"))


def free_port(tries: int = 20) -> int:
    """A TCP port free on both loopback addresses, as the daemon binds
    both (and the wildcard of both families for the SSE port): the kernel
    picks it for a dual-stack wildcard socket, then each loopback address
    is checked.  Another process may still take it before the daemon does;
    ``Daemon`` starts again on new ports when that happens."""
    for _ in range(tries):
        port = _wildcard_port()
        if all(_bindable(family, host, port) for family, host in LOOPBACKS):
            return port
    raise AssertionError(f"no port free on 127.0.0.1 and ::1 after {tries} tries")


def _wildcard_port() -> int:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.bind(("::", 0))
            return s.getsockname()[1]
    except OSError:  # no IPv6 here
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("0.0.0.0", 0))
            return s.getsockname()[1]


def _bindable(family, host, port) -> bool:
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, port))
        return True
    except OSError as exc:
        # An address family or loopback address this host lacks is no conflict.
        return exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.02, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def id_key(event_id: str) -> tuple:
    """An event id (``<T><R>``, sse.EventIds: digits, the run's tag in the
    last 9) as (tag, T): T sorts in the order the daemon handed ids out
    within one run, and the whole text compares as an integer across runs."""
    assert event_id.isascii() and event_id.isdigit() and len(event_id) > 9 and event_id[0] != "0", event_id
    return event_id[-9:], int(event_id[:-9])


def pyhasses_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


class HubClient:
    """A stand-in stream for the hub's own tests: the attributes the hub
    reads and writes (hub.Subscriber), and what it was handed."""

    def __init__(self, name=""):
        self.name = name
        self.tokens = ()
        self.everything = False
        self.uniq_id = ""
        self.established = False
        self.messages = 0
        self.got = []

    def deliver(self, data):
        self.got.append(data)
        self.messages += 1

    def __repr__(self):
        return self.name


def subscribed(hub, name, tokens, uniq="") -> HubClient:
    """A HubClient connected to ``hub`` and subscribed to ``tokens``."""
    c = HubClient(name)
    hub.connected(c)
    hub.subscribe(c, tokens, uniq)
    return c


def run_module(module: str, *args, timeout=20, **kw) -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS`` from this tree, as a separate process, its
    output captured as text."""
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          env=pyhasses_env(), timeout=timeout, **kw)


class Daemon:
    """``pyhasses -nodaemon`` on free ports; ``stop()`` ends it by its pid."""

    def __init__(self, tmp_path, *extra, fifo=False, control=True, murl="/sse", args=None, start=True,
                 wait_ready=True, env=None):
        self.tmp = Path(tmp_path)
        self.env = env or {}  # added to the daemon's environment
        self.fifo = str(self.tmp / "fifo") if fifo else None
        self.murl = murl
        self.extra = list(extra)
        self.ports_chosen_here = args is None
        self.control_wanted = control
        self._choose_ports()
        if args is not None:
            self.args = list(args) + self.extra
        self.proc = None
        if start:
            self.start(wait_ready)

    #: A port taken between free_port() and the daemon's bind.
    PORT_TAKEN = "Address already in use"

    def _choose_ports(self):
        self.port = free_port()
        self.cport = free_port() if self.control_wanted else None
        self.logpath = self.tmp / f"daemon-{self.port}.log"
        args = ["-nodaemon", f"-p={self.port}", f"-murl={self.murl}"]
        if self.cport:
            args.append(f"-cp={self.cport}")
        if self.fifo:
            args.append(f"-fifo={self.fifo}")
        self.args = args + self.extra

    def start(self, wait_ready=True, tries=3):
        """Start; when ports chosen here were taken meanwhile (EADDRINUSE),
        start again on new ones."""
        for attempt in range(tries):
            self._spawn()
            if not wait_ready:
                return self
            try:
                self.wait_ready()
                return self
            except AssertionError:
                taken = self.proc.poll() is not None and self.PORT_TAKEN in self.log()
                if not (taken and self.ports_chosen_here and attempt + 1 < tries):
                    raise
                self._logf.close()
                self._choose_ports()
        return self

    def _spawn(self):
        self._logf = open(self.logpath, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pyhasses", *self.args],
            stdout=self._logf, stderr=subprocess.STDOUT, env={**pyhasses_env(), **self.env}, cwd=str(self.tmp),
        )

    def wait_ready(self, timeout=10.0):
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.cport or self.port), timeout=0.2).close()
                return True
            except OSError:
                return False

        wait_until(ready, timeout, what="the daemon to listen")
        if self.fifo:
            wait_until(lambda: os.path.exists(self.fifo), timeout, what="the FIFO")

    @property
    def pid(self):
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.logpath.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern: str, timeout=5.0):
        return wait_until(lambda: re.search(pattern, self.log()), timeout, what=f"log line {pattern!r}")

    def signal(self, signum):
        self.proc.send_signal(signum)

    def stop(self, timeout=10.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError("daemon did not stop on SIGTERM")
        finally:
            self._logf.close()

    def alive(self) -> bool:
        return self.proc.poll() is None

    # -- clients ------------------------------------------------------------
    def sse(self, subscribe="room1", uniq=None, host="127.0.0.1", **kw) -> "SseClient":
        query = f"subscribe={subscribe}" + (f"&id={uniq}" if uniq else "")
        client = SseClient(host, self.port, **kw)
        client.request(f"GET {self.murl}?{query} HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n")
        client.read_handshake()
        return client

    def control(self, text: str, timeout=5.0) -> bytes:
        """Send on a new control connection, half-close, read until closed."""
        return control_exchange(self.cport, text, timeout)

    def control_json(self, command: str) -> dict:
        reply = self.control(command + "\n")
        return json.loads(reply.decode())

    def publish_fifo(self, text: str):
        fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)

    def wait_clients(self, n: int, established=True, timeout=5.0):
        key = "sseconncli" if established else "allconncli"
        wait_until(lambda: self.control_json("tcpstatus")[key] == n, timeout, what=f"{key} == {n}")


class SseClient:
    """A raw-socket SSE client that undoes the chunked framing itself."""

    def __init__(self, host, port, timeout=5.0, family=None):
        family = family or (socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.buf = b""
        self.head = b""

    def request(self, text):
        self.sock.sendall(text.encode() if isinstance(text, str) else text)

    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no data before the deadline")
        self.sock.settimeout(remaining)
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("connection closed")
        self.buf += data

    def read_head(self, timeout=5.0) -> bytes:
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buf:
            self._fill(deadline)
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        self.head = head + b"\r\n\r\n"
        return self.head

    def read_handshake(self, timeout=5.0) -> bytes:
        """The 200 head, and the ``retry:`` hint the daemon sends with it
        (in the same write), kept as ``self.retry`` (None when absent), so
        that ``read_chunk`` then starts at the first event."""
        head = self.read_head(timeout)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
        self.retry = None
        m = re.match(rb"[0-9a-f]+\r\nretry: (\d+)\n\n\r\n", self.buf)
        if m:
            self.retry = int(m.group(1))
            self.buf = self.buf[m.end():]
        return head

    def read_chunk(self, timeout=5.0) -> bytes:
        """One chunk's payload; b"" for the last chunk."""
        deadline = time.monotonic() + timeout
        while b"\r\n" not in self.buf:
            self._fill(deadline)
        size_line, _, rest = self.buf.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        while len(rest) < size + 2:
            self._fill(deadline)
            size_line, _, rest = self.buf.partition(b"\r\n")
        assert rest[size:size + 2] == b"\r\n", rest[size:size + 10]
        self.buf = rest[size + 2:]
        return rest[:size]

    def read_event(self, timeout=5.0) -> dict:
        """The next event a browser would dispatch, as a dict of fields;
        ``data`` joined with LF as a browser does.  Comments and blocks
        without data (such as a lone ``retry:`` hint) are skipped, as a
        browser skips them."""
        deadline = time.monotonic() + timeout
        while True:
            payload = self.read_chunk(max(0.01, deadline - time.monotonic()))
            if payload == b"":
                raise EOFError("stream ended")
            event = parse_event(payload)
            if "data" in event:
                return event

    def read_events(self, n, timeout=5.0) -> list:
        deadline = time.monotonic() + timeout
        return [self.read_event(max(0.01, deadline - time.monotonic())) for _ in range(n)]

    def expect_nothing(self, wait=0.3):
        """Assert no bytes arrive within ``wait`` seconds."""
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(65536)
        except (socket.timeout, TimeoutError):
            return
        raise AssertionError(f"unexpected bytes: {self.buf + data!r}")

    #: What counts as the end of the stream for read_until_closed.
    ENDS = (EOFError, ConnectionResetError)

    def read_until_closed(self, timeout=5.0) -> bytes:
        deadline = time.monotonic() + timeout
        try:
            while True:
                self._fill(deadline)
        except self.ENDS:
            return self.buf

    def close(self):
        self.sock.close()


def parse_event(payload: bytes) -> dict:
    """SSE fields of one event; repeated ``data`` lines joined with LF."""
    text = payload.decode("utf-8")
    fields: dict = {}
    data = []
    for line in text.split("\n"):
        if not line or line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        else:
            fields[name] = value
    if data:
        fields["data"] = "\n".join(data)
    return fields


def read_to_close(sock, timeout=5.0) -> bytes:
    """Everything the server sends until it closes (or resets), within
    ``timeout``."""
    sock.settimeout(timeout)
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        out += chunk
    return out


def raw_exchange(host, port, data: bytes, timeout=5.0) -> bytes:
    """Send ``data``, read until the server closes."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect((host, port))
        s.sendall(data)
        return read_to_close(s, timeout)


def control_exchange(cport, text, timeout=5.0) -> bytes:
    """One control connection: send, half-close, read the replies to the end."""
    with socket.create_connection(("127.0.0.1", cport), timeout=timeout) as s:
        s.sendall(text.encode() if isinstance(text, str) else text)
        s.shutdown(socket.SHUT_WR)
        return read_to_close(s, timeout)
