"""The descriptor kinds: listeners, SSE clients, control clients, the FIFO,
connections refused above the cap, metrics scrapers.

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

from . import delivery, http, tls
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

    def __init__(self, ctx, sock: socket.socket, make, name: str, priority_input: bool = False):
        self.ctx = ctx
        self.sock = sock
        self.make = make
        self.name = name
        self.fd = sock.fileno()
        self.priority_input = priority_input  # a publisher's port: see Reactor.input_waiting
        self._paused = False

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
                if exc.errno in NO_DESCRIPTORS:
                    self._pause(exc)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                raise
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

    # Slots keep an idle stream small (issue 6: at most 1 KB each);
    # "__dict__" keeps attributes not listed here working, at a dict's cost.
    __slots__ = ("ctx", "sock", "fd", "peer", "outbox", "closed", "closing", "_eof", "_shut",
                 "_flush_pending", "_writing", "__dict__")
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
        self.ctx.log.error(f"{self.kind} {self.peer}: internal error {exc!r}; closing it")
        self.close(f"internal error {exc!r}")


class SseClient(Connection):
    """A browser's connection: a request head, then an event stream."""

    __slots__ = ("state_name", "reader", "tokens", "everything", "uniq_id", "established", "messages",
                 "agent", "connected_at", "handshaked_at", "reinit_count", "_timer", "heartbeat_mark",
                 "dropped")
    kind = "SSE client"
    # States shown in the client list, as hasses names them.
    NEW, HEADER, STREAM, END = "NEW", "HEA", "SSE", "END"
    # Drop policy state; class defaults keep an idle stream small.
    _reset_chunk = None
    _dropped_since_reset = 0

    def __init__(self, ctx, sock: socket.socket, peer: str):
        super().__init__(ctx, sock, peer, ctx.settings.max_queue_bytes)
        # TCP_NODELAY comes from the listening socket (service._listen).
        self.state_name = self.NEW
        self.reader = http.RequestReader(ctx.settings.max_head_bytes)
        # The hub's view (hub.Subscriber)
        self.tokens = ()
        self.everything = False
        self.uniq_id = ""
        self.established = False
        self.messages = 0
        self.heartbeat_mark = 0   # messages at the last heartbeat sweep
        self.dropped = 0          # events dropped from this client's queue (drop policy)
        # The client list's view
        self.agent = ""
        self.connected_at = time.time()
        self.handshaked_at = 0.0
        self.reinit_count = 0
        self._timer = None
        self._start_handshake_timer()
        ctx.hub.connected(self)
        if ctx.log.informing:
            ctx.log.info(f"Connect from {peer} as <{self.fd}> (clients: {len(ctx.hub.clients)})")

    def tls_info(self) -> str:
        return ""

    def _pinned_chunks(self) -> int:
        """Queued chunks (from the front) the drop policy must keep: the
        first may be partly sent, or be the stream's HTTP head."""
        return 1

    def last_words(self) -> None:
        """At shutdown: end the stream and make one try to send what is queued."""
        if self.established:
            self.outbox.append(LAST_CHUNK)
        try:
            self.outbox.flush(self.sock)
        except OSError:
            pass

    # -- input --------------------------------------------------------------
    def on_data(self, data: bytes) -> None:
        while data:
            if self.established and not self._reinitialise(data):
                return
            self.state_name = self.HEADER
            item = self.reader.feed(data)
            if item is None:
                return
            if isinstance(item, http.BadHead):
                self._answer(item.status, "error", item.reason)
                return
            # Bytes sent with the request are read as if sent after the
            # handshake: only a new GET under re-init means anything.
            data = self.reader.rest()
            self._request(item)
            if not self.established:
                return  # answered, and closing

    def _reinitialise(self, data: bytes) -> bool:
        """hasses: a new GET on an established stream re-initialises it when
        allowed (some proxies reuse the connection); else it is ignored.
        True when ``data`` is to be read as a new request."""
        if self.ctx.runtime.reinit and data.lstrip(b"\r\n").startswith(b"GET "):
            self.ctx.log.info(f"Re-initialize client <{self.fd}> {self.peer}")
            self.ctx.hub.unsubscribe(self)
            self.ctx.hub.counters.reinits += 1
            self.reinit_count += 1
            self.reader = http.RequestReader(self.ctx.settings.max_head_bytes)
            self._start_handshake_timer()
            return True
        if self.ctx.log.debugging:
            self.ctx.log.debug(f"Connected client message <{self.fd}> {self.peer}: {data[:200]!r} (ignored)")
        return False

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
        # The lifetime is watched by one sweep over all streams (service),
        # not by a timer each: a timer costs an idle stream ~200 bytes.
        self.ctx.reactor.cancel(self._timer)
        self._timer = None
        self.reader = None  # an idle stream keeps no parser
        # One object, so that the drop policy never separates them.
        self.write(http.handshake(self.ctx.cors) + delivery.retry_hint(settings.retry))
        if decision.last_event_id is not None:
            self.ctx.resume(self, decision.last_event_id)
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
        # Outbox.append and schedule_flush written out: this runs once per
        # recipient of every message, and the calls are a measurable part.
        outbox = self.outbox
        if outbox._size + len(data) > outbox.limit:
            if self.ctx.settings.slow_client_policy == "drop" and not self.closing:
                self._drop_oldest(data)
            else:
                self._overflow(len(data))
            return
        outbox._chunks.append(data)
        outbox._size += len(data)
        self.messages += 1
        if not self._flush_pending and not self._writing:
            self._flush_pending = True
            self.ctx.flusher.add(self)

    def _drop_oldest(self, data: bytes) -> None:
        """The drop policy: make room by dropping the oldest queued events
        (whole chunks, never the one being sent), and put one ``reset``
        event where they were, so the page knows it missed some."""
        outbox = self.outbox
        first = self._pinned_chunks()
        held = outbox.unsent(first)
        pending_reset = held if held is not None and held is self._reset_chunk else None
        keep = first + 1 if pending_reset is not None else first
        room = len(data) + delivery.RESET_ROOM
        dropped = len(outbox.drop_oldest(keep, room))
        if outbox._size + room > outbox.limit:
            dropped += 1  # this event alone does not fit
            data = None
        self.dropped += dropped
        self.ctx.hub.counters.dropped_events += dropped
        if pending_reset is None:
            self._dropped_since_reset = 0
            self.ctx.hub.counters.resets += 1
        self._dropped_since_reset += dropped
        self._reset_chunk = delivery.reset_event(self.ctx.history.oldest, "dropped", self._dropped_since_reset)
        outbox.put(first, self._reset_chunk, replace=pending_reset is not None)
        if data is not None:
            outbox.append(data)
            self.messages += 1
        self.schedule_flush()

    def _overflow(self, size: int) -> None:
        if self.closing or self.closed:
            return
        self.closing = True
        self.ctx.hub.counters.slow_closed += 1
        self.ctx.log.info(
            f"Client <{self.fd}> {self.peer} is too slow: {self.queued_bytes()} bytes queued, "
            f"limit {self.outbox.limit}; closing")
        # Not closed here: the hub may be iterating over its recipients.
        self.ctx.reactor.call_soon(self.close, "write queue over its limit (slow reader)")

    # -- timers and closing -------------------------------------------------
    def _start_handshake_timer(self) -> None:
        """Only the handshake has a timer of its own (see ``_request``)."""
        self.ctx.reactor.cancel(self._timer)
        self._timer = self.ctx.reactor.call_later(self.ctx.settings.handshake_timeout, self._handshake_over)

    def lifetime_over(self) -> None:
        """Called by the daemon's lifetime sweep."""
        self.ctx.log.info(f"Client <{self.fd}> {self.peer} reached its stream lifetime; closing")
        self.end_stream()

    def _handshake_over(self) -> None:
        self._timer = None
        self.close(f"no complete request within {self.ctx.settings.handshake_timeout:g} s")

    def end_stream(self) -> None:
        """End the chunked body properly; the browser reconnects by itself."""
        self.ctx.reactor.cancel(self._timer)
        if self.established:
            self.ctx.hub.unsubscribe(self)
            self.write(LAST_CHUNK)
        self.close_after_flush()
        self._timer = self.ctx.reactor.call_later(LINGER + 1, self.close, "ended")

    def on_closed(self, reason: str, quiet: bool) -> None:
        self.ctx.reactor.cancel(self._timer)
        self.ctx.hub.disconnected(self)
        self.reader = None
        if self.ctx.log.informing:
            self.ctx.log.info(f"Closed connection <{self.fd}> {self.peer}: {reason} "
                              f"(remaining clients: {len(self.ctx.hub.clients)})")


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
    """A scraper on ``--metrics-port``: one request, ``GET /metrics``, one
    answer, close."""

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
        if isinstance(item, http.BadHead):
            status, reason = item.status, item.reason
        elif item.method != b"GET":
            status, reason = 501, f"method {item.method[:40]!r} not implemented"
        elif http.origin_form(item.target).partition(b"?")[0] != b"/metrics":
            status, reason = 404, f"unknown URL {item.target[:200]!r}"
        else:
            status, reason = 200, None
        if reason is None:
            answer = http.metrics_answer(self.render().encode())
        else:
            self.ctx.log.info(f"Metrics client {self.peer}: {reason}; answered {status} and closing")
            answer = http.error(status, self.ctx.cors)
        self.write(answer)
        self.close_after_flush()

    def on_closed(self, reason: str, quiet: bool) -> None:
        self.ctx.reactor.cancel(self._timer)


