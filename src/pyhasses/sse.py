"""Server-Sent Events encoding: one message into the bytes of one HTTP chunk,
and the event ids.

Owns: the ``text/event-stream`` field syntax, chunk framing, id generation.
Must not touch: sockets, recipients.  The fan-out calls ``encode_event`` once
per message and hands the same bytes to every recipient.
"""

from __future__ import annotations

import re
import time
from typing import Optional

#: Ends the chunked body: sent to every stream when the daemon stops.
LAST_CHUNK = b"0\r\n\r\n"

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class EventIds:
    """Unique, strictly increasing ids, also across a restart: microseconds
    since the epoch, bumped past the last one handed out (hasses used the
    second, which repeats)."""

    __slots__ = ("_last", "_clock")

    def __init__(self, clock=time.time):
        self._clock = clock
        self._last = 0

    def now(self) -> int:
        """The id the clock gives now (not handed out)."""
        return int(self._clock() * 1_000_000)

    def next(self) -> int:
        now = self.now()
        self._last = now if now > self._last else self._last + 1
        return self._last

    @property
    def last(self) -> int:
        return self._last


def event_body(event_id: int, data: str, event: Optional[str] = None, retry: Optional[int] = None) -> bytes:
    """The event as the WHATWG stream format wants it: every line of ``data``
    on its own ``data:`` line, so a line break can never end the event early
    or inject a field."""
    if event is None and retry is None and "\n" not in data and "\r" not in data:
        # Most events are one line with an id: one formatting step, not six
        # (this runs once per published message).
        return b"id: %d\ndata: %s\n\n" % (event_id, data.encode("utf-8", "surrogateescape"))
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


def encode_event(event_id: int, data: str, event: Optional[str] = None, retry: Optional[int] = None) -> bytes:
    return chunk(event_body(event_id, data, event, retry))


def comment_chunk(text: str = "") -> bytes:
    """A comment line: browsers ignore it, proxies see traffic."""
    return chunk(f": {text}\n\n".encode())
