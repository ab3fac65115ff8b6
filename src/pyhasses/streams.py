"""A browser's connection on the SSE port, plain or TLS: the descriptor
side of a stream.

Owns: carrying out what a stream's ``session.StreamSession`` decides
(subscribing through the hub, writing, closing, the handshake timer), the
fan-out's per-recipient step (``deliver``), and the TLS pump's plumbing
(ciphertext in, plaintext to the session, plaintext sealed out).  Must not
touch: protocol rules (they are the session's), the socket calls themselves
(``connections.Connection`` makes them).
"""

from __future__ import annotations

import collections
import socket
import time

from . import http, session, tls
from .connections import LINGER, Connection
from .outbox import Outbox
from .sse import LAST_CHUNK


class PublishReply:
    """One HTTP publish's place among its connection's answers: the
    ``later`` of ControlHandler.publish, filled at once on one node, or
    when a cluster has read the message back."""

    __slots__ = ("client", "keep_alive", "answer")

    def __init__(self, client, keep_alive: bool):
        self.client = client
        self.keep_alive = keep_alive
        self.answer = None

    def expect_answer(self) -> None:
        self.client._publish_replies.append(self)

    def late_answer(self, answer: bytes) -> None:
        self.answer = answer
        if not self.client.closed:
            self.client._send_publish_replies()