class ControlInput:
    """Control bytes from one writer: framing, the idle flush of an
    unterminated tail, and running each part.  ``reply`` takes the answer
    bytes of a TCP writer; the FIFO has nobody to answer."""

    def __init__(self, ctx, channel: str, reply=None, replied=None):
        self.ctx = ctx
        self.channel = channel
        self.reply = reply
        self.replied = replied  # called after each run of parts, their events queued
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

    # Answers that come after their part was run (a cluster's
    # acknowledgement, once Redis gave the message back): ``expect_answer`` when
    # one is promised, ``late_answer`` when it comes; the writer's end of input
    # waits for them (``on_settled``).
    awaiting = 0
    on_settled = None

    def expect_answer(self) -> None:
        self.awaiting += 1

    def late_answer(self, answer: bytes) -> None:
        self.awaiting -= 1
        if self.reply is not None and self.reply(answer) and self.replied is not None:
            self.replied()
        if not self.awaiting and self.on_settled is not None:
            settled, self.on_settled = self.on_settled, None
            settled()

    def _run(self, items) -> None:
        # The events of one read leave joined (Hub.hold), except under the
        # drop policy, which drops whole queued chunks and counts events.
        if self.ctx.settings.slow_client_policy == "drop":
            self._run_items(items)
        else:
            hub = self.ctx.hub
            hub.hold()
            try:
                self._run_items(items)
            finally:
                hub.release()
        if self.replied is not None:
            self.replied()

    def _run_items(self, items) -> None:
        handle = self.ctx.control.handle
        can_reply = self.reply is not None
        for item in items:
            try:
                answer = handle(item, self.channel, can_reply, self)
            except Exception as exc:
                # A bug met by one part must not cost the parts after it
                # (on the FIFO: other publishers' messages).
                self.ctx.log.error(f"{self.channel}: internal error {exc!r}; this part dropped")
                continue
            if answer is not None and not self.reply(answer):
                return


