"""One SSE stream's rules, sans-IO: what a browser's bytes and the hub's
deliveries lead to.

Owns: reading the request head (through ``http.RequestReader``), the
decision it leads to (``http.decide``), re-initialisation under ``-ra``, the
answer bytes of every outcome, the stream's first bytes (handshake and retry
hint), the handshake timeout and the stream lifetime as rules (the deadline
and what happens when it passes; the descriptor layer runs the timers), the
end of a stream, and the drop policy for a full write queue (which queued
events go, the ``reset`` event in their place, its counters).  Must not
touch: sockets, descriptors, the reactor, the log.  The hub is never called
from here: subscribing is an action the connection carries out.

In the manner of h11's ``Connection`` and ``tls.TlsPump``: the connection
hands over what the client sent (``receive``) and what the clock or the
daemon says (``handshake_expired``, ``end``, ``expired``); each returns a
list of actions, small records, which the connection carries out in order
(``streams.SseClient`` has one ``_do_<Action>`` method for each):

``Reinit``     drop the stream's subscriptions, restart the handshake timer
``Subscribe``  make this an established stream (``request`` says on what),
               then write ``greeting`` (the HTTP head and retry hint, one
               bytes object so that the drop policy never separates them),
               then resume after ``request.last_event_id`` if not None
``Answer``     write ``data`` (a complete HTTP answer) and close after it
``Close``      close at once, nothing to send
``Write``      write ``data`` (the stream's last chunk), then close after it
``Ignored``    bytes on a stream that mean nothing (a debug log line)
``Interim``    write ``data`` (``100 Continue``) and read on
``Publish``    an HTTP publish the token allows: run ``message`` as the
               control channel runs one, answer ``publish_reply(ack)``,
               and close after it unless ``keep_alive``

Access control (PROTOCOL.md 9), as the rules' ``policy`` (an
``auth.AccessPolicy``) says; with no keys nothing of it runs:

* Signed subscriptions: ``_admit`` asks the policy about a valid stream
  request; 401 or 403 is an ``Answer`` like any other refusal.  An
  accepted token's ``exp`` becomes ``token_ends`` (monotonic), which
  ``expired(now)`` compares as it does the lifetime; the connection also
  hands it to the daemon's one expiry timer, so the stream ends within
  moments of ``exp`` however long the lifetime sweep's period.
* HTTP publishing: a ``POST`` to the publish URL goes to the ``BODY``
  state, which reads exactly ``Content-Length`` bytes (413 above the part
  limit before reading any; the token is checked before the body is read,
  so an unauthenticated client cannot make the daemon hold a body); then
  ``Publish``, and the session is back in ``NEW`` for the next request on
  the same connection.

The hot path (``deliver``, once per recipient per message) stays in the
connection: an append and a flush registration.  Only a queue that is
full comes here (``make_room``).
"""

from __future__ import annotations

import random
import time
from typing import Callable, Optional, Union

from . import auth, control, delivery, http
from .sse import LAST_CHUNK

# States, as the client list shows them (hasses' names).
NEW, HEADER, STREAM, END = "NEW", "HEA", "SSE", "END"
#: Reading the body of an HTTP publish.
BODY = "PUB"

#: A stream's lifetime is drawn within this fraction either side of
#: --stream-lifetime, so that streams opened together (after a restart) do
#: not all end together.
LIFETIME_JITTER = 0.1
#: Lifetimes drawn from: a stream keeps one of these shared float objects
#: rather than a float of its own (memory per idle stream is counted).
LIFETIME_STEPS = 64


def _asks_close(head: http.RequestHead) -> bool:
    value = head.header(b"connection")
    return value is not None and any(t.strip().lower() == b"close" for t in value.split(b","))


class _Body:
    """An HTTP publish being read: its head, its token's grants, its length,
    what came so far."""

    __slots__ = ("head", "grants", "length", "body")

    def __init__(self, head: http.RequestHead, grants, length: int):
        self.head = head
        self.grants = grants
        self.length = length
        self.body = bytearray()


def _expects_continue(head: http.RequestHead) -> bool:
    value = head.header(b"expect")
    return value is not None and value.strip().lower() == b"100-continue"


# -- actions ------------------------------------------------------------------
class Action:
    __slots__ = ()
    #: The connection's method for it: ``_do_<class name>`` (set below).
    carried_out_by = ""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        cls.carried_out_by = "_do_" + cls.__name__

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and all(getattr(self, n) == getattr(other, n) for n in self.__slots__)