class SseClient(Connection):
    """A browser's connection: bytes to its ``StreamSession``, the session's
    actions carried out, and the hub's deliveries queued.

    ``ctx`` is a ``Wiring`` with ``rules`` (session.StreamRules),
    ``resume(client, last_id)``, ``publish(message, channel) -> ack bytes``
    (an HTTP publish, run as the control channel runs a message) and
    ``expiry`` (the daemon's ``TokenExpiry``: streams to end at their
    token's exp) besides the usual."""

    __slots__ = ("session", "tokens", "everything", "uniq_id", "established", "messages",
                 "agent", "connected_at", "reinit_count", "_timer", "heartbeat_mark", "replay")
    kind = "SSE client"

    def __init__(self, ctx, sock: socket.socket, peer: str):
        super().__init__(ctx, sock, peer, ctx.settings.max_queue_bytes)
        # TCP_NODELAY comes from the listening socket (service._listen).
        self.session = session.StreamSession(ctx.rules)
        # The hub's view (hub.Subscriber)
        self.tokens = ()
        self.everything = False
        self.uniq_id = ""
        self.established = False
        self.messages = 0
        self.heartbeat_mark = 0   # messages at the last heartbeat sweep
        self.replay = None        # delivery.Replay while it catches up after a resume
        # The client list's view
        self.agent = ""
        self.connected_at = time.time()
        self.reinit_count = 0
        self._timer = ctx.reactor.call_later(self.session.handshake_timeout, self._handshake_over)
        ctx.hub.connected(self)
        if ctx.log.informing:
            ctx.log.info(f"Connect from {peer} as <{self.fd}> (clients: {len(ctx.hub.clients)})")

    @property
    def state_name(self) -> str:
        return self.session.state

    @property
    def dropped(self) -> int:
        return self.session.dropped

    @property
    def handshaked_at(self) -> float:
        """Wall-clock time of the handshake, 0 before it (the client list's)."""
        began = self.session.began
        return 0.0 if began is None else time.time() - (time.monotonic() - began)

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

    # -- the session's actions ----------------------------------------------
    def on_data(self, data: bytes) -> None:
        self.carry_out(self.session.receive(data))

    def carry_out(self, actions: list) -> None:
        for action in actions:
            if self.closed:
                return
            getattr(self, action.carried_out_by)(action)

    def _do_Reinit(self, action) -> None:
        self.ctx.log.info(f"Re-initialize client <{self.fd}> {self.peer}")
        self.ctx.expiry.discard(self)
        if self.replay is not None:
            self.replay.stop()
        self.ctx.hub.unsubscribe(self)
        self.ctx.hub.counters.reinits += 1
        self.reinit_count += 1
        self._start_handshake_timer()

    def _do_Subscribe(self, action: session.Subscribe) -> None:
        request = action.request
        self.agent = request.agent
        self.ctx.hub.subscribe(self, request.tokens, request.uniq_id)
        # The lifetime is watched by one sweep over all streams (service),
        # not by a timer each: a timer costs an idle stream ~200 bytes.
        self.ctx.reactor.cancel(self._timer)
        self._timer = None
        if self.session.token_ends is not None:
            self.ctx.expiry.add(self, self.session.token_ends)
        self.write(action.greeting)
        if request.last_event_id is not None:
            self.ctx.resume(self, request.last_event_id)
        log = self.ctx.log
        if log.debugging:
            log.debug(f"SSE connection OK <{self.fd}> {self.peer} subscribes {','.join(request.tokens)!r}"
                      f" id {request.uniq_id!r}")

    def _do_Answer(self, action: session.Answer) -> None:
        self.ctx.log.info(f"Client <{self.fd}> {self.peer}: {action.reason}; answered {action.status} and closing")
        self.ctx.hub.unsubscribe(self)
        self.write(action.data)
        self.close_after_flush()

    def _do_Write(self, action: session.Write) -> None:
        self.ctx.hub.unsubscribe(self)
        self.write(action.data)
        self.close_after_flush()

    def _do_Interim(self, action: session.Interim) -> None:
        self.write(action.data)

    # HTTP publishes awaiting their answer (PublishReply), oldest first: on
    # a cluster an acknowledgement comes once the message was read back from
    # Redis, and answers leave in request order.  Made on first use: an idle
    # stream carries none.
    _publish_replies = None

    def _do_Publish(self, action: session.Publish) -> None:
        if self._publish_replies is None:
            self._publish_replies = collections.deque()
        reply = PublishReply(self, action.keep_alive)
        ack = self.ctx.publish(action.message, f"HTTP publish {self.peer}", reply)
        if ack is not None:  # answered now (one node, or refused at once)
            reply.answer = ack
            self._publish_replies.append(reply)
        self._send_publish_replies()
        if action.keep_alive:
            self._start_handshake_timer()  # the next request has the same time

    def _send_publish_replies(self) -> None:
        replies = self._publish_replies
        while replies and replies[0].answer is not None:
            reply = replies.popleft()
            self.write(self.session.publish_reply(reply.answer))
            if not reply.keep_alive:
                self.close_after_flush()

    def _do_Close(self, action: session.Close) -> None:
        self.close(action.reason)

    def _do_Ignored(self, action: session.Ignored) -> None:
        if self.ctx.log.debugging:
            self.ctx.log.debug(f"Connected client message <{self.fd}> {self.peer}: {http.without_credentials(action.data[:200])!r}"
                               " (ignored)")

    # -- output -------------------------------------------------------------
    def deliver(self, data: bytes) -> None:
        """The fan-out's per-recipient step: queue, and flush at the end of
        the pass.  A full queue goes to the slow-client policy."""
        if self.replay is not None:  # catching up: live events wait behind the backlog
            self.replay.hold(data)
            return
        if not self.outbox.offer(data):
            self._full(data)
            return
        self.messages += 1
        if not self._flush_pending and not self._writing:
            self._flush_pending = True
            self.ctx.flusher.add(self)

    def _full(self, data: bytes) -> None:
        """Drop policy: the session makes room; disconnect policy: close,
        but not here (the hub may be iterating over its recipients)."""
        if self.ctx.settings.slow_client_policy == "drop" and not self.closing:
            if self.session.make_room(self.outbox, data, self._pinned_chunks()):
                self.messages += 1
            self.schedule_flush()
            return
        if self.closing or self.closed:
            return
        self.closing = True
        self.ctx.hub.counters.slow_closed += 1
        self.ctx.log.info(
            f"Client <{self.fd}> {self.peer} is too slow: {self.queued_bytes()} bytes queued, "
            f"limit {self.outbox.limit}; closing")
        self.ctx.reactor.call_soon(self.close, "write queue over its limit (slow reader)")

    # -- timers and closing -------------------------------------------------
    def _start_handshake_timer(self) -> None:
        """Only the handshake has a timer of its own (see ``_do_Subscribe``)."""
        self.ctx.reactor.cancel(self._timer)
        self._timer = self.ctx.reactor.call_later(self.session.handshake_timeout, self._handshake_over)

    def _handshake_over(self) -> None:
        self._timer = None
        self.carry_out(self.session.handshake_expired())

    def lifetime_over(self) -> None:
        """Called by the daemon's lifetime sweep and its token expiry timer."""
        if self.session.token_expired(time.monotonic()):
            self.ctx.log.info(f"Client <{self.fd}> {self.peer}: its token expired; ending the stream")
        else:
            self.ctx.log.info(f"Client <{self.fd}> {self.peer} reached its stream lifetime; closing")
        self.end_stream()

    def end_stream(self) -> None:
        """End the chunked body properly; the browser reconnects by itself."""
        self.ctx.reactor.cancel(self._timer)
        self.carry_out(self.session.end())
        self._timer = self.ctx.reactor.call_later(LINGER + 1, self.close, "ended")

    def on_eof(self) -> None:
        """A publisher that half-closes after its request still gets the
        answer; a stream's peer that goes is gone."""
        if not self.established and self.queued_bytes():
            self.finish_after_eof()
        else:
            super().on_eof()

    def on_closed(self, reason: str, quiet: bool) -> None:
        self.ctx.reactor.cancel(self._timer)
        self.ctx.expiry.discard(self)
        self.ctx.hub.disconnected(self)
        if self.ctx.log.informing:
            self.ctx.log.info(f"Closed connection <{self.fd}> {self.peer}: {reason} "
                              f"(remaining clients: {len(self.ctx.hub.clients)})")


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
    #: Plaintext sealed for the one try to send at a close (``_send_once``).
    LAST_SEAL_BYTES = 256 * 1024

    def __init__(self, ctx, sock: socket.socket, peer: str, context):
        self.pump = tls.TlsPump(context)
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
    def _do_Subscribe(self, action) -> None:
        super()._do_Subscribe(action)
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
        """Seal the head of what is queued, then close_notify, and make one
        try to send.  One try sends at most what the kernel takes: sealing a
        slow reader's whole queue (4 MB each) cost a second of AES per few
        hundred of them and held it all as ciphertext.  The rest is dropped
        at a chunk boundary, and close_notify follows what was sealed."""
        self._seal(self.LAST_SEAL_BYTES)
        self.outbox.clear()
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
                self.ctx.report(f"{self.kind} {self.peer}: no close_notify sent: {exc!r}", exc)
        super().close(reason, quiet)
        # A closed client may stay referenced a while (a batch of closes in
        # one loop pass): its unsent ciphertext must not stay with it.
        self.wire.clear()
