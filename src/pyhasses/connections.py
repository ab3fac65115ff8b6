"""The descriptor kinds: listeners, SSE clients, control clients, the FIFO.

Owns: every ``accept``, ``recv``, ``send`` and ``os.read`` of the daemon;
what a socket error means (decided once, below); per-connection timers; the
order of a graceful close.  Must not touch: protocol rules.  Bytes go to
``http``, ``control`` and ``sse`` objects, and what they return comes back
here to be written.

Each kind has ``on_events(mask)`` and ``on_failure(exc)``; the reactor looks
the handler up by descriptor and calls it, nothing more.
"""

from __future__ import annotations

import errno
import os
import socket
import time

from . import http
from .control import Framer
from .outbox import Outbox
from .reactor import ERROR, READABLE, WRITABLE
from .sse import LAST_CHUNK

#: Try again on the next event.
RETRY = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR})
#: The peer went away: close quietly.
DISCONNECTED = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.ESHUTDOWN,
                          errno.ECONNABORTED, errno.ETIMEDOUT, errno.EBADF})
#: Out of descriptors: stop accepting for a while instead of spinning.
NO_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

RECV_SIZE = 65536
ACCEPTS_PER_WAKEUP = 64
ACCEPT_PAUSE = 1.0   # seconds without accept() after EMFILE
LINGER = 2.0         # seconds to read and discard after answering and closing


def describe_peer(addr) -> str:
    """``host:port``, with IPv4-mapped IPv6 shown as plain IPv4."""
    if isinstance(addr, tuple):
        host = addr[0]
        if host.startswith("::ffff:") and "." in host:
            host = host[7:]
        return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"
    return str(addr) or "local"


class Listener:
    """A listening socket; ``make(sock, peer)`` builds the connection."""

    def __init__(self, ctx, sock: socket.socket, make, name: str):
        self.ctx = ctx
        self.sock = sock
        self.make = make
        self.name = name
        self.fd = sock.fileno()
        self._paused = False

    def on_events(self, mask: int) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):  # bounded: a flood must not starve the rest
            try:
                conn, addr = self.sock.accept()
            except OSError as exc:
                if exc.errno in RETRY:
                    return
                if exc.errno in NO_DESCRIPTORS:
                    self._pause(exc)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                raise
            conn.setblocking(False)
            try:
                self.make(conn, describe_peer(addr))
            except Exception as exc:
                self.ctx.log.error(f"{self.name}: cannot set up connection from {describe_peer(addr)}: {exc!r}")
                conn.close()

    def _pause(self, exc: OSError) -> None:
        self.ctx.log.error(f"{self.name}: accept() failed ({exc.strerror}); pausing accepts for {ACCEPT_PAUSE} s")
        self.ctx.reactor.unregister(self.fd)
        self._paused = True
        self.ctx.reactor.call_later(ACCEPT_PAUSE, self._resume)

    def _resume(self) -> None:
        if self._paused and self.sock.fileno() >= 0:
            self._paused = False
            self.ctx.reactor.register(self.fd, self)

    def on_failure(self, exc: Exception) -> None:
        self.ctx.log.error(f"{self.name}: accept error {exc!r}")

    def close(self) -> None:
        self.ctx.reactor.unregister(self.fd)
        self.sock.close()


class Connection:
    """What every connected socket shares: the outbox, flushing, closing."""

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
                self.close("connection reset by peer", quiet=True)
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
        if not len(self.outbox):
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

    def schedule_flush(self) -> None:
        if not self._flush_pending and not self._writing:
            self._flush_pending = True
            self.ctx.reactor.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_pending = False
        if self.closed:
            return
        try:
            done = self.outbox.flush(self.sock)
        except OSError as exc:
            if exc.errno in DISCONNECTED:
                self.close("connection lost while sending", quiet=True)
                return
            raise
        if not done:
            self._writing = True
            self.ctx.reactor.modify(self.fd, WRITABLE if self._eof else READABLE | WRITABLE)
            return
        if self._writing:
            self._writing = False
            self.ctx.reactor.modify(self.fd, 0 if self._eof else READABLE)
        if self.closing:
            if self._eof:
                self.close("done", quiet=True)
            else:
                self._finish_close()

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
        self.ctx.log.error(f"{self.kind} {self.peer}: internal error {exc!r}; closing it")
        self.close(f"internal error {exc!r}")


