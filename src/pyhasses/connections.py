"""What every connected socket of the daemon shares, and the small kinds:
connections refused above the cap, metrics scrapers.

Owns: every ``recv`` and ``send`` of a socket (``Connection`` does them for
every kind); what a socket error means (decided once, below);
the order of a graceful close.  Must not touch: protocol rules.  The kinds
that carry a protocol live in their own modules: browsers' streams in
``streams`` (their rules in ``session``), the control port's connections
and the FIFO in ``control_channels``; the listening sockets (``accept``) in
``listeners``.

Each kind has ``on_events(mask)`` and ``on_failure(exc)``; the reactor looks
the handler up by descriptor and calls it, nothing more.  A connection is
given its collaborators in a ``Wiring`` (the loop, the flush queue, the log,
the error report, the settings and the hub), never the whole daemon.
"""

from __future__ import annotations

import errno
import socket

from . import http, metrics
from .outbox import Outbox
from .reactor import ERROR, READABLE, WRITABLE

#: Try again on the next event.
RETRY = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR})
#: The peer went away (or the network to it): close quietly.
DISCONNECTED = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.ESHUTDOWN,
                          errno.ECONNABORTED, errno.ETIMEDOUT, errno.EBADF, errno.EHOSTUNREACH,
                          errno.ENETUNREACH, errno.ENETDOWN, errno.EHOSTDOWN})

RECV_SIZE = 65536
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