class Reinit(Action):
    """A new request on an established stream (``-ra``): unsubscribe, count
    it, restart the handshake timer; the new head is read next."""

    __slots__ = ()


class Subscribe(Action):
    """Establish the stream: subscribe, write ``greeting``, then resume."""

    __slots__ = ("request", "greeting")

    def __init__(self, request: http.StreamRequest, greeting: bytes):
        self.request = request
        self.greeting = greeting


class Answer(Action):
    """Write ``data`` and close after it; ``reason`` is for the log."""

    __slots__ = ("status", "data", "reason")

    def __init__(self, status: int, data: bytes, reason: str):
        self.status = status
        self.data = data
        self.reason = reason


class Close(Action):
    """Close now; ``reason`` is for the log and the client list."""

    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason


class Write(Action):
    """Write ``data``, then close after it (the stream ends properly)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data


class Interim(Action):
    """Write ``data`` (an interim answer) and go on reading."""

    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data


class Publish(Action):
    """Publish ``message`` (a ``control.Message``) and answer with
    ``StreamSession.publish_reply``; then close unless ``keep_alive``."""

    __slots__ = ("message", "keep_alive")

    def __init__(self, message, keep_alive: bool):
        self.message = message
        self.keep_alive = keep_alive


class Ignored(Action):
    """Bytes on an established stream that mean nothing (logged at debug)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data


# -- what every session of a daemon shares ------------------------------------------
class StreamRules:
    """The settings a session follows, shared by every session of a daemon
    (one reference per stream, not a copy).

    ``reinit`` is read at each new request: the ``reinit`` control command
    changes it while running (``runtime`` is any object with that flag).
    ``oldest_id`` says the oldest event id held (for ``reset`` events).
    ``counters`` is the hub's ``Counters``: the drop policy adds to it.
    ``policy`` is the ``auth.AccessPolicy`` (no keys: nothing checked);
    ``wall`` the wall clock tokens' ``exp`` is compared with; ``access``
    the ``control.AccessCounters`` its refusals add to.
    """

    __slots__ = ("settings", "runtime", "cors", "counters", "oldest_id", "clock", "rng", "policy", "wall",
                 "access", "_lifetimes")

    def __init__(self, settings, runtime, cors: bytes, counters, oldest_id: Callable[[], Optional[str]],
                 clock: Callable[[], float] = time.monotonic, rng: random.Random = random,
                 policy: Optional[auth.AccessPolicy] = None, wall: Callable[[], float] = time.time,
                 access: Optional[control.AccessCounters] = None):
        self.settings = settings
        self.runtime = runtime
        self.cors = cors
        self.counters = counters
        self.oldest_id = oldest_id
        self.clock = clock
        self.rng = rng
        self.policy = policy if policy is not None else auth.AccessPolicy()
        self.wall = wall
        self.access = access if access is not None else control.AccessCounters()
        base, spread = settings.stream_lifetime, 2 * LIFETIME_JITTER / (LIFETIME_STEPS - 1)
        self._lifetimes = tuple(base * (1 - LIFETIME_JITTER + step * spread) for step in range(LIFETIME_STEPS))

    def lifetime(self) -> float:
        """One stream's lifetime: --stream-lifetime, give or take 10 %."""
        return self._lifetimes[int(self.rng.random() * LIFETIME_STEPS)]


