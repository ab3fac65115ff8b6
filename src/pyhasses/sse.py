"""Server-Sent Events encoding: one message into the bytes of one HTTP chunk,
and the event ids.

Owns: the ``text/event-stream`` field syntax, chunk framing, id generation.
Must not touch: sockets, recipients.  The fan-out calls ``encode_event`` once
per message and hands the same bytes to every recipient.
"""

from __future__ import annotations

import re
import secrets
import time
from typing import Callable, Optional, Tuple

#: Ends the chunked body: sent to every stream when the daemon stops.
LAST_CHUNK = b"0\r\n\r\n"

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class EventIds:
    """The ids of this run: decimal digits only, ``<T><R>``.  ``T`` is a
    time-based counter (microseconds since the Unix epoch at issue, bumped
    past the last one handed out in this run); ``R`` is this run's tag, a
    number drawn at random when the daemon starts, written with exactly
    ``TAG_DIGITS`` digits.

    So an id is what PROTOCOL.md sections 4 and 5a show, a numeric string,
    and ids compared as integers grow strictly within a run and across a
    restart whenever the clock is sane (``T`` leads, and ``R`` has a fixed
    width).  Whatever the clock did (stepped back, frozen), an id handed
    out by an earlier run or another daemon never matches an event of this
    run: its last digits are another tag (hasses used the second, which
    repeats; a time-based id alone repeats when the clock goes back).

    The interface is what history and resume use, so that a cluster can
    replace this object with one whose ids come from elsewhere: ``next_id()``
    gives the text and a comparable key (``T``), ``key_of(text)`` turns a
    Last-Event-ID back into a key (None: not an id of this run), and
    ``last_key`` / ``last_text`` name the newest id handed out (before the
    first, the run's start: ``T`` = start minus one microsecond with this
    run's tag, which misses nothing of the run).
    """

    __slots__ = ("tag", "_suffix", "_last", "_clock")

    #: Width of the run's tag: two runs share one about once in 10**9 starts.
    TAG_DIGITS = 9

    def __init__(self, tag: Optional[int] = None, clock: Callable[[], float] = time.time):
        if tag is None:
            tag = secrets.randbelow(10 ** self.TAG_DIGITS)
        if not 0 <= tag < 10 ** self.TAG_DIGITS:
            raise ValueError(f"run tag {tag} does not fit {self.TAG_DIGITS} digits")
        self.tag = tag
        self._suffix = f"{tag:0{self.TAG_DIGITS}d}"
        self._clock = clock
        self._last = self._now() - 1  # the run's start: nothing of this run is older

    def _now(self) -> int:
        return int(self._clock() * 1_000_000)

    def next_id(self) -> Tuple[str, int]:
        now = self._now()
        self._last = now if now > self._last else self._last + 1
        return f"{self._last}{self._suffix}", self._last

    def key_of(self, text: Optional[str]) -> Optional[int]:
        digits = self.TAG_DIGITS
        if (not text or len(text) <= digits or len(text) > digits + 20 or not text.isascii()
                or not text.isdigit() or text[0] == "0" or text[-digits:] != self._suffix):
            return None
        return int(text[:-digits])

    @property
    def last_key(self) -> int:
        return self._last

    @property
    def last_text(self) -> str:
        return f"{self._last}{self._suffix}"


def event_body(event_id: str, data: str, event: Optional[str] = None, retry: Optional[int] = None) -> bytes:
    """The event as the WHATWG stream format wants it: every line of ``data``
    on its own ``data:`` line, so a line break can never end the event early
    or inject a field."""
    if event is None and retry is None and "\n" not in data and "\r" not in data:
        # Most events are one line with an id: one formatting step, not six
        # (this runs once per published message).
        return b"id: %s\ndata: %s\n\n" % (str(event_id).encode(), data.encode("utf-8", "surrogateescape"))
    parts = []
    if event:
        parts.append(f"event: {event}\n")
    if retry is not None:
        parts.append(f"retry: {retry}\n")
    parts.append(f"id: {event_id}\n")
    for line in _LINE_BREAK.split(data):
        parts.append(f"data: {line}\n")
    parts.append("\n")
    return "".join(parts).encode("utf-8", "surrogateescape")


def chunk(body: bytes) -> bytes:
    """One HTTP/1.1 chunk holding ``body``."""
    return b"%x\r\n%s\r\n" % (len(body), body)


def encode_event(event_id: str, data: str, event: Optional[str] = None, retry: Optional[int] = None) -> bytes:
    return chunk(event_body(event_id, data, event, retry))


def comment_chunk(text: str = "") -> bytes:
    """A comment line: browsers ignore it, proxies see traffic."""
    return chunk(f": {text}\n\n".encode())
