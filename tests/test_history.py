"""history.py, bytes only: limits, lookups, memory bound."""

import gc
import sys
import tracemalloc

from pyhasses.history import ENTRY_OVERHEAD, REPLAY, TOO_OLD, UNKNOWN, History, held_size
from pyhasses.hub import Target
from pyhasses.sse import encode_event

T = (Target("room"),)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def record(h, key, targets=T, data=None):
    h.record(key, f"e-{key}", targets, encode_event(f"e-{key}", f"m{key}") if data is None else data)


def filled(n, **kw):
    h = History(kw.pop("count", 1000), kw.pop("size", 1 << 30), kw.pop("age", 3600.0), **kw)
    for i in range(1, n + 1):
        record(h, i)
    return h


def keys(events):
    return [e.key for e in events]


def test_replay_after_a_held_id_starts_after_it_and_reads_by_slices():
    h = filled(20)
    r = h.since(12, last_issued=20)
    assert r.kind == REPLAY and r.after == 12
    assert keys(h.events_after(12, 20, 100)) == list(range(13, 21))
    assert keys(h.events_after(12, 20, 3)) == [13, 14, 15]
    assert keys(h.events_after(15, 17, 100)) == [16, 17]  # not past the newest at resume time
    first = h.events_after(12, 20, 1)[0]
    assert first.data == encode_event("e-13", "m13") and first.targets == T and first.event_id == "e-13"


def test_the_newest_id_misses_nothing_even_when_nothing_is_held():
    assert filled(5).since(5, 5).after is None
    empty = History(10, 1 << 20, 60)
    r = empty.since(77, last_issued=77)
    assert r.kind == REPLAY and r.after is None


def test_an_id_older_than_the_history_gets_every_held_event():
    h = filled(30, count=10)
    assert len(h) == 10 and h.oldest == "e-21"
    r = h.since(3, 30)
    assert r.kind == TOO_OLD and r.needs_reset
    assert keys(h.events_after(r.after, 30, 100)) == list(range(21, 31))
    assert r.oldest == "e-21"


def test_the_last_event_let_go_is_not_too_old():
    h = filled(30, count=10)  # 1..20 let go
    assert h.since(20, 30).kind == REPLAY
    assert h.since(19, 30).kind == TOO_OLD


def test_ids_that_are_not_of_this_run_are_unknown():
    h = filled(10)
    for key in (None, 11, 10**18):  # key_of said "not ours", or never handed out
        r = h.since(key, 10)
        assert r.kind == UNKNOWN and r.after is None, key


def test_with_no_history_every_missed_id_is_too_old():
    h = filled(10, count=0)
    assert len(h) == 0
    r = h.since(4, 10)
    assert r.kind == TOO_OLD and h.events_after(r.after, 10, 100) == []


def test_count_limit():
    h = filled(1000, count=100)
    assert len(h) == 100
    assert h.oldest_key == 901 and h.newest_key == 1000


def test_byte_limit_counts_chunk_and_overhead():
    data = encode_event("e-1", "x" * 1000)
    per = held_size("e-1", T, data)
    assert per >= len(data) + ENTRY_OVERHEAD
    h = History(10**6, per * 5 + 10, 3600)
    for i in range(1, 50):
        h.record(i, "e-1", T, data)
    assert len(h) == 5 and h.bytes == per * 5
    assert h.oldest_key == 45


def test_an_event_bigger_than_the_limit_is_not_held():
    h = History(100, 1000, 3600)
    record(h, 1, data=b"a" * 100)
    record(h, 2, data=b"b" * 1000)
    assert len(h) == 0 and h.bytes == 0
    assert h.since(1, 2).kind == TOO_OLD  # the client missed the one not held


def test_age_limit():
    clock = Clock()
    h = History(100, 1 << 20, 10.0, clock=clock)
    for i in range(1, 6):
        record(h, i, data=b"x")
        clock.now += 3
    # events at 1000, 1003, 1006, 1009, 1012; now 1015
    h.expire()
    r = h.since(1, 5)
    assert r.kind == TOO_OLD and keys(h.events_after(r.after, 5, 10)) == [3, 4, 5]
    clock.now += 100
    h.expire()
    assert len(h) == 0 and h.bytes == 0




def test_memory_stays_bounded_for_100k_messages_of_1k():
    limit = 4 * 1024 * 1024
    h = History(10**9, limit, 3600)
    payload = "p" * 1024
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        peak_after = 0
        for i in range(1, 100_001):
            h.record(i, "e-1", T, encode_event(i, payload))
            if i % 10_000 == 0:
                assert h.bytes <= limit
                peak_after = max(peak_after, tracemalloc.get_traced_memory()[0] - base)
    finally:
        tracemalloc.stop()
    assert h.bytes <= limit
    assert len(h) < 100_000
    assert h.newest_key == 100_000
    # What Python really holds stays near the configured limit, not 100 MB.
    assert peak_after < limit * 1.5, peak_after


def test_exclusion_ids_and_targets_count_against_the_byte_limit():
    """Issue 15: a short event addressed with long exclusion lists once held
    hundreds of MB while the history counted only its text."""
    excepts = frozenset(f"{'u' * 120}{n:08d}" for n in range(256))
    targets = [Target(f"room{n}", False, excepts) for n in range(4)]
    data = encode_event("e-1", "short")
    size = held_size("e-1", targets, data)
    assert size > 4 * 256 * 128  # every exclusion id of every target
    limit = 4 * 1024 * 1024
    h = History(10**6, limit, 3600)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(1, 2001):
            # each event its own objects, as JSON parsing makes them
            own = [Target(f"room{n}", False, frozenset(sys.intern(e) + "" for e in excepts)) for n in range(4)]
            h.record(i, f"e-{i}", own, data)
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert h.bytes <= limit and len(h) < 2000
    assert held < limit * 1.5, held  # what Python really holds follows the count
