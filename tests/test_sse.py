"""Event encoding and ids, bytes only (PROTOCOL.md 4)."""

import time

from pyhasses import sse


def test_single_line_event_chunk():
    assert sse.encode_event(7, "hello") == b"13\r\nid: 7\ndata: hello\n\n\r\n"


def test_line_breaks_become_data_lines():
    body = sse.event_body(1, "a\nb\r\nc\rd")
    assert body == b"id: 1\ndata: a\ndata: b\ndata: c\ndata: d\n\n"


def test_named_event_and_retry():
    body = sse.event_body(5, "x", event="chat", retry=3000)
    assert body == b"event: chat\nretry: 3000\nid: 5\ndata: x\n\n"


def test_chunk_length_is_hex_of_utf8_bytes():
    data = "é" * 1000
    out = sse.encode_event(1, data)
    size, _, rest = out.partition(b"\r\n")
    assert int(size, 16) == len(rest) - 2
    assert rest.endswith(b"\n\n\r\n")


def test_large_message_framed_intact():
    data = "x" * (1024 * 1024)
    out = sse.encode_event(1, data)
    size, _, rest = out.partition(b"\r\n")
    assert int(size, 16) == len(rest) - 2 == len(b"id: 1\ndata: ") + len(data) + 2


def test_ids_strictly_increase_even_when_clock_stalls():
    ids = sse.EventIds(clock=lambda: 1000.0)
    seen = [ids.next() for _ in range(1000)]
    assert seen == sorted(set(seen))
    assert seen[0] == 1000 * 1_000_000


def test_ids_survive_clock_going_back():
    t = [2000.0]
    ids = sse.EventIds(clock=lambda: t[0])
    a = ids.next()
    t[0] = 1000.0
    assert ids.next() > a


def test_ids_follow_time_across_restart():
    before = sse.EventIds().next()
    time.sleep(0.001)  # a restart takes far longer than a microsecond
    after = sse.EventIds().next()  # a new process's generator
    assert after > before
