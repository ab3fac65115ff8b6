"""The listening sockets: taking connections in, and what to do when the
process runs out of descriptors.

Owns: every ``accept`` of the daemon, bounded per wake-up so that a flood
cannot starve the rest; the reserve descriptor that lets a client be
answered (503) rather than left hanging at EMFILE; the pause and re-arm of
a listener when nothing can be accepted.  Must not touch: what a connection
does once made (``make(sock, peer)`` builds it: a stream, a control client,
a metrics scraper).
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Callable, Optional

from .connections import RECV_SIZE, RETRY

#: Out of descriptors: stop accepting for a while instead of spinning.
NO_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: ... of which these a reserve descriptor can lend one for (not memory).
OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE})
#: accept(2): a connection that failed before it was taken, or the network
#: errors Linux passes on there; the next one in the queue may be fine.
ACCEPT_AGAIN = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.ENETDOWN, errno.ENOPROTOOPT, errno.EHOSTDOWN,
                          errno.ENONET, errno.EHOSTUNREACH, errno.EOPNOTSUPP, errno.ENETUNREACH})

ACCEPTS_PER_WAKEUP = 64
ACCEPT_PAUSE = 1.0   # seconds without accept() after EMFILE


def describe_peer(addr) -> str:
    """``host:port``, with IPv4-mapped IPv6 shown as plain IPv4."""
    if isinstance(addr, tuple):
        host = addr[0]
        if host.startswith("::ffff:") and "." in host:
            host = host[7:]
        return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"
    return str(addr) or "local"


class DescriptorReserve:
    """One descriptor held back (``/dev/null``), as nginx and libev do: when
    accept() fails for want of descriptors, the reserve is freed so that a
    waiting client can be accepted, told to come back and closed, and then
    the reserve is taken back.  Without it such clients wait in the backlog
    with no answer, and a level-triggered listener would wake the loop for
    nothing.  One reserve serves every listener (one thread)."""

    def __init__(self):
        self.fd: Optional[int] = None
        self.take_back()

    @property
    def held(self) -> bool:
        return self.fd is not None

    def release(self) -> bool:
        """Free the reserve; False when it was not held."""
        if self.fd is None:
            return False
        os.close(self.fd)
        self.fd = None
        return True

    def take_back(self) -> bool:
        """Hold the reserve again (if not held); False when no descriptor is free."""
        if self.fd is None:
            try:
                self.fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return False
        return True

    def close(self) -> None:
        self.release()


class Listener:
    """A listening socket; ``make(sock, peer)`` builds the connection.

    ``busy_answer()`` gives the bytes a client gets when it is accepted on
    the reserve descriptor (a 503 on a plain HTTP port), None to close it
    without a word (the control port; a TLS port, where an answer would
    cost a handshake first)."""

    def __init__(self, ctx, sock: socket.socket, make, name: str, priority_input: bool = False,
                 busy_answer: Optional[Callable[[], bytes]] = None):
        self.ctx = ctx
        self.sock = sock
        self.make = make
        self.name = name
        self.fd = sock.fileno()
        self.priority_input = priority_input  # a publisher's port: see Reactor.input_waiting
        self.busy_answer = busy_answer
        self._paused = False
        self._turned_away = 0  # clients accepted on the reserve in this burst

    def on_events(self, mask: int) -> None:
        # socket.accept() written out: it converts the family and type to
        # enums and asks the listener's timeout on every call (a storm).
        listener = self.sock
        accept, family, kind, proto = listener._accept, int(listener.family), int(listener.type), listener.proto
        for _ in range(ACCEPTS_PER_WAKEUP):  # bounded: a flood must not starve the rest
            try:
                fd, addr = accept()
            except OSError as exc:
                if exc.errno in RETRY:
                    return
                if exc.errno in OUT_OF_DESCRIPTORS:
                    outcome = self._turn_away(exc)
                    if outcome is TURNED_AWAY:
                        continue
                    if outcome is NOBODY_WAITING:
                        return
                if exc.errno in NO_DESCRIPTORS:
                    self._pause(exc)
                    return
                if exc.errno in ACCEPT_AGAIN:
                    continue
                raise
            if self._turned_away:
                self._burst_over()
            try:
                conn = socket.socket(family, kind, proto, fileno=fd)
            except OSError as exc:
                os.close(fd)
                self.ctx.log.error(f"{self.name}: accepted connection unusable: {exc!r}")
                continue
            conn.setblocking(False)
            try:
                self.make(conn, describe_peer(addr))
            except Exception as exc:
                self.ctx.report(f"{self.name}: cannot set up connection from {describe_peer(addr)}: {exc!r}", exc)
                conn.close()

    def _turn_away(self, exc: OSError):
        """Out of descriptors: accept one waiting client on the reserve,
        give it ``busy_answer()`` and close it, then take the reserve back.
        TURNED_AWAY, NOBODY_WAITING, or None when there is no reserve to
        lend (then the listener pauses)."""
        reserve = getattr(self.ctx, "reserve", None)
        if reserve is None or not reserve.release():
            return None
        try:
            try:
                fd, addr = self.sock._accept()
            except OSError as again:
                if again.errno in RETRY:
                    return NOBODY_WAITING
                if again.errno in ACCEPT_AGAIN:
                    return TURNED_AWAY  # that one left by itself: try the next
                return None
            self._send_busy_answer(fd)
        finally:
            reserve.take_back()  # fails only if another process took the descriptor: then pause
        if not self._turned_away:
            self.ctx.log.error(f"{self.name}: out of descriptors ({exc.strerror}); new clients are "
                               f"answered {'503' if self.busy_answer else 'with a close'} until some are free")
        self._turned_away += 1
        return TURNED_AWAY if reserve.held else None

    def _send_busy_answer(self, fd: int) -> None:
        """One non-blocking try: the answer is small and the socket's buffer
        empty.  What the client sent is read first, so that the close ends
        with a FIN after the answer rather than a reset that may discard it."""
        try:
            conn = socket.socket(self.sock.family, self.sock.type, self.sock.proto, fileno=fd)
        except OSError:
            os.close(fd)
            return
        try:
            if self.busy_answer is not None:
                try:
                    conn.recv(RECV_SIZE, socket.MSG_DONTWAIT)
                except OSError:
                    pass
                conn.send(self.busy_answer(), socket.MSG_DONTWAIT)
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # it is gone already: nothing to tell it
        finally:
            conn.close()

    def _burst_over(self) -> None:
        self.ctx.log.info(f"{self.name}: descriptors free again; {self._turned_away} client(s) were turned away")
        self._turned_away = 0

    def _pause(self, exc: OSError) -> None:
        self.ctx.log.error(f"{self.name}: accept() failed ({exc.strerror}); pausing accepts for {ACCEPT_PAUSE} s")
        self.ctx.reactor.unregister(self.fd)
        self._paused = True
        self.ctx.reactor.call_later(ACCEPT_PAUSE, self._resume)

    def _resume(self) -> None:
        reserve = getattr(self.ctx, "reserve", None)
        if reserve is not None:
            reserve.take_back()
        if self._paused and self.sock.fileno() >= 0:
            self._paused = False
            self.ctx.reactor.register(self.fd, self)

    def on_failure(self, exc: Exception) -> None:
        self.ctx.report(f"{self.name}: accept error {exc!r}", exc)

    def close(self) -> None:
        self.ctx.reactor.unregister(self.fd)
        self.sock.close()


#: What ``Listener._turn_away`` did.
TURNED_AWAY, NOBODY_WAITING = "turned away", "nobody waiting"