# -- the session ----------------------------------------------------------------
class StreamSession:
    """The rules of one connection on the SSE port; see the module docstring."""

    # An idle stream's memory is counted (issue 6: at most 1 KB each): few
    # slots, the drop policy's state only once it drops.
    __slots__ = ("rules", "state", "reader", "began", "lifetime", "token_ends", "_drops")

    def __init__(self, rules: StreamRules):
        self.rules = rules
        self.state = NEW
        #: What reads the current state's bytes: the head's reader, or in
        #: BODY the publish being read (one slot for both: memory per stream).
        self.reader: Optional[Union[http.RequestReader, _Body]] = http.RequestReader(rules.settings.max_head_bytes)
        #: Monotonic time of the handshake (None before it).
        self.began: Optional[float] = None
        #: This stream's lifetime in seconds (one of the rules' shared values).
        self.lifetime = 0.0
        #: Monotonic time the stream's token expires (None: no token, or no exp).
        self.token_ends: Optional[float] = None
        #: The drop policy's [reset chunk still queued, events it counts, events dropped in all].
        self._drops: Optional[list] = None

    @property
    def established(self) -> bool:
        return self.state == STREAM

    @property
    def ends_at(self) -> float:
        """Monotonic time after which the lifetime sweep ends this stream."""
        if self.began is None:
            return float("inf")
        ends = self.began + self.lifetime
        return ends if self.token_ends is None else min(ends, self.token_ends)

    @property
    def dropped(self) -> int:
        """Events dropped from this stream's queue (drop policy)."""
        return 0 if self._drops is None else self._drops[2]

    @property
    def handshake_timeout(self) -> float:
        """Seconds a client has for a complete request, from its connect or
        from a re-init; the connection runs the timer."""
        return self.rules.settings.handshake_timeout

    # -- input ----------------------------------------------------------------
    def receive(self, data: bytes) -> list:
        """What the client sent; returns the actions it leads to."""
        actions: list = []
        while data and self.state != END:  # answered: what follows does not matter
            data = self._READERS[self.state](self, data, actions)
        return actions

    def _on_stream_bytes(self, data: bytes, actions: list) -> bytes:
        """hasses: a new GET on an established stream re-initialises it when
        allowed (some proxies reuse the connection); anything else is
        ignored."""
        if self.rules.runtime.reinit and data.lstrip(b"\r\n").startswith(b"GET "):
            self.state = NEW
            self.reader = http.RequestReader(self.rules.settings.max_head_bytes)
            actions.append(Reinit())
            return data
        actions.append(Ignored(data))
        return b""

    def _on_head_bytes(self, data: bytes, actions: list) -> bytes:
        self.state = HEADER
        item = self.reader.feed(data)
        if item is None:
            return b""
        if isinstance(item, http.BadHead):
            actions.append(self._answer(http.FixedAnswer(item.status, "error", item.reason)))
            return b""
        # Bytes sent with the request are read as if sent after the
        # handshake: only a new GET under re-init means anything.  After
        # a publish's head they are its body, and then the next request.
        rest = self.reader.rest()
        if self.rules.policy.is_publish(item):
            return self._on_publish_head(item, rest, actions)
        actions.append(self._on_head(item))
        return rest if self.state == STREAM else b""

    def _on_body_bytes(self, data: bytes, actions: list) -> bytes:
        reading = self.reader
        take = reading.length - len(reading.body)
        reading.body += data[:take]
        if len(reading.body) < reading.length:
            return b""
        self.reader = None
        actions.append(self._on_publish(reading, bytes(reading.body)))
        return data[take:] if self.state == NEW else b""

    #: Who reads bytes in each state (but END); each returns the bytes left.
    _READERS = {NEW: _on_head_bytes, HEADER: _on_head_bytes, STREAM: _on_stream_bytes, BODY: _on_body_bytes}

    def _on_head(self, head: http.RequestHead) -> Action:
        decision = self._admit(head)
        if isinstance(decision, http.FixedAnswer):
            return self._answer(decision)
        return self._establish(decision)

    def _admit(self, head: http.RequestHead):
        """The head's outcome: a ``StreamRequest`` or a ``FixedAnswer``;
        under --subscriber-key, a request whose token does not allow it is
        a 401 or 403 (``token_ends`` is set for one that does)."""
        rules = self.rules
        settings = rules.settings
        decision = http.decide(head, settings.match_url, settings.max_token_length, settings.max_subscriptions)
        self.token_ends = None  # a re-init's request brings its own token
        if isinstance(decision, http.FixedAnswer) or rules.policy.subscriber_key is None:
            return decision
        now = rules.wall()
        verdict = rules.policy.check_stream(head, decision.tokens, now=now)
        if isinstance(verdict, auth.Deny):
            rules.access.streamdenied += 1
            return http.FixedAnswer(verdict.status, "denied", verdict.reason)
        if verdict.expires is not None:
            self.token_ends = rules.clock() + (verdict.expires - now)
        return decision

    def _establish(self, request: http.StreamRequest) -> Subscribe:
        self.state = STREAM
        self.reader = None  # an idle stream keeps no parser
        rules = self.rules
        self.began = rules.clock()
        self.lifetime = rules.lifetime()
        return Subscribe(request, http.handshake(rules.cors) + delivery.retry_hint(rules.settings.retry))

    # -- HTTP publishing ------------------------------------------------------------
    def _on_publish_head(self, head: http.RequestHead, rest: bytes, actions: list) -> bytes:
        """A POST to the publish URL: the token first (no body is held for
        a client without one), then the length (413 before reading)."""
        rules = self.rules
        settings = rules.settings
        grants = auth.publisher(head, rules.policy.publisher_key, rules.wall())
        verdict = grants if isinstance(grants, auth.Deny) else auth.body_length(head, settings.max_part_bytes)
        if isinstance(verdict, auth.Deny):
            rules.access.publishdenied += 1
            actions.append(self._answer(http.FixedAnswer(verdict.status, "denied", verdict.reason)))
            return b""
        self.state = BODY
        self.reader = _Body(head, grants, verdict)
        if not verdict and not rest:
            return self._on_body_bytes(b"", actions)  # an empty body is complete at once
        if verdict and not rest and _expects_continue(head):
            # curl asks so above 1 MiB, and would wait a second for it.
            actions.append(Interim(b"HTTP/1.1 100 Continue\r\n\r\n"))
        return rest

    def _on_publish(self, reading: _Body, body: bytes) -> Action:
        rules = self.rules
        settings = rules.settings
        head = reading.head
        verdict = auth.publish_body(reading.grants, head, body, settings.max_token_length,
                                    settings.max_message_bytes, settings.max_part_bytes,
                                    max_except=settings.max_except, max_targets=settings.max_targets)
        if isinstance(verdict, auth.Deny):
            rules.access.publishdenied += 1
            return self._answer(http.FixedAnswer(verdict.status, "denied", verdict.reason))
        # Back to reading the next request on this connection (keep-alive).
        self.state = NEW
        self.reader = http.RequestReader(settings.max_head_bytes)
        keep_alive = head.version == "1.1" and not _asks_close(head)
        if not keep_alive:
            self.state = END
            self.reader = None
        return Publish(verdict.message, keep_alive)

    def publish_reply(self, ack: bytes) -> bytes:
        """The 200 answer carrying a publish's acknowledgement JSON."""
        return http.publish_reply(ack, self.rules.cors)

    def _answer(self, decision: http.FixedAnswer) -> Answer:
        self.state = END
        self.reader = None
        return Answer(decision.status, http.fixed_answer(decision, self.rules.cors), decision.reason)

    # -- the clock and the daemon -------------------------------------------------
    def handshake_expired(self) -> list:
        """The handshake timer ran out (the connection cancels it on Subscribe)."""
        if self.state == STREAM:
            return []
        self.state = END
        return [Close(f"no complete request within {self.handshake_timeout:g} s")]

    def expired(self, now: float) -> bool:
        """Has this stream outlived its lifetime at monotonic time ``now``?"""
        began = self.began
        if began is None:
            return False
        token_ends = self.token_ends
        return now - began >= self.lifetime or (token_ends is not None and now >= token_ends)

    def token_expired(self, now: float) -> bool:
        """Has this stream's token passed its ``exp`` at monotonic ``now``?"""
        return self.token_ends is not None and now >= self.token_ends

    def end(self) -> list:
        """End the stream (lifetime, drain): the chunked body's last chunk,
        so the browser reconnects by itself; a connection still reading
        its request just closes after what is queued."""
        was_stream = self.state == STREAM
        self.state = END
        self.reader = None
        return [Write(LAST_CHUNK if was_stream else b"")]

    # -- a full queue ----------------------------------------------------------
    def make_room(self, outbox, data: bytes, pinned: int) -> bool:
        """The drop policy, for an event that does not fit the queue: drop
        the oldest queued events (whole chunks, after the first ``pinned``,
        which may be partly sent or be the stream's HTTP head) and put one
        ``reset`` event where they were, so the page knows it missed some.
        ``data`` is queued too when it fits then; returns whether it was."""
        counters = self.rules.counters
        drops = self._drops
        if drops is None:
            drops = self._drops = [None, 0, 0]
        held = outbox.unsent(pinned)
        pending_reset = held if held is not None and held is drops[0] else None
        keep = pinned + 1 if pending_reset is not None else pinned
        room = len(data) + delivery.RESET_ROOM
        dropped = len(outbox.drop_oldest(keep, room))
        queued = outbox.fits(room)
        if not queued:
            dropped += 1  # this event alone does not fit
        drops[2] += dropped
        counters.dropped_events += dropped
        if pending_reset is None:
            drops[1] = 0
            counters.resets += 1
        drops[1] += dropped
        drops[0] = delivery.reset_event(self.rules.oldest_id(), "dropped", drops[1])
        outbox.put(pinned, drops[0], replace=pending_reset is not None)
        if queued:
            outbox.append(data)
        return queued
