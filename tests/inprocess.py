"""The daemon's parts in this process, without ports: a reactor, the hub,
the wiring, a log in memory, and streams over socket pairs whose recv and
send can be made to fail.  For tests of what the connection code does with
errors and timers, where a subprocess could not inject them."""

import io
import os
import socket

import pytest

from pyhasses import service
from pyhasses.flushqueue import FlushQueue
from pyhasses.logs import Log
from pyhasses.reactor import Reactor
from pyhasses.settings import Endpoint, Settings
from pyhasses.streams import SseClient
from support import wait_until

GET = b"GET /sse?subscribe=a HTTP/1.1\r\nConnection: keep-alive\r\n\r\n"


class FaultySocket(socket.socket):
    """A real socket whose next recv/send raises what a test asks for."""

    fail_recv = fail_send = None

    def _maybe_fail(self, which):
        fault = getattr(self, which)
        if fault is not None:
            raise fault if isinstance(fault, BaseException) else OSError(fault, os.strerror(fault))

    def recv(self, *args):
        self._maybe_fail("fail_recv")
        return super().recv(*args)

    def send(self, *args):
        self._maybe_fail("fail_send")
        return super().send(*args)

    def sendmsg(self, *args):
        self._maybe_fail("fail_send")
        return super().sendmsg(*args)


class World:
    """An in-process daemon without ports: reactor, hub, wiring, a log."""

    def __init__(self, **settings):
        self.out = io.StringIO()
        self.log = Log(1)
        self.log.to_stream(self.out)
        s = Settings(sse=Endpoint((), 8080), match_url="/sse", **settings)
        self.daemon = service.Daemon(s, self.log)
        self.daemon.reactor = self.reactor = Reactor(on_error=self.daemon.report)
        self.daemon.flusher = FlushQueue(self.reactor)
        self.daemon._wire()
        self.peers = []

    def stream(self):
        """An established SseClient on a FaultySocket, and its browser end."""
        a, b = socket.socketpair()
        sock = FaultySocket(a.family, a.type, a.proto, fileno=a.detach())
        sock.setblocking(False)
        b.settimeout(5)
        client = SseClient(self.daemon.stream_wiring, sock, f"peer{len(self.peers)}")
        self.peers.append(b)
        b.sendall(GET)
        self.until(lambda: client.established, "handshake")
        head = b""
        while b"\r\n\r\n" not in head:
            head += b.recv(4096)
        return client, b

    def until(self, predicate, what):
        wait_until(lambda: self.reactor.run_once() or predicate(), timeout=5, interval=0, what=what)

    def text(self):
        return self.out.getvalue()

    def close(self):
        for p in self.peers:
            p.close()
        for c in list(self.daemon.hub.clients):
            c.close("test over", quiet=True)
        self.reactor.close()
        self.log.close()


@pytest.fixture
def world():
    worlds = []

    def make(**settings):
        worlds.append(World(**settings))
        return worlds[-1]

    yield make
    for w in worlds:
        w.close()
