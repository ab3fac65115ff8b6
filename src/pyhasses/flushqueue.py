"""The order and the pace in which connections hand their queued bytes to
the kernel.

Owns: the queue of connections with bytes waiting, how many of them are
flushed in one loop pass, and when a publisher's replies may follow a
fan-out.  Must not touch: sockets (each connection's ``flush`` does the
sending), the bytes themselves, protocol rules.

A fan-out to 10,000 streams costs 10,000 sends; done in one go it would hold
the loop for the whole sweep, and messages published meanwhile would each
start a sweep of their own.  So only a slice of the connections waiting is
flushed per pass, in the order they asked; the rest wait for the next pass, which
reads new input first.  A message published meanwhile is appended to the
bytes still waiting for a connection and leaves in the same send: under load
the sends per message fall, and each stream still gets its events in order.

Publishers are not kept waiting by a slice: once a quarter of it is sent,
every ``CHECK_EVERY`` sends the slice asks the reactor whether a
publisher's input is waiting, and if so ends early so that the next pass
reads it.  (The quarter bounds what a publisher writing without pause
costs: each read is a Python step per recipient, and at most four of them
come per slice.)  A publisher's replies
(acknowledgements) leave after the slice that follows its messages
(``after_slice``): one that waits for each acknowledgement then publishes
about once per slice, and its messages still share sends.
"""

from __future__ import annotations

#: Connections flushed per loop pass: a fifth of those waiting, within
#: these bounds.  Each pass reads new input, and a message read delivers to
#: every recipient (a Python step each) before the sweep goes on: slices of
#: about N/5 balance that cost against the wait for the next read (measured
#: with bench/, N = 1,000 to 10,000), and the upper bound keeps a pass under
#: ~100 ms of sends however many streams there are.
MIN_SLICE = 128
MAX_SLICE = 8192
#: Sends between two looks for publishers' input (one epoll_wait each).
CHECK_EVERY = 256


class FlushQueue:
    __slots__ = ("_reactor", "_waiting", "_scheduled", "_after")

    def __init__(self, reactor):
        self._reactor = reactor
        self._waiting: list = []
        self._scheduled = False
        self._after: list = []

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, conn) -> None:
        """``conn.flush()`` will run at the end of this pass, or of a later
        one when many are waiting."""
        self._waiting.append(conn)
        if not self._scheduled:
            self._scheduled = True
            self._reactor.call_soon(self._run)

    def after_slice(self, callback) -> None:
        """Run ``callback`` once the slice of sends that starts this pass is
        done; at the end of this pass when nothing waits to be sent."""
        if self._scheduled:
            self._after.append(callback)
        else:
            self._reactor.call_soon(callback)

    def _run(self) -> None:
        waiting = self._waiting
        size = min(MAX_SLICE, max(MIN_SLICE, len(waiting) // 5))
        if len(waiting) <= size:
            batch, self._waiting = waiting, []
        else:
            batch, self._waiting = waiting[:size], waiting[size:]
        input_waiting = self._reactor.input_waiting
        first_look = max(CHECK_EVERY, len(batch) // 4)
        done = 0
        for conn in batch:
            try:
                conn.flush()
            except Exception as exc:  # that connection's fault only
                self._reactor.fail(conn, exc)
            done += 1
            if not done % CHECK_EVERY and first_look <= done < len(batch) and input_waiting():
                self._waiting[:0] = batch[done:]  # first in the next slice
                break
        for callback in self._after:
            self._reactor.call_soon(callback)  # still this pass, after the slice
        self._after.clear()
        if self._waiting:
            self._reactor.call_later(0, self._run)  # the next pass, after its events
        else:
            self._scheduled = False