class ControlClient(Connection):
    """A publisher on the TCP control port."""

    kind = "control client"
    priority_input = True  # read between the slices of a long fan-out

    def __init__(self, ctx, sock: socket.socket, peer: str):
        super().__init__(ctx, sock, peer, ctx.settings.max_queue_bytes)
        self.input = ControlInput(ctx, f"control {peer}", self._reply, self._replies_queued)
        ctx.control_clients.add(self)
        ctx.log.debug(f"Communication connect from {peer} as <{self.fd}>")

    def on_data(self, data: bytes) -> None:
        self.input.feed(data)

    def _replies_queued(self) -> None:
        if len(self.outbox) and not self.closed:
            self.ctx.flusher.after_slice(self._send_replies)

    def _send_replies(self) -> None:
        """Replies leave after the first slice of the fan-out of the
        messages they answer (FlushQueue): "delivered: N" says queued for N,
        and sent to all of them unless there are more than a slice."""
        if len(self.outbox) and not self._writing and not self.closed:
            self.flush()

    def on_eof(self) -> None:
        """The writer half-closed or closed: its tail is complete; answer
        what it asked, then close."""
        self.input.finish()
        if self.closed:
            return
        if self.input.awaiting:
            # Acknowledgements still to come: stop reading until they are queued.
            self.ctx.reactor.modify(self.fd, 0)
            self.input.on_settled = self._settled_after_eof
            return
        self.finish_after_eof()

    def _settled_after_eof(self) -> None:
        if not self.closed:
            self.finish_after_eof()

    def _reply(self, answer: bytes) -> bool:
        """Queue an answer; False once the connection is closed."""
        if self.closed:
            return False
        # One reply may be larger than the limit (tcpclientlist of many
        # clients); replies piling up unread may not.
        if len(self.outbox) and not self.outbox.fits(len(answer)):
            self.close("does not read its replies")
            return False
        self.outbox.append(answer)  # sent by _send_replies
        return True

    def on_closed(self, reason: str, quiet: bool) -> None:
        self.input.cancel()
        self.ctx.control_clients.discard(self)
        if quiet:  # the writer's own close, the usual end
            self.ctx.log.debug(f"Closed communication connection {self.peer}: {reason}")
        else:
            self.ctx.log.info(f"Closed communication connection {self.peer}: {reason}")


class FifoReader:
    """The control FIFO, opened read-write so that it never reports end of
    input when a writer closes (hasses does the same)."""

    kind = "FIFO"
    priority_input = True

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


