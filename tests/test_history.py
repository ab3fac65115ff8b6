"""history.py, bytes only: limits, lookups, memory bound."""

import gc
import tracemalloc

from pyhasses.history import ENTRY_OVERHEAD, REPLAY, TOO_OLD, UNKNOWN, History
from pyhasses.hub import Target
from pyhasses.sse import encode_event

T = (Target("room"),)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def filled(n, **kw):
    h = History(kw.pop("count", 1000), kw.pop("size", 1 << 30), kw.pop("age", 3600.0), **kw)
    for i in range(1, n + 1):
        h.record(i, T, encode_event(i, f"m{i}"))
    return h


def test_replay_after_a_held_id_returns_the_newer_events_in_order():
    h = filled(20)
    r = h.since("12", last_issued=20, now_id=10**15)
    assert r.kind == REPLAY
    assert [e.event_id for e in r.events] == list(range(13, 21))
    assert r.events[0].data == encode_event(13, "m13")
    assert r.events[0].targets == T


def test_the_newest_id_misses_nothing_even_when_nothing_is_held():
    assert filled(5).since("5", 5, 10**15).events == []
    empty = History(10, 1 << 20, 60)
    r = empty.since("77", last_issued=77, now_id=10**15)
    assert r.kind == REPLAY and r.events == []


def test_an_id_older_than_the_history_gets_every_held_event():
    h = filled(30, count=10)
    assert len(h) == 10 and h.oldest == 21
    r = h.since("3", 30, 10**15)
    assert r.kind == TOO_OLD and r.needs_reset
    assert [e.event_id for e in r.events] == list(range(21, 31))
    assert r.oldest == 21


def test_ids_that_are_not_ours_are_unknown():
    h = filled(10)
    for text in ("abc", "", "-5", "0", "12345678901234567890", "5.5", "٣"):
        r = h.since(text or None, 10, now_id=1000)
        assert r.kind == UNKNOWN and r.events == [], text
    # in range but never handed out (ids 1..10 are held; 4 is, so ask between)
    h2 = History(100, 1 << 20, 60)
    for i in (10, 20, 30):
        h2.record(i, T, b"x")
    assert h2.since("15", 30, 10**6).kind == UNKNOWN


def test_after_a_restart_an_old_id_is_too_old():
    h = History(100, 1 << 20, 60)
    h.record(5_000, T, b"x")
    r = h.since("4000", last_issued=5_000, now_id=6_000)
    assert r.kind == TOO_OLD and [e.event_id for e in r.events] == [5_000]


def test_count_limit():
    h = filled(1000, count=100)
    assert len(h) == 100
    assert h.oldest == 901 and h.newest == 1000


def test_byte_limit_counts_chunk_and_overhead():
    data = encode_event(1, "x" * 1000)
    per = len(data) + ENTRY_OVERHEAD
    h = History(10**6, per * 5 + 10, 3600)
    for i in range(1, 50):
        h.record(i, T, data)
    assert len(h) == 5 and h.bytes == per * 5
    assert h.oldest == 45


def test_an_event_bigger_than_the_limit_is_not_held():
    h = History(100, 500, 3600)
    h.record(1, T, b"a" * 100)
    h.record(2, T, b"b" * 1000)
    assert len(h) == 0 and h.bytes == 0


def test_age_limit():
    clock = Clock()
    h = History(100, 1 << 20, 10.0, clock=clock)
    for i in range(1, 6):
        h.record(i, T, b"x")
        clock.now += 3
    # events at 1000, 1003, 1006, 1009, 1012; now 1015
    h.expire()
    assert [e.event_id for e in h.since("1", 5, 10**6).events] == [3, 4, 5]
    clock.now += 100
    h.expire()
    assert len(h) == 0 and h.bytes == 0


def test_zero_count_keeps_nothing():
    h = filled(10, count=0)
    assert len(h) == 0


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
            h.record(i, T, encode_event(i, payload))
            if i % 10_000 == 0:
                assert h.bytes <= limit
                peak_after = max(peak_after, tracemalloc.get_traced_memory()[0] - base)
    finally:
        tracemalloc.stop()
    assert h.bytes <= limit
    assert len(h) < 100_000
    assert h.newest == 100_000
    # What Python really holds stays near the configured limit, not 100 MB.
    assert peak_after < limit * 1.5, peak_after
