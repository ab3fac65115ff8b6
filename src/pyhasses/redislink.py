"""One non-blocking connection to Redis in the reactor.

Owns: the socket (TCP or Unix), connecting without blocking, the login
(``AUTH``, ``SELECT``) before anything else, the write buffer, and handing
the bytes read to a ``resp.Conversation``.  Must not touch: what the
commands mean (``cluster`` decides), tokens, clients.  When the connection
fails or closes, ``on_down(reason)`` is called once and every command still
waiting gets ``LinkDown`` as its reply; reconnecting is the owner's choice.
"""

from __future__ import annotations

import errno
import socket
import time
from typing import Callable, Optional

from . import resp
from .reactor import READABLE, WRITABLE

RECV_SIZE = 256 * 1024
RETRY = {errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR}


class LinkDown(Exception):
    """The reply a command gets when its connection went away first."""


class LoginRefused(Exception):
    """Redis refused AUTH or SELECT: retrying will not help."""


class RedisConnection:
    """``on_ready()`` is called once logged in; ``send(callback, *args)``
    queues a command (pipelined: nothing waits for the previous reply)."""

    def __init__(self, reactor, address: resp.RedisAddress, name: str,
                 on_ready: Callable[[], None], on_down: Callable[[str, bool], None]):
        self.reactor = reactor
        self.address = address
        self.name = name
        self.on_ready = on_ready
        self.on_down = on_down  # (reason, login_refused)
        self.talk = resp.Conversation()
        self.sock: Optional[socket.socket] = None
        self.fd = -1
        self.connected = False
        self.ready = False
        self.closed = False
        self.heard_at = 0.0  # monotonic time Redis last sent bytes (or the connect began)
        self._out = bytearray()

    # -- opening -------------------------------------------------------------
    def open(self) -> None:
        a = self.address
        if a.path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target = a.path
        else:
            info = socket.getaddrinfo(a.host, a.port, type=socket.SOCK_STREAM)[0]
            sock = socket.socket(info[0], socket.SOCK_STREAM)
            target = info[4]
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        self.sock, self.fd = sock, sock.fileno()
        self.heard_at = time.monotonic()
        code = sock.connect_ex(target)
        if code not in (0, errno.EINPROGRESS, errno.EAGAIN):
            sock.close()
            self.sock, self.fd = None, -1
            raise OSError(code, errno.errorcode.get(code, str(code)))
        self.reactor.register(self.fd, self, WRITABLE | READABLE)
        for command in self.address.login_commands():
            self._out += self.talk.ask(self._logged_in_step, *command)
        self._out += self.talk.ask(self._login_done, "PING")

    def _logged_in_step(self, reply) -> None:
        if isinstance(reply, resp.ReplyError):
            raise LoginRefused(f"Redis refused the login: {reply}")

    def _login_done(self, reply) -> None:
        if isinstance(reply, resp.ReplyError):
            if is_busy(reply):
                self.close(f"Redis is not ready: {reply}")
                return
            raise LoginRefused(f"Redis refused the login: {reply}")
        self.ready = True
        self.on_ready()

    # -- commands ------------------------------------------------------------
    def send(self, callback: Optional[Callable], *args) -> None:
        """Queued now, written at the end of the loop pass: the commands of
        one pass (the publishes of one control read) leave in one write, and
        none waits for a later pass."""
        was_empty = not self._out
        self._out += self.talk.ask(callback, *args)
        if was_empty and self.connected:
            self.reactor.call_soon(self._flush_open)

    def _flush_open(self) -> None:
        if not self.closed:
            self._flush()

    def silent_for(self, now: float) -> float:
        """Seconds Redis has owed an answer (the connect and login included)
        without sending a byte; 0 when nothing is owed, or when bytes are
        waiting unread (a loop pass that took long is not Redis' silence)."""
        if self.closed or not self.talk.outstanding:
            return 0.0
        if self.connected:
            try:
                self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                return 0.0  # bytes (or the close) are there for the next pass
            except OSError:
                pass  # nothing waiting (EAGAIN), or an error the next read reports
        return now - self.heard_at

    @property
    def queued_bytes(self) -> int:
        return len(self._out)

    # -- the reactor's side ----------------------------------------------------
    def on_events(self, mask: int) -> None:
        if not self.connected:
            code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self.close(f"cannot connect: {errno.errorcode.get(code, code)} ({_strerror(code)})")
                return
            self.connected = True
        if mask & WRITABLE:
            self._flush()
        if mask & READABLE and not self.closed:
            self._read()

    def _read(self) -> None:
        try:
            data = self.sock.recv(RECV_SIZE)
        except OSError as exc:
            if exc.errno in RETRY:
                return
            self.close(f"read failed: {exc.strerror}")
            return
        if not data:
            self.close("Redis closed the connection")
            return
        self.heard_at = time.monotonic()
        try:
            answers = self.talk.feed(data)
        except resp.ProtocolFault as exc:
            self.close(str(exc))
            return
        for callback, reply in answers:
            if callback is not None:
                try:
                    callback(reply)
                except LoginRefused as exc:
                    self.close(str(exc), login_refused=True)
                    return
            if self.closed:
                return

    def _flush(self) -> None:
        out = self._out
        while out:
            try:
                sent = self.sock.send(out)
            except OSError as exc:
                if exc.errno in RETRY:
                    break
                self.close(f"write failed: {exc.strerror}")
                return
            del out[:sent]
        self.reactor.modify(self.fd, READABLE | WRITABLE if out else READABLE)

    def on_failure(self, exc: Exception) -> None:
        self.close(f"internal error {exc!r}")

    def close(self, reason: str = "closed", login_refused: bool = False, notify: bool = True) -> None:
        if self.closed:
            return
        self.closed = True
        if self.sock is not None:
            self.reactor.unregister(self.fd)
            self.sock.close()
        waiting = self.talk.abandon()
        for callback in waiting:
            if callback is not None:
                try:
                    callback(LinkDown(reason))
                except Exception:
                    pass  # each waiting command is told; one's fault is not the others'
        if notify:
            self.on_down(reason, login_refused)


def is_busy(reply) -> bool:
    """An error that passes by itself (a restarted Redis loading its data)."""
    return str(reply).startswith(("LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN"))


def _strerror(code: int) -> str:
    import os

    return os.strerror(code)


def login_check(address: resp.RedisAddress, timeout: float = 3.0) -> Optional[str]:
    """At start, before the reactor exists: can we log in?  None when yes or
    when Redis is unreachable (a node may start before Redis and wait); the
    reason when Redis refuses the login, which no retry would cure."""
    try:
        if address.path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(address.path)
        else:
            sock = socket.create_connection((address.host, address.port), timeout=timeout)
    except OSError:
        return None
    talk = resp.Conversation()
    replies = []
    try:
        with sock:
            payload = b"".join(talk.ask(replies.append, *c) for c in address.login_commands())
            payload += talk.ask(replies.append, "PING")
            sock.sendall(payload)
            while talk.outstanding:
                data = sock.recv(RECV_SIZE)
                if not data:
                    return None
                for callback, reply in talk.feed(data):
                    callback(reply)
    except (OSError, resp.ProtocolFault):
        return None
    for reply in replies:
        if isinstance(reply, resp.ReplyError) and not is_busy(reply):
            return f"Redis at {address.describe()} refused the login: {reply}"
    return None
