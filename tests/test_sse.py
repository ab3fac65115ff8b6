"""Event encoding and ids, bytes only (PROTOCOL.md 4)."""

import re

from pyhasses import sse


def test_single_line_event_chunk():
    assert sse.encode_event("ab-7", "hello") == b"16\r\nid: ab-7\ndata: hello\n\n\r\n"


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


def test_ids_of_a_run_share_its_epoch_and_only_grow():
    ids = sse.EventIds()
    seen = [ids.next_id() for _ in range(1000)]
    assert [key for _, key in seen] == list(range(1, 1001))
    assert all(text == f"{ids.epoch}-{key}" for text, key in seen)
    assert ids.last_key == 1000 and ids.last_text == seen[-1][0]
    assert re.fullmatch(r"[0-9a-z]{8}", ids.epoch)


def test_key_of_gives_back_the_key_of_this_run_only():
    ids = sse.EventIds("abcd1234")
    text, key = ids.next_id()
    assert ids.key_of(text) == key == 1
    assert ids.key_of("abcd1234-0") == 0  # the run's start: misses nothing of it
    other = sse.EventIds("zzzz0000")
    assert other.key_of(text) is None
    for bad in ("", None, "abcd1234-", "abcd1234-x", "abcd1234-01", "abcd1234--1", "abcd1234-1.5",
                "abcd1234-" + "9" * 20, "abcd1234-٣", "1764304232000001"):
        assert ids.key_of(bad) is None, bad


def test_every_run_draws_its_own_epoch_whatever_the_clock():
    # No clock is read at all: a clock stepped back or frozen across a
    # restart cannot make two runs' ids meet.
    epochs = {sse.EventIds().epoch for _ in range(1000)}
    assert len(epochs) == 1000
