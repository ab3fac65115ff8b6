"""The daemon's failures: the start-up error, and the report of internal
errors.

Owns: ``StartError`` (imported by service and daemonize, which no longer
import each other) and ``ErrorReport``, which writes an internal error's
traceback to the log, rate-limited per bug.  Must not touch: sockets, the
reactor, protocol rules.
"""

from __future__ import annotations

import time
import traceback
from typing import Callable, Optional


class StartError(Exception):
    """The daemon cannot start; the text says why, for stderr and the log."""


#: Tracebacks written for one bug (same exception type raised at the same
#: line) per window; past that its hits are only counted, and the count is
#: written when the window ends and the bug is met again.
TRACEBACKS_PER_WINDOW = 3
WINDOW = 60.0
#: Bugs remembered at once; an unbounded variety of them must not grow memory.
MAX_KINDS = 256


class ErrorReport:
    """``report(text, exc)``: log ``text`` with ``exc``'s traceback.

    One bug hit by every client (a fan-out to ten thousand streams, say)
    writes a few tracebacks and then one line a window saying how many more
    there were, not ten thousand tracebacks."""

    def __init__(self, write: Callable[[str], None], clock: Callable[[], float] = time.monotonic):
        self.write = write
        self.clock = clock
        self._kinds: dict = {}  # bug -> [window start, written, suppressed]

    def __call__(self, text: str, exc: Optional[BaseException] = None) -> None:
        if exc is None:
            self.write(text)
            return
        entry = self._entry(bug_of(exc))
        entry[1] += 1
        if entry[1] > TRACEBACKS_PER_WINDOW:
            entry[2] += 1
            return
        self.write(text)
        for line in "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).splitlines():
            self.write("  " + line)

    def _entry(self, bug) -> list:
        now = self.clock()
        entry = self._kinds.get(bug)
        if entry is not None and now - entry[0] < WINDOW:
            return entry
        if entry is not None and entry[2]:
            self.write(f"(the error above, {bug[0]} at {bug[1]}, happened {entry[2]} more time(s) "
                       f"in {WINDOW:g} s without its traceback)")
        if len(self._kinds) >= MAX_KINDS and bug not in self._kinds:
            self._kinds.clear()
        entry = self._kinds[bug] = [now, 0, 0]
        return entry


def bug_of(exc: BaseException) -> tuple:
    """What tells one bug from another: the exception's type and the line
    that raised it."""
    tb = exc.__traceback__
    where = "?"
    while tb is not None:
        where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"
        tb = tb.tb_next
    return (type(exc).__name__, where)
