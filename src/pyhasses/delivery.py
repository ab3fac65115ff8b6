"""Delivery that survives the real world: resume, reset events, heartbeats,
retry jitter and the drain on SIGTERM.

Owns: which held events a resuming client gets and in which order, the
bytes of the ``reset`` event and of the retry hint, the periodic heartbeat
sweep and the spreading of stream closes over the drain period.  Must not
touch: sockets and descriptors (clients are written to through
``deliver``/``write`` and closed through ``end_stream``), the hub's index.

The ``reset`` event (``event: reset``) tells a page that it missed events
and should reload its state.  Its data is one JSON object::

    {"oldest": "<id>", "reason": "too-old"}

``oldest`` is the oldest event id the daemon still holds (``null`` when it
holds none); ``reason`` is ``too-old`` (the client's Last-Event-ID is older
than the history), ``unknown-id`` (an id this daemon never gave out) or
``dropped`` (the client read too slowly, or what it missed did not fit its
write queue, and its oldest events were dropped; ``dropped`` then says how
many).
"""

from __future__ import annotations

import json
import math
import random
from typing import Callable, Optional

from .history import History, Resume
from .sse import chunk, comment_chunk

#: What an idle stream gets every heartbeat period.
HEARTBEAT = comment_chunk()
#: Room kept for a ``dropped`` reset event when making room in a queue
#: (its JSON with an id and a count is about a hundred bytes).
RESET_ROOM = 160
#: Drain steps are at least this far apart.
DRAIN_STEP = 0.05


def reset_event(oldest: Optional[int], reason: str, dropped: int = 0, event_id: Optional[int] = None) -> bytes:
    """The chunk of a ``reset`` event.  ``event_id`` moves the browser's
    last id forward (after an unknown id, so that its next reconnect asks
    from the newest id); otherwise the reset carries no id and the browser
    keeps the one it had."""
    info = {"oldest": None if oldest is None else str(oldest), "reason": reason}
    if dropped:
        info["dropped"] = dropped
    body = "event: reset\n"
    if event_id:
        body += f"id: {event_id}\n"
    body += f"data: {json.dumps(info, separators=(',', ':'))}\n\n"
    return chunk(body.encode())


def retry_hint(base_ms: int, rng: random.Random = random) -> bytes:
    """A chunk with only ``retry:``, jittered per connection between the
    base and twice the base, so that after a restart the browsers do not
    all come back in the same second.  Empty when the base is 0."""
    if base_ms <= 0:
        return b""
    # random() rather than randint(): a third of the cost, once per handshake.
    return chunk(b"retry: %d\n\n" % (base_ms + int(rng.random() * (base_ms + 1))))


def retry_after(base_ms: int, rng: random.Random = random) -> int:
    """Seconds for ``Retry-After`` above the cap, jittered like the hint."""
    base = max(1, math.ceil(base_ms / 1000))
    return rng.randint(base, 2 * base)


def replay(client, last_id: str, history: History, hub, last_issued: int, now_id: int) -> Resume:
    """Queue for ``client`` (subscribed a moment ago) what it missed since
    ``last_id``: a reset first when the history cannot tell, then the held
    events that would have reached it, oldest first.  Runs before any later
    publish can queue a live event, so nothing is doubled or skipped.

    A backlog larger than the client's write queue would get it closed as
    too slow on every reconnect: then only the newest events that fit are
    sent, after a ``dropped`` reset saying how many were left out."""
    resume = history.since(last_id, last_issued, now_id)
    if resume.needs_reset:
        newest = last_issued if resume.kind != "too-old" else None
        client.write(reset_event(resume.oldest, resume.kind, event_id=newest))
        hub.counters.resets += 1
    reaches = hub.reach(client)
    missed = [held.data for held in resume.events if reaches(held.targets)]
    skipped = _over_room(missed, client.outbox.limit - len(client.outbox) - 2 * RESET_ROOM)
    if skipped and not resume.needs_reset:
        client.write(reset_event(resume.oldest, "dropped", skipped))
        hub.counters.resets += 1
    for data in missed[skipped:]:
        client.deliver(data)
    hub.counters.replayed += len(missed) - skipped
    return resume


def _over_room(chunks: list, room: int) -> int:
    """How many of the oldest ``chunks`` to leave out so the rest fit."""
    total = sum(map(len, chunks))
    skipped = 0
    while skipped < len(chunks) and total > room:
        total -= len(chunks[skipped])
        skipped += 1
    return skipped


class Heartbeat:
    """Every ``interval`` seconds, one sweep over the streams: a stream that
    got nothing since the last sweep and has nothing queued gets a comment.
    An idle stream hears something every ``interval``; a busy one is never
    silent for more than twice that.  A peer that is gone fails the send and
    is closed.  The only per-stream state is ``heartbeat_mark``."""

    def __init__(self, reactor, hub, interval: float):
        self.reactor = reactor
        self.hub = hub
        self.interval = interval

    def start(self) -> None:
        if self.interval > 0:
            self.reactor.call_later(self.interval, self._sweep)

    def _sweep(self) -> None:
        self.reactor.call_later(self.interval, self._sweep)
        for client in list(self.hub.streams):
            try:
                if client.messages != client.heartbeat_mark:
                    client.heartbeat_mark = client.messages
                elif not client.queued_bytes() and not client.closing:
                    # Sent at once rather than queued for the end of the pass:
                    # ten thousand queued flushes would raise the memory peak.
                    client.outbox.append(HEARTBEAT)
                    client.flush()
            except Exception as exc:  # that stream's fault: the sweep goes on
                self.reactor.fail(client, exc)


class Drain:
    """Ends streams spread over ``period`` seconds, oldest connection first,
    then calls ``done``.  Connections without a stream go at once."""

    def __init__(self, reactor, clients, period: float, done: Callable[[], None]):
        self.reactor = reactor
        self.period = period
        self.done = done
        ordered = sorted(clients, key=lambda c: c.connected_at)
        self.idle = [c for c in ordered if not c.established]
        self.streams = [c for c in ordered if c.established]

    def start(self) -> None:
        for client in self.idle:
            client.close("daemon stopping", quiet=True)
        n = len(self.streams)
        steps = max(1, min(n, int(self.period / DRAIN_STEP)))
        per_step = math.ceil(n / steps) if n else 0
        gap = self.period / steps
        for step in range(steps):
            batch = self.streams[step * per_step:(step + 1) * per_step]
            if batch:
                self.reactor.call_later(step * gap, self._end, batch)
        self.reactor.call_later(self.period, self.done)

    def _end(self, batch) -> None:
        for client in batch:
            if not client.closed and not client.closing:
                try:
                    client.end_stream()
                except Exception as exc:  # that stream's fault: the drain goes on
                    self.reactor.fail(client, exc)
