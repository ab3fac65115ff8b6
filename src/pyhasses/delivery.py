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
than the history), ``unknown-id`` (not an id of this run of the daemon: one
from before a restart, then every held event follows, or not an id at all,
then live events only) or ``dropped`` (the client read
too slowly, or what it missed did not fit its write queue, and its oldest
events were dropped; ``dropped`` then says how many).

On a cluster a Last-Event-ID may be newer than anything this node has read
(it lags the node that served the client): the stream then waits, with
nothing sent, until the node has read that far (``Replayer.caught_up``),
and catches up from the history like any resume; not reached in time, or
beyond what Redis holds, it gets a reset as an unknown id.
"""

from __future__ import annotations

import collections
import json
import math
import random
from typing import Callable, Optional

from .history import UNKNOWN, History, Resume
from .sse import chunk, comment_chunk, looks_like_event_id

#: What an idle stream gets every heartbeat period.
HEARTBEAT = comment_chunk()
#: Room kept for a ``dropped`` reset event when making room in a queue
#: (its JSON with an id and a count is about a hundred bytes).
RESET_ROOM = 160
#: Drain steps are at least this far apart.
DRAIN_STEP = 0.05


def reset_event(oldest: Optional[str], reason: str, dropped: int = 0, event_id: Optional[str] = None) -> bytes:
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


#: Held events looked at per loop pass, over every resuming client: a burst
#: of resumes must not hold the loop (issue 15: 300 resumes over 10,000
#: held events held every stream for 1.3 s when each was done at once).
#: About a millisecond of work.
REPLAY_BUDGET = 2048
#: Resume outcome of an id this node has not read yet (a cluster node that
#: lags the node that served the client): the stream waits for it.
AHEAD = "ahead"


class Replay:
    """One resuming stream's catch-up, done a slice per loop pass.

    The held events after the client's id, up to the newest issued when it
    came back (``upto``), are looked at in id order; those that reach it
    are kept (at most the room of its write queue: the newest win), and go
    out at once when the end is reached.  Live events published meanwhile
    wait behind them (``hold``: the stream's ``deliver`` hands them here
    while ``client.replay`` is this object), so nothing is doubled, skipped
    or reordered across the switch.  Events the history lets go before the
    replay reaches them are reported by a ``dropped`` reset."""

    __slots__ = ("client", "hub", "history", "reaches", "cursor", "upto", "reset_sent", "missed",
                 "missed_bytes", "skipped", "lost", "live", "live_bytes", "done", "waiting")

    def __init__(self, client, hub, history: History, after, upto, reset_sent: bool):
        self.client = client
        self.hub = hub
        self.history = history
        self.reaches = hub.reach(client)
        self.cursor = after
        self.upto = upto
        self.reset_sent = reset_sent
        self.missed: collections.deque = collections.deque()
        self.missed_bytes = 0
        self.skipped = 0          # reaching events left out for room
        self.lost = False         # events let go by the history before we got there
        self.live: list = []
        self.live_bytes = 0
        self.done = False
        #: Waiting for this node to read up to ``cursor`` (Replayer.wait):
        #: live events until then are at most the client's id, or in the
        #: history by the time the wait ends, so they are not kept.
        self.waiting = False

    def _room(self) -> int:
        client = self.client
        return client.outbox.limit - len(client.outbox) - self.live_bytes - 2 * RESET_ROOM

    def hold(self, data: bytes) -> None:
        """A live event for the client while it catches up."""
        if self.waiting:
            return
        self.live.append(data)
        self.live_bytes += len(data)
        if self.live_bytes + len(self.client.outbox) > self.client.outbox.limit:
            # Live traffic outruns the catch-up: the rest of the backlog is
            # given up (a reset says so) rather than the live events.
            self.lost = True
            self.finish()

    def step(self, budget: int) -> int:
        """Look at up to ``budget`` held events; returns how many."""
        client, history = self.client, self.history
        if self.done or client.replay is not self or client.closed or client.closing:
            self.done = True
            return 0
        lost = history.lost_through
        if lost is not None and lost > self.cursor:
            self.lost = True
            self.cursor = lost
        events = history.events_after(self.cursor, self.upto, budget)
        if events:
            reaches, missed = self.reaches, self.missed
            kept = 0
            for held in events:
                if reaches(held.targets):
                    missed.append(held.data)
                    kept += len(held.data)
            self.missed_bytes += kept
            self.cursor = events[-1].key
            self._trim(self._room())
        if len(events) < budget or self.cursor >= self.upto:
            self.finish()
        return len(events)

    def _trim(self, room: int) -> None:
        missed = self.missed
        while missed and self.missed_bytes > room:
            self.missed_bytes -= len(missed.popleft())
            self.skipped += 1

    def finish(self) -> None:
        """Queue what was found, then the live events that waited."""
        if self.done:
            return
        self.done = True
        client, counters = self.client, self.hub.counters
        client.replay = None
        if client.closed:
            return
        self._trim(self._room())
        if (self.skipped or self.lost) and not self.reset_sent:
            client.write(reset_event(self.history.oldest, "dropped", self.skipped))
            counters.resets += 1
        for data in self.missed:
            client.deliver(data)
        counters.replayed += len(self.missed)
        for data in self.live:
            client.deliver(data)
        self.missed.clear()
        self.live = []

    def stop(self) -> None:
        """The stream was re-initialised: the backlog no longer applies;
        live events that waited still go out, in order."""
        self.done = True
        self.client.replay = None
        for data in self.live:
            self.client.deliver(data)
        self.live = []


class Replayer:
    """Every resume of the daemon: the reset a resume needs, at once, and
    the catch-ups, ``REPLAY_BUDGET`` held events per loop pass over all of
    them, first come first served."""

    def __init__(self, reactor, history: History, hub, ids):
        self.reactor = reactor
        self.history = history
        self.hub = hub
        self.ids = ids          # sse.EventIds, or a cluster's equivalent
        self._active: collections.deque = collections.deque()
        self._scheduled = False
        #: Seconds a resume may wait for an id newer than any this node has
        #: (0: such an id is unknown).  A cluster node sets it: an id another
        #: node gave out may be ahead of this node's reading.
        self.ahead_wait = 0.0
        #: Called with (replay, key) when a wait begins; may end it at once
        #: with ``give_up`` (the id is beyond anything Redis holds).
        self.ahead_check: Optional[Callable] = None
        self.waiting: list = []  # Replay objects waiting for this node to read their id

    def __len__(self) -> int:
        return len(self._active)

    def start(self, client, last_id: str) -> Resume:
        """``client`` subscribed a moment ago with ``last_id`` (the text of
        its Last-Event-ID): a reset first when the history cannot tell, then
        the held events that would have reached it, oldest first, then live
        ones."""
        ids, history = self.ids, self.history
        last_key = ids.last_key
        key = ids.key_of(last_id)
        if key is not None and key > last_key and self.ahead_wait > 0:
            return self._wait(client, key)
        resume = history.since(key, last_key, other_run=looks_like_event_id(last_id))
        if resume.needs_reset:
            # After an id that is not of this run and nothing replayed, the
            # browser's next reconnect asks from the newest id of this one.
            newest = ids.last_text if resume.kind == UNKNOWN and resume.after is None else None
            client.write(reset_event(resume.oldest, resume.kind, event_id=newest))
            self.hub.counters.resets += 1
        if resume.after is None or not len(history):
            return resume
        replay = Replay(client, self.hub, history, resume.after, last_key, resume.needs_reset)
        client.replay = replay
        self._activate(replay)
        return resume

    def _activate(self, replay: Replay) -> None:
        self._active.append(replay)
        if not self._scheduled:
            self._scheduled = True
            self.reactor.call_soon(self._run)  # this pass: a short backlog costs no wait

    # -- ids this node has not read yet ------------------------------------------
    def _wait(self, client, key) -> Resume:
        """The stream waits (no events, no reset) until this node has read
        up to ``key`` (``caught_up``), then gets exactly the events after
        it; after ``ahead_wait`` seconds, a reset instead."""
        replay = Replay(client, self.hub, self.history, key, None, False)
        replay.waiting = True
        client.replay = replay
        self.waiting.append(replay)
        self.reactor.call_later(self.ahead_wait, self.give_up, replay)
        if self.ahead_check is not None:
            self.ahead_check(replay, key)
        return Resume(AHEAD, key, self.history.oldest)

    def caught_up(self) -> None:
        """This node read further: the waits it has reached end, and those
        streams catch up from the history like any resume."""
        last_key = self.ids.last_key
        still = []
        for replay in self.waiting:
            if not self._still_waiting(replay):
                continue
            if replay.cursor <= last_key:
                replay.waiting = False
                replay.upto = last_key
                self._activate(replay)
            else:
                still.append(replay)
        self.waiting = still

    def give_up(self, replay: Replay) -> None:
        """The id was not reached in time, or is beyond what exists: a reset
        that moves the browser's last id to this node's newest, then live
        events."""
        if not self._still_waiting(replay):
            return
        replay.waiting = False
        replay.done = True
        client = replay.client
        client.replay = None
        if replay in self.waiting:
            self.waiting.remove(replay)
        client.write(reset_event(self.history.oldest, UNKNOWN, event_id=self.ids.last_text))
        self.hub.counters.resets += 1

    @staticmethod
    def _still_waiting(replay: Replay) -> bool:
        client = replay.client
        return (replay.waiting and not replay.done and client.replay is replay
                and not client.closed and not client.closing)

    def _run(self) -> None:
        budget = REPLAY_BUDGET
        active = self._active
        while active and budget > 0:
            replay = active[0]
            try:
                budget -= replay.step(budget)
            except Exception as exc:
                replay.done = True
                self.reactor.fail(replay.client, exc)
            if replay.done:
                active.popleft()
        if active:
            self.reactor.call_later(0, self._run)  # the next pass, after its events
        else:
            self._scheduled = False


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
