"""Server-Sent Events encoding: one message into the bytes of one HTTP chunk,
and the event ids.

Owns: the ``text/event-stream`` field syntax, chunk framing, id generation.
Must not touch: sockets, recipients.  The fan-out calls ``encode_event`` once
per message and hands the same bytes to every recipient.
"""

from __future__ import annotations

import os
import re
from typing import Optional, Tuple

#: Ends the chunked body: sent to every stream when the daemon stops.
LAST_CHUNK = b"0\r\n\r\n"

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class EventIds:
    """The ids of this run: ``<epoch>-<n>``, where the epoch is drawn at
    random when the daemon starts and ``n`` counts from 1.

    An id handed out by an earlier run (or another daemon) never matches an
    event of this run, whatever the clock did in between (hasses used the
    second, which repeats; a time-based id repeats when the clock is
    stepped back or frozen), and within a run ids only grow.  The text is
    short and safe in an SSE ``id:`` field and in JSON.

    The interface is what history and resume use, so that a cluster can
    replace this object with one whose ids come from elsewhere: ``next_id()``
    gives the text and a comparable key, ``key_of(text)`` turns a
    Last-Event-ID back into a key (None: not an id of this run), and
    ``last_key`` / ``last_text`` name the newest id handed out (before the
    first, the run's start: ``<epoch>-0``, which misses nothing of the run).
    """

    __slots__ = ("epoch", "_prefix", "_last")

    def __init__(self, epoch: Optional[str] = None):
        self.epoch = epoch or _random_epoch()
        self._prefix = self.epoch + "-"
        self._last = 0

    def next_id(self) -> Tuple[str, int]:
        self._last += 1
        return f"{self._prefix}{self._last}", self._last

    def key_of(self, text: Optional[str]) -> Optional[int]:
        if not text or not text.startswith(self._prefix):
            return None
        n = text[len(self._prefix):]
        if not (n.isascii() and n.isdigit()) or len(n) > 19 or (n[0] == "0" and n != "0"):
            return None
        return int(n)

    @property
    def last_key(self) -> int:
        return self._last

    @property
    def last_text(self) -> str:
        return f"{self._prefix}{self._last}"


def _random_epoch() -> str:
    """Eight base-36 characters from 41 random bits: two runs share one
    about once in two trillion starts."""
    n = int.from_bytes(os.urandom(6), "big") >> 7
    digits = []
    for _ in range(8):
        n, d = divmod(n, 36)
        digits.append("0123456789abcdefghijklmnopqrstuvwxyz"[d])
    return "".join(reversed(digits))


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
