"""What every socket of the daemon shares, and the small descriptor kinds:
listeners, connections refused above the cap, metrics scrapers.

Owns: every ``accept``, ``recv`` and ``send`` of a socket (``Connection``
does them for every kind); what a socket error means (decided once, below);
the order of a graceful close.  Must not touch: protocol rules.  The kinds
that carry a protocol live in their own modules: browsers' streams in
``streams`` (their rules in ``session``), the control port's connections
and the FIFO in ``control_channels``.

Each kind has ``on_events(mask)`` and ``on_failure(exc)``; the reactor looks
the handler up by descriptor and calls it, nothing more.  A connection is
given its collaborators in a ``Wiring`` (the loop, the flush queue, the log,
the error report, the settings and the hub), never the whole daemon.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Callable, Optional

from . import http, metrics
from .outbox import Outbox
from .reactor import ERROR, READABLE, WRITABLE

#: Try again on the next event.
RETRY = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR})
#: The peer went away (or the network to it): close quietly.
DISCONNECTED = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.ESHUTDOWN,
                          errno.ECONNABORTED, errno.ETIMEDOUT, errno.EBADF, errno.EHOSTUNREACH,
                          errno.ENETUNREACH, errno.ENETDOWN, errno.EHOSTDOWN})
#: Out of descriptors: stop accepting for a while instead of spinning.
NO_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: ... of which these a reserve descriptor can lend one for (not memory).
OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE})
#: accept(2): a connection that failed before it was taken, or the network
#: errors Linux passes on there; the next one in the queue may be fine.
ACCEPT_AGAIN = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.ENETDOWN, errno.ENOPROTOOPT, errno.EHOSTDOWN,
                          errno.ENONET, errno.EHOSTUNREACH, errno.EOPNOTSUPP, errno.ENETUNREACH})

RECV_SIZE = 65536
ACCEPTS_PER_WAKEUP = 64
ACCEPT_PAUSE = 1.0   # seconds without accept() after EMFILE
LINGER = 2.0         # seconds to read and discard after answering and closing


class Wiring:
    """What connections reach, shared by every connection of a kind.
    ``report(text, exc)`` logs an internal error with its traceback."""

    def __init__(self, reactor, flusher, log, report, settings, hub, **more):
        self.reactor = reactor
        self.flusher = flusher
        self.log = log
        self.report = report
        self.settings = settings
        self.hub = hub
        for name, value in more.items():  # a kind's own collaborators
            setattr(self, name, value)


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


class Connection:
    """What every connected socket shares: the outbox, flushing, closing."""

    # Slots keep an idle stream small (issue 6: at most 1 KB each);
    # "__dict__" keeps attributes not listed here working, at a dict's cost.
    __slots__ = ("ctx", "sock", "fd", "peer", "outbox", "closed", "closing", "_eof", "_shut",
                 "_flush_pending", "_writing", "_read_paused", "__dict__")
    kind = "connection"

    def __init__(self, ctx, sock: socket.socket, peer: str, queue_limit: int):
        self.ctx = ctx
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.outbox = Outbox(queue_limit)
        self.closed = False
        self.closing = False       # answer sent or being sent; then close
        self._eof = False          # the peer will send nothing more
        self._shut = False         # our side is half-closed, lingering
        self._flush_pending = False
        self._writing = False
        self._read_paused = False  # pause_reading(): input waits in the kernel
        ctx.reactor.register(self.fd, self, READABLE)

    # -- reading ------------------------------------------------------------
    def on_events(self, mask: int) -> None:
        if mask & WRITABLE:
            self.flush()
        if self.closed or not mask & (READABLE | ERROR):
            return
        if self._eof:
            self.close("hung up", quiet=True)  # HUP/ERR while still sending
        else:
            self._read()

    def _read(self) -> None:
        try:
            data = self.sock.recv(RECV_SIZE)
        except OSError as exc:
            if exc.errno in RETRY:
                return
            if exc.errno in DISCONNECTED:
                self.close("connection reset by peer" if exc.errno == errno.ECONNRESET
                           else f"connection lost ({errno.errorcode.get(exc.errno, exc.errno)})", quiet=True)
                return
            raise
        if not data:
            self._eof = True
            self.on_eof()
        elif self.closing:
            return  # lingering: discard what the peer still sends
        else:
            self.on_data(data)

    def on_data(self, data: bytes) -> None:
        raise NotImplementedError

    def on_eof(self) -> None:
        if self.closing:
            self.finish_after_eof()  # still answering: finish that first
        else:
            self.close("closed by peer", quiet=True)

    def finish_after_eof(self) -> None:
        """The peer is done sending: deliver what is queued, then close.
        Reading stops, so a level-triggered end of input cannot spin."""
        if not self.queued_bytes():
            self.close("closed by peer", quiet=True)
            return
        self.closing = True
        self._writing = True
        self.ctx.reactor.modify(self.fd, WRITABLE)

    # -- writing ------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Queue ``data`` and send it at the end of this loop pass, together
        with whatever else is queued for this peer by then."""
        if self.closed:
            return
        self.outbox.append(data)
        self.schedule_flush()

    def queued_bytes(self) -> int:
        """Bytes waiting for the peer, in every form this connection holds."""
        return len(self.outbox)

    def schedule_flush(self) -> None:
        if not self._flush_pending and not self._writing:
            self._flush_pending = True
            self.ctx.flusher.add(self)

    def flush(self) -> None:
        self._flush_pending = False
        if self.closed:
            return
        try:
            done = self._send()
        except OSError as exc:
            if exc.errno in DISCONNECTED:
                self.close(f"connection lost while sending ({errno.errorcode.get(exc.errno, exc.errno)})",
                           quiet=True)
                return
            raise
        if not done:
            self._writing = True
            self.ctx.reactor.modify(self.fd, self._mask())
            return
        if self._writing:
            self._writing = False
            self.ctx.reactor.modify(self.fd, self._mask())
        if self.closing:
            if self._eof:
                self.close("done", quiet=True)
            else:
                self._finish_close()

    def _mask(self) -> int:
        mask = WRITABLE if self._writing else 0
        if not (self._eof or self._read_paused):
            mask |= READABLE
        return mask

    def pause_reading(self, paused: bool) -> None:
        """Leave the peer's input in the kernel while ``paused`` (the peer's
        earlier input still being worked off), so that it waits in its own
        socket buffer, not in our memory."""
        if not self.closed and paused != self._read_paused:
            self._read_paused = paused
            self.ctx.reactor.modify(self.fd, self._mask())

    def _send(self) -> bool:
        """Hand the kernel what it takes now; True when nothing is left."""
        return self.outbox.flush(self.sock)

    # -- closing ------------------------------------------------------------
    def close_after_flush(self) -> None:
        """Send what is queued, then close (the answer must reach the peer)."""
        if self.closed or self.closing:
            return
        self.closing = True
        self.schedule_flush()

    def _finish_close(self) -> None:
        """Everything was sent: half-close, then read and discard for a
        moment, so the peer reads our answer before any reset reaches it."""
        if self._shut:
            return
        self._shut = True
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close("answered", quiet=True)
            return
        self.ctx.reactor.call_later(LINGER, self.close, "answered", True)

    def close(self, reason: str, quiet: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        self.ctx.reactor.unregister(self.fd)
        try:
            self.sock.close()
        except OSError:
            pass
        self.outbox.clear()
        self.on_closed(reason, quiet)

    def on_closed(self, reason: str, quiet: bool) -> None:
        pass

    def on_failure(self, exc: Exception) -> None:
        self.ctx.report(f"{self.kind} {self.peer}: internal error {exc!r}; closing it", exc)
        self.close(f"internal error {exc!r}")


class Refused(Connection):
    """A connection above ``--max-clients``: it gets the 503 at once (before
    its request is even read), then the usual half-close and linger."""

    kind = "refused client"

    def __init__(self, ctx, sock: socket.socket, peer: str, answer: bytes):
        super().__init__(ctx, sock, peer, len(answer))
        self.write(answer)
        self.close_after_flush()

    def on_data(self, data: bytes) -> None:
        pass  # answered already; the request does not matter


class MetricsClient(Connection):
    """A scraper on ``--metrics-port``: one request (``/metrics``,
    ``/healthz``; GET or HEAD), one answer, close."""

    kind = "metrics client"

    def __init__(self, ctx, sock: socket.socket, peer: str, render):
        super().__init__(ctx, sock, peer, 1024 * 1024)  # the text is a few KB
        self.render = render
        self.reader = http.RequestReader(ctx.settings.max_head_bytes)
        self._timer = ctx.reactor.call_later(ctx.settings.handshake_timeout, self.close, "no request in time", True)

    def on_data(self, data: bytes) -> None:
        if self.closing:
            return
        item = self.reader.feed(data)
        if item is None:
            return
        answer, reason = metrics.answer(item, self.render, self.ctx.health, self.ctx.cors)
        if reason is not None:
            self.ctx.log.info(f"Metrics client {self.peer}: {reason} and closing")
        self.write(answer)
        self.close_after_flush()

    def on_closed(self, reason: str, quiet: bool) -> None:
        self.ctx.reactor.cancel(self._timer)
