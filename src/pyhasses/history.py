"""The bounded history of published events, for clients that resume.

Owns: the recent events (their id key and text, where they were addressed
and the exact chunk bytes that went out), the three limits on them (count,
bytes, age), which ids were let go, and the answer to "where does a client
that last saw id X start again?".  Must not touch: sockets, the hub's
index, timers, the form of ids (``sse.EventIds`` turns an id's text into a
comparable key; the history only compares keys).  The caller decides who an
event reaches (``Hub.reach``) and writes the bytes.

Memory: everything a held event keeps counts against ``max_bytes``: its
chunk, its id text, its targets with their exclusion ids, and a fixed
``ENTRY_OVERHEAD`` for the Python objects around them (measured with
tracemalloc).  The oldest events leave as soon as a new one would pass a
limit, so the total never goes past ``max_bytes`` whatever is published.

Lookups never scan: the keys are kept in a list in id order, so a resume
finds its place by bisection and reads the events after it a slice at a
time (``events_after``).
"""

from __future__ import annotations

import bisect
import dataclasses
import sys
import time
from typing import Callable, List, Optional

#: Bytes counted per held event on top of what it holds: the entry object,
#: its slots in the lists and the bytes object's header.
ENTRY_OVERHEAD = 160
#: Per target: the Target object, its attribute dict and its token string.
TARGET_OVERHEAD = 330
#: Per exclusion id: the string object's header (its characters are added).
ID_OVERHEAD = 49


def held_size(id_text: str, targets, data: bytes) -> int:
    """What holding this event costs, as counted against ``max_bytes``."""
    size = ENTRY_OVERHEAD + len(data) + len(id_text)
    for target in targets:
        size += TARGET_OVERHEAD + len(target.token)
        excepts = target.except_ids
        if excepts:
            size += sys.getsizeof(excepts) + len(excepts) * ID_OVERHEAD + sum(map(len, excepts))
    return size


class HeldEvent:
    """One published event: ``key`` its comparable id, ``event_id`` the id's
    text, ``targets`` as published (hub.Target list) and ``data`` the chunk
    bytes that were sent, to be sent again unchanged."""

    __slots__ = ("key", "event_id", "targets", "data", "at", "size")

    def __init__(self, key, event_id: str, targets, data: bytes, at: float, size: int):
        self.key = key
        self.event_id = event_id
        self.targets = targets
        self.data = data
        self.at = at
        self.size = size


#: Resume outcomes.
REPLAY = "replay"        # every event after the id is held: they follow
TOO_OLD = "too-old"      # events after the id were let go: reset, then every held event
UNKNOWN = "unknown-id"   # not an id of this run: reset, then every held event if it
                         # is another run's id, else (not an id at all) live events only


@dataclasses.dataclass
class Resume:
    """Where a reconnecting client starts: ``kind`` says whether a reset
    comes first; the events to replay are those with a key above ``after``
    (None: nothing to replay); ``oldest`` is the text of the oldest id still
    held (None when nothing is)."""

    kind: str
    after: object
    oldest: Optional[str]

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
        self._keys: list = []     # their keys, for bisect
        self._head = 0
        self._bytes = 0
        #: The newest key that was let go (evicted, or never held): a client
        #: that last saw an older one missed it.  None: nothing let go yet.
        self.lost_through = None

    def __len__(self) -> int:
        return len(self._events) - self._head

    @property
    def bytes(self) -> int:
        """Held bytes as counted against ``max_bytes``."""
        return self._bytes

    @property
    def oldest(self) -> Optional[str]:
        """The oldest held id's text."""
        return self._events[self._head].event_id if len(self) else None

    @property
    def oldest_key(self):
        return self._keys[self._head] if len(self) else None

    @property
    def newest_key(self):
        return self._keys[-1] if len(self) else None

    def record(self, key, event_id: str, targets, data: bytes) -> None:
        """Hold a just-published event (keys only ever increase)."""
        if self.max_count <= 0:
            self.lost_through = key
            return
        now = self._clock()
        size = held_size(event_id, targets, data)
        if size > self.max_bytes:
            self._evict(len(self))  # it can never be held; what was held is older anyway
            self.lost_through = key
            return
        self._expire_before(now - self.max_age)
        overflow = len(self) + 1 - self.max_count
        if overflow > 0:
            self._evict(overflow)
        while len(self) and self._bytes + size > self.max_bytes:
            self._evict(1)
        self._events.append(HeldEvent(key, event_id, targets, data, now, size))
        self._keys.append(key)
        self._bytes += size

    def missing_before(self, key) -> None:
        """Events with a key below ``key`` may exist that were never held (a
        cluster node filled from a stream longer than the history): a
        client that last saw one of them gets a reset."""
        if self.lost_through is None or self.lost_through < key - 1:
            self.lost_through = key - 1

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

    def since(self, key, last_issued, other_run: bool = False) -> Resume:
        """Where a client whose last event had ``key`` starts again (None:
        its Last-Event-ID is not an id of this run).  ``last_issued`` is
        the newest key handed out, held or not.  ``other_run``: the id has
        the form of ours but was handed out by an earlier run (a restart):
        that client saw nothing of this run, so everything held of it follows
        the reset, as it would have without the restart."""
        self.expire()
        oldest = self.oldest
        if key is None or key > last_issued:
            before_all = self._keys[self._head] - 1 if other_run and len(self) else None
            return Resume(UNKNOWN, before_all, oldest)
        if key == last_issued:
            return Resume(REPLAY, None, oldest)  # saw the newest: nothing missed
        lost = self.lost_through
        if lost is not None and key < lost:
            return Resume(TOO_OLD, lost, oldest)  # from the oldest held on
        return Resume(REPLAY, key, oldest)

    def events_after(self, key, upto, limit: int) -> List[HeldEvent]:
        """At most ``limit`` held events with ``key < their key <= upto``,
        oldest first; found by bisection."""
        keys = self._keys
        start = bisect.bisect_right(keys, key, self._head)
        end = min(bisect.bisect_right(keys, upto, start), start + limit)
        return self._events[start:end]

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
            freed += events[head].size
            events[head] = None
            head += 1
        self.lost_through = self._keys[head - 1]
        self._bytes -= freed
        if head == len(events):
            events.clear()
            self._keys.clear()
            head = 0
        elif head > 1024 and head * 2 > len(events):
            del events[:head]
            del self._keys[:head]
            head = 0
        self._head = head
