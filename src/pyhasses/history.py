"""The bounded history of published events, for clients that resume.

Owns: the recent events (their id, where they were addressed and the exact
chunk bytes that went out), the three limits on them (count, bytes, age),
and the answer to "what did a client that last saw id X miss?".  Must not
touch: sockets, the hub's index, timers.  The caller decides who an event
reaches (``Hub.reaches``) and writes the bytes.

Memory: the held bytes are counted as the chunk's length plus a fixed
``ENTRY_OVERHEAD`` per event (the Python objects around it), and the oldest
events leave as soon as a new one would pass a limit, so the total never
goes past ``max_bytes`` whatever is published.
"""

from __future__ import annotations

import bisect
import dataclasses
import time
from typing import Callable, List, Optional

#: Bytes counted per held event on top of its chunk: the entry object, its
#: slot in the list and the bytes object's header.
ENTRY_OVERHEAD = 160


class HeldEvent:
    """One published event: ``targets`` as published (hub.Target list) and
    ``data`` the chunk bytes that were sent, to be sent again unchanged."""

    __slots__ = ("event_id", "targets", "data", "at")

    def __init__(self, event_id: int, targets, data: bytes, at: float):
        self.event_id = event_id
        self.targets = targets
        self.data = data
        self.at = at


#: Resume outcomes.
REPLAY = "replay"        # the id is held: the events after it follow
TOO_OLD = "too-old"      # older than the oldest held: reset, then every held event newer
UNKNOWN = "unknown-id"   # not an id we gave out: reset, then live events only


@dataclasses.dataclass
class Resume:
    """What a reconnecting client gets: ``kind`` says whether a reset comes
    first; ``events`` are the held events after its id, oldest first;
    ``oldest`` is the oldest id still held (None when nothing is)."""

    kind: str
    events: List[HeldEvent]
    oldest: Optional[int]

    @property
    def needs_reset(self) -> bool:
        return self.kind != REPLAY


class History:
    """Events in id order, bounded by ``max_count`` events, ``max_bytes``
    and ``max_age`` seconds.  ``max_count == 0`` keeps nothing."""

    def __init__(self, max_count: int, max_bytes: int, max_age: float,
                 clock: Callable[[], float] = time.monotonic):
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._clock = clock
        self._events: list = []   # HeldEvent, oldest first, from _head on
        self._ids: list = []      # their ids, for bisect
        self._head = 0
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._events) - self._head

    @property
    def bytes(self) -> int:
        """Held bytes as counted against ``max_bytes``."""
        return self._bytes

    @property
    def oldest(self) -> Optional[int]:
        return self._ids[self._head] if len(self) else None

    @property
    def newest(self) -> Optional[int]:
        return self._ids[-1] if len(self) else None

    def record(self, event_id: int, targets, data: bytes) -> None:
        """Hold a just-published event (ids only ever increase)."""
        if self.max_count <= 0:
            return
        now = self._clock()
        size = len(data) + ENTRY_OVERHEAD
        if size > self.max_bytes:
            self._evict(len(self))  # it can never be held; what was held is older anyway
            return
        self._expire_before(now - self.max_age)
        overflow = len(self) + 1 - self.max_count
        if overflow > 0:
            self._evict(overflow)
        while len(self) and self._bytes + size > self.max_bytes:
            self._evict(1)
        self._events.append(HeldEvent(event_id, targets, data, now))
        self._ids.append(event_id)
        self._bytes += size

    def clear(self) -> None:
        """Let go of every event (a cluster's Redis lost its data)."""
        self._evict(len(self))

    def expire(self) -> None:
        """Let go of events older than ``max_age``."""
        self._expire_before(self._clock() - self.max_age)

    def _expire_before(self, limit: float) -> None:
        events, head = self._events, self._head
        end = head
        while end < len(events) and events[end].at < limit:
            end += 1
        if end > head:
            self._evict(end - head)

    def since(self, last_id: Optional[str], last_issued: int, now_id: int) -> Resume:
        """What a client whose last event was ``last_id`` (the text of its
        Last-Event-ID) missed.  ``last_issued`` is the newest id this daemon
        gave out, held or not; ``now_id`` the id the clock gives now (ids
        are time-based, so an id from before a restart is below it, and one
        above it was never ours)."""
        self.expire()
        oldest = self.oldest
        wanted = int(last_id) if last_id and last_id.isascii() and last_id.isdigit() else -1
        if wanted <= 0 or wanted > max(last_issued, now_id):
            return Resume(UNKNOWN, [], oldest)
        if wanted == last_issued:
            return Resume(REPLAY, [], oldest)  # saw the newest: nothing missed
        if oldest is None or wanted < oldest:
            return Resume(TOO_OLD, self._events[self._head:], oldest)
        at = bisect.bisect_left(self._ids, wanted, self._head)
        if at == len(self._ids) or self._ids[at] != wanted:
            return Resume(UNKNOWN, [], oldest)  # in range but never one of ours
        return Resume(REPLAY, self._events[at + 1:], oldest)

    def _evict(self, n: int) -> None:
        # A full history lets go of one event per event published: keep
        # this loop free of property and range calls.
        if n <= 0:
            return
        events = self._events
        head = self._head
        end = head + n
        freed = 0
        while head < end:
            freed += len(events[head].data)
            events[head] = None
            head += 1
        self._bytes -= freed + n * ENTRY_OVERHEAD
        if head == len(events):
            events.clear()
            self._ids.clear()
            head = 0
        elif head > 1024 and head * 2 > len(events):
            del events[:head]
            del self._ids[:head]
            head = 0
        self._head = head