class SseClient(Connection):
    """A browser's connection: a request head, then an event stream."""

    kind = "SSE client"
    # States shown in the client list, as hasses names them.
    NEW, HEADER, STREAM, END = "NEW", "HEA", "SSE", "END"

    def __init__(self, ctx, sock: socket.socket, peer: str):
        super().__init__(ctx, sock, peer, ctx.settings.max_queue_bytes)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.state_name = self.NEW
        self.reader = http.RequestReader(ctx.settings.max_head_bytes)
        # The hub's view (hub.Subscriber)
        self.tokens = ()
        self.everything = False
        self.uniq_id = ""
        self.established = False
        self.messages = 0
        # The client list's view
        self.agent = ""
        self.connected_at = time.time()
        self.handshaked_at = 0.0
        self.reinit_count = 0
        self._timer = ctx.reactor.call_later(ctx.settings.handshake_timeout, self._timeout, "handshake")
        ctx.hub.connected(self)
        ctx.log.info(f"Connect from {peer} as <{self.fd}> (clients: {len(ctx.hub.clients)})")

    def tls_info(self) -> str:
        return ""

    # -- input --------------------------------------------------------------
    def on_data(self, data: bytes) -> None:
        if self.established:
            self._established_input(data)
            return
        self.state_name = self.HEADER
        for item in self.reader.feed(data):
            if self.closing or self.closed:
                return
            if isinstance(item, http.BadHead):
                self._answer(item.status, "error", item.reason)
                return
            self._request(item)

    def _established_input(self, data: bytes) -> None:
        """hasses: a new GET on an established stream re-initialises it when
        allowed (some proxies reuse the connection); else it is ignored."""
        if self.ctx.runtime.reinit and data.startswith(b"GET "):
            self.ctx.log.info(f"Re-initialize client <{self.fd}> {self.peer}")
            self.ctx.hub.unsubscribe(self)
            self.ctx.hub.counters.reinits += 1
            self.reinit_count += 1
            self.reader = http.RequestReader(self.ctx.settings.max_head_bytes)
            self._restart_timer(self.ctx.settings.handshake_timeout, "handshake")
            self.on_data(data)
        elif self.ctx.log.debugging:
            self.ctx.log.debug(f"Connected client message <{self.fd}> {self.peer}: {data[:200]!r} (ignored)")

    def _request(self, head: http.RequestHead) -> None:
        settings = self.ctx.settings
        decision = http.decide(head, settings.match_url, settings.max_token_length)
        if isinstance(decision, http.FixedAnswer):
            self._answer(decision.status, decision.kind, decision.reason)
            return
        self.agent = decision.agent
        self.ctx.hub.subscribe(self, decision.tokens, decision.uniq_id)
        self.state_name = self.STREAM
        self.handshaked_at = time.time()
        self._restart_timer(settings.stream_lifetime, "lifetime")
        self.reader = None  # an idle stream keeps no parser
        self.write(http.handshake(self.ctx.cors))
        log = self.ctx.log
        if log.debugging:
            log.debug(f"SSE connection OK <{self.fd}> {self.peer} subscribes {','.join(decision.tokens)!r}"
                      f" id {decision.uniq_id!r}")

    def _answer(self, status: int, kind: str, reason: str) -> None:
        cors = self.ctx.cors
        if kind == "head":
            data = http.head_answer(cors)
        elif kind == "options":
            data = http.options_answer(cors)
        else:
            data = http.error(status, cors)
        self.ctx.log.info(f"Client <{self.fd}> {self.peer}: {reason}; answered {status} and closing")
        self.state_name = self.END
        self.ctx.hub.unsubscribe(self)
        self.write(data)
        self.close_after_flush()

    # -- output -------------------------------------------------------------
    def deliver(self, data: bytes) -> None:
        """The fan-out's per-recipient step: queue, and flush at the end of
        the pass.  A client past its queue limit is closed, not waited for."""
        outbox = self.outbox
        if outbox._size + len(data) > outbox.limit:
            self._overflow(len(data))
            return
        outbox._chunks.append(data)
        outbox._size += len(data)
        self.messages += 1
        if not self._flush_pending and not self._writing:
            self._flush_pending = True
            self.ctx.reactor.call_soon(self.flush)

    def _overflow(self, size: int) -> None:
        if self.closing or self.closed:
            return
        self.closing = True
        self.ctx.log.info(
            f"Client <{self.fd}> {self.peer} is too slow: {len(self.outbox)} bytes queued, "
            f"limit {self.outbox.limit}; closing")
        # Not closed here: the hub may be iterating over its recipients.
        self.ctx.reactor.call_soon(self.close, "write queue over its limit (slow reader)")

    # -- timers and closing -------------------------------------------------
    def _restart_timer(self, delay: float, why: str) -> None:
        self.ctx.reactor.cancel(self._timer)
        self._timer = self.ctx.reactor.call_later(delay, self._timeout, why)

    def _timeout(self, why: str) -> None:
        self._timer = None
        if why == "lifetime":
            self.ctx.log.info(f"Client <{self.fd}> {self.peer} reached its stream lifetime; closing")
            self.end_stream()
        else:
            self.close(f"no complete request within {self.ctx.settings.handshake_timeout:g} s")

    def end_stream(self) -> None:
        """End the chunked body properly; the browser reconnects by itself."""
        if self.established:
            self.ctx.hub.unsubscribe(self)
            self.write(LAST_CHUNK)
        self.close_after_flush()
        self._timer = self.ctx.reactor.call_later(LINGER + 1, self.close, "ended")

    def on_closed(self, reason: str, quiet: bool) -> None:
        self.ctx.reactor.cancel(self._timer)
        self.ctx.hub.disconnected(self)
        self.reader = None
        self.ctx.log.info(f"Closed connection <{self.fd}> {self.peer}: {reason} "
                          f"(remaining clients: {len(self.ctx.hub.clients)})")


