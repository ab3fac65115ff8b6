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


class Clock:
    """A wall clock the test moves by hand (seconds)."""

    def __init__(self, now=1_764_304_232.0):
        self.now = now

    def __call__(self):
        return self.now


def test_ids_are_digits_the_microsecond_then_the_run_tag():
    clock = Clock()
    ids = sse.EventIds(tag=42, clock=clock)
    text, key = ids.next_id()
    assert text == "1764304232000000000000042" and key == 1_764_304_232_000_000
    assert ids.last_key == key and ids.last_text == text


def test_ids_of_a_run_only_grow_as_integers_even_when_the_clock_does_not():
    clock = Clock()
    ids = sse.EventIds(clock=clock)
    seen = [ids.next_id() for _ in range(1000)]    # a frozen clock: bumped by one
    clock.now -= 30                                 # stepped back
    seen += [ids.next_id() for _ in range(10)]
    clock.now += 60                                 # and forward again
    seen += [ids.next_id() for _ in range(10)]
    numbers = [int(text) for text, _ in seen]
    assert numbers == sorted(set(numbers))
    assert [key for _, key in seen] == sorted(set(key for _, key in seen))
    assert all(re.fullmatch(r"[1-9][0-9]{15}[0-9]{9}", text) for text, _ in seen)
    assert all(text.endswith(f"{ids.tag:09d}") for text, _ in seen)


def test_ids_grow_across_a_restart_when_the_clock_is_sane():
    first = sse.EventIds(tag=999_999_999, clock=Clock(1_764_304_232.0))
    before = [first.next_id()[0] for _ in range(5)]
    second = sse.EventIds(tag=0, clock=Clock(1_764_304_233.0))  # a lower tag, a second later
    after = second.next_id()[0]
    assert int(after) > max(int(t) for t in before)
    assert after.endswith("000000000")


def test_key_of_gives_back_the_key_of_this_run_only():
    clock = Clock()
    ids = sse.EventIds(tag=12345, clock=clock)
    start_text, start_key = ids.last_text, ids.last_key   # the run's start
    assert start_text == "1764304231999999000012345" and ids.key_of(start_text) == start_key
    text, key = ids.next_id()
    assert key > start_key and ids.key_of(text) == key
    other = sse.EventIds(tag=12346, clock=clock)          # the same clock, another run
    other_text, other_key = other.next_id()
    assert other_key == key and other_text != text
    assert other.key_of(text) is None and ids.key_of(other_text) is None
    for bad in ("", None, "000012345", "12345", "0" + text, text + "0", text[:-1], " " + text,
                text.replace("1", "٣"), "1.5" + text[3:], "9" * 21 + "000012345", "abcd1234-1", "-" + text):
        assert ids.key_of(bad) is None, bad


def test_every_run_draws_its_own_tag():
    tags = {sse.EventIds().tag for _ in range(1000)}
    assert len(tags) > 990  # 10**9 to draw from
    assert all(0 <= tag < 10 ** 9 for tag in tags)