class TlsSseClient(SseClient):
    """An SSE client on the HTTPS port: the same HTTP and SSE code as a plain
    one, with a ``tls.TlsPump`` between it and the socket.

    ``outbox`` holds plaintext, as a plain client's does: ``deliver`` and
    ``write`` append the very bytes object of a fan-out, and the queue
    limit and the drop policy count and drop the same events as for a
    plain client.  ``wire`` holds ciphertext on its way out.  Plaintext is
    sealed a slice at a time (``SEAL_BYTES``), and only once the ciphertext
    before it has left: sealed bytes can no longer be dropped, so a slow
    reader's queue stays plaintext and the drop policy keeps its newest
    events, not whatever was sealed last.
    """

    kind = "TLS client"
    #: Plaintext sealed at once: one TLS record's worth (its maximum).
    SEAL_BYTES = 16384

    def __init__(self, ctx, sock: socket.socket, peer: str):
        self.pump = tls.TlsPump(ctx.tls.context)
        self.wire = Outbox(ctx.settings.max_queue_bytes)
        super().__init__(ctx, sock, peer)

    def tls_info(self) -> str:
        pump = self.pump
        if pump.state == tls.HANDSHAKE:
            return "TLS: handshake in progress"
        return f"TLS: {pump.version() or '-'} cipher {pump.cipher() or '-'} ({pump.state})"

    def queued_bytes(self) -> int:
        return len(self.outbox) + len(self.wire)

    # -- ciphertext in ------------------------------------------------------
    def on_data(self, data: bytes) -> None:
        for event in self.pump.receive(data):
            if self.closed:
                return
            if isinstance(event, tls.Plaintext):
                if not self.closing:
                    super().on_data(event.data)
            elif isinstance(event, tls.TlsEstablished):
                if self.ctx.log.debugging:
                    self.ctx.log.debug(f"TLS established <{self.fd}> {self.peer}: {event.version} {event.cipher}"
                                       f" ALPN {event.alpn or '-'}")
            elif isinstance(event, tls.PeerClosed):
                self.close_after_flush()  # our close_notify is queued in answer
            elif isinstance(event, tls.TlsFailed):
                what = "TLS handshake failed" if event.during_handshake else "TLS error"
                self.close(f"{what}: {event.reason}")
                return
        if self.pump.has_outgoing and not self.closed:
            self.schedule_flush()

    def on_eof(self) -> None:
        if self.pump.end_of_input():  # the pump says whether this end is a failure
            self.close("closed by peer during the TLS handshake")
        else:
            super().on_eof()

    # -- ciphertext out -----------------------------------------------------
    def _request(self, head) -> None:
        super()._request(head)
        if self.established:
            self._seal()  # the stream's HTTP head leaves the droppable queue at once

    def _pinned_chunks(self) -> int:
        return 0  # plaintext is never partly sent, and the head is sealed already

    def _send(self) -> bool:
        wire = self.wire
        while True:
            if not len(wire):
                self._seal(self.SEAL_BYTES)
                if not len(wire):
                    return True
            if not wire.flush(self.sock):
                return False

    def _seal(self, nbytes=None, notify: bool = False) -> None:
        """Encrypt up to about ``nbytes`` of queued plaintext (whole chunks,
        all of it for None) in one TLS write, add close_notify once nothing
        is left and the stream is closing (or ``notify``), and queue the
        ciphertext with what the pump has to say (handshake, alerts)."""
        plain = self.outbox.take_head(nbytes)
        if plain and not self.pump.send(plain[0] if len(plain) == 1 else b"".join(plain)):
            # The session carries no more data (our close_notify went out,
            # or OpenSSL failed): nothing queued can be sent any more.
            self.outbox.clear()
            if self.pump.state == tls.CLOSED and not self.closed:
                self.ctx.reactor.call_soon(self.close, "TLS session failed while sending")
        if (self.closing or notify) and not len(self.outbox):
            self.pump.close()
        self.wire.append(self.pump.outgoing())

    def last_words(self) -> None:
        """At shutdown: end the stream, seal it with close_notify, one try to send."""
        if self.established:
            self.outbox.append(LAST_CHUNK)
        self._send_once()

    def _send_once(self) -> None:
        """Seal what is queued, then close_notify, and make one try to send."""
        self._seal(notify=True)
        try:
            self.wire.flush(self.sock)
        except OSError:
            pass

    # -- closing ------------------------------------------------------------
    def _handshake_over(self) -> None:
        if self.pump.state == tls.HANDSHAKE:
            self._timer = None
            self.close(f"TLS handshake not completed within {self.ctx.settings.handshake_timeout:g} s")
        else:
            super()._handshake_over()

    def close(self, reason: str, quiet: bool = False) -> None:
        """Every close says close_notify (or the handshake's alert) first,
        on a best-effort send that never waits.  Not when the peer's window
        is full (a slow reader): nothing more would leave, so nothing more
        is encrypted."""
        if not self.closed and not self._writing:
            try:
                self._send_once()
            except Exception as exc:  # a courtesy must never keep a socket open
                self.ctx.log.error(f"{self.kind} {self.peer}: no close_notify sent: {exc!r}")
        super().close(reason, quiet)