class ControlInput:
    """Control bytes from one writer: framing, the idle flush of an
    unterminated tail, and running each part.  ``reply`` takes the answer
    bytes of a TCP writer; the FIFO has nobody to answer."""

    def __init__(self, ctx, channel: str, reply=None):
        self.ctx = ctx
        self.channel = channel
        self.reply = reply
        self.framer = Framer(ctx.settings.separator.encode(), ctx.settings.max_part_bytes)
        self._idle = None

    def feed(self, data: bytes) -> None:
        self._run(self.framer.feed(data))
        reactor = self.ctx.reactor
        reactor.cancel(self._idle)
        self._idle = None
        if self.framer.pending:
            self._idle = reactor.call_later(self.ctx.settings.idle_flush, self.finish)

    def finish(self) -> None:
        """End of input, or the writer went idle: the tail is a whole part."""
        self.cancel()
        self._run(self.framer.finish())

    def cancel(self) -> None:
        self.ctx.reactor.cancel(self._idle)
        self._idle = None

    def reset(self) -> None:
        self.cancel()
        self.framer = Framer(self.ctx.settings.separator.encode(), self.ctx.settings.max_part_bytes)

    def _run(self, items) -> None:
        handle = self.ctx.control.handle
        can_reply = self.reply is not None
        for item in items:
            answer = handle(item, self.channel, can_reply)
            if answer is not None and not self.reply(answer):
                return


class ControlClient(Connection):
    """A publisher on the TCP control port."""

    kind = "control client"

    def __init__(self, ctx, sock: socket.socket, peer: str):
        super().__init__(ctx, sock, peer, ctx.settings.max_queue_bytes)
        self.input = ControlInput(ctx, f"control {peer}", self._reply)
        ctx.control_clients.add(self)
        ctx.log.debug(f"Communication connect from {peer} as <{self.fd}>")

    def on_data(self, data: bytes) -> None:
        self.input.feed(data)

    def on_eof(self) -> None:
        """The writer half-closed or closed: its tail is complete; answer
        what it asked, then close."""
        self.input.finish()
        if not self.closed:
            self.finish_after_eof()

    def _reply(self, answer: bytes) -> bool:
        """Queue an answer; False once the connection is closed."""
        if self.closed:
            return False
        if not self.outbox.fits(len(answer)):
            self.close("does not read its replies")
            return False
        self.write(answer)
        return True

    def on_closed(self, reason: str, quiet: bool) -> None:
        self.input.cancel()
        self.ctx.control_clients.discard(self)
        self.ctx.log.debug(f"Closed communication connection {self.peer}: {reason}")


class FifoReader:
    """The control FIFO, opened read-write so that it never reports end of
    input when a writer closes (hasses does the same)."""

    kind = "FIFO"

    def __init__(self, ctx, fd: int, path: str):
        self.ctx = ctx
        self.fd = fd
        self.path = path
        self.input = ControlInput(ctx, "fifo")
        ctx.reactor.register(fd, self, READABLE)

    def on_events(self, mask: int) -> None:
        try:
            data = os.read(self.fd, RECV_SIZE)
        except OSError as exc:
            if exc.errno in RETRY:
                return
            raise
        if data:
            self.input.feed(data)

    def on_failure(self, exc: Exception) -> None:
        self.ctx.log.error(f"FIFO {self.path}: internal error {exc!r}; input discarded")
        self.input.reset()

    def close(self) -> None:
        self.ctx.reactor.unregister(self.fd)
        self.input.cancel()
        os.close(self.fd)
