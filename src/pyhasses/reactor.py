"""The event loop: an epoll registry ``fd -> handler``, a timer heap, a queue
of callbacks for the end of the pass, and signals through a wake-up socket.

Owns: descriptors' poll masks, when timers and callbacks run, signal
delivery.  Must not touch: HTTP, TLS, tokens, logs' contents.  A handler is
any object with ``on_events(mask)`` and ``on_failure(exc)``; the loop calls the
second when the first raises, so one connection's bug closes that connection
and never the loop.

One pass, in a fixed order: poll (no longer than the next timer), dispatch
the events, run the due timers, then the callbacks queued meanwhile (writes
coalesced during the pass are flushed there, once per connection).
"""

from __future__ import annotations

import heapq
import select
import signal
import socket
import time
from typing import Callable

READABLE = select.EPOLLIN
WRITABLE = select.EPOLLOUT
#: Reported whatever the mask: the handler decides what they mean.
ERROR = select.EPOLLERR | select.EPOLLHUP

_MAX_EVENTS = 1024


class Timer:
    """A scheduled call; ``cancel()`` only flags it, the heap drops it later."""

    __slots__ = ("when", "callback", "args", "cancelled")

    def __init__(self, when: float, callback: Callable, args: tuple):
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        self.callback = None
        self.args = ()

    def __lt__(self, other: "Timer") -> bool:
        return self.when < other.when


class Reactor:
    def __init__(self, on_error: Callable[[str, BaseException], None]):
        """``on_error(text, exc)`` reports a handler's exception that no
        ``on_failure`` took care of."""
        self._epoll = select.epoll()
        self._handlers: dict = {}
        self._masks: dict = {}
        self._timers: list = []
        self._cancelled_timers = 0
        self._soon: list = []
        self._signal_handlers: dict = {}
        self._signal_r = None
        self._signal_w = None
        self._running = False
        self._on_error = on_error
        self.passes = 0  # loop passes so far: what "this pass" means to a per-pass budget
        # Descriptors whose input should not wait for a long sweep of sends
        # (publishers): a second epoll, asked without blocking by
        # ``input_waiting``.
        self._priority = select.epoll()
        self._priority_fds: set = set()

    # -- descriptors --------------------------------------------------------
    def register(self, fd: int, handler, mask: int = READABLE) -> None:
        """A handler with a true ``priority_input`` attribute is also
        reported by ``input_waiting`` while it has input."""
        self._epoll.register(fd, mask)
        self._handlers[fd] = handler
        self._masks[fd] = mask
        if getattr(handler, "priority_input", False):
            self._priority.register(fd, READABLE)
            self._priority_fds.add(fd)

    def input_waiting(self) -> bool:
        """Has a priority descriptor input (or an error) to read now?"""
        return bool(self._priority_fds) and bool(self._priority.poll(0, 1))

    def modify(self, fd: int, mask: int) -> None:
        """Change the mask; a no-op when it is already that (epoll_ctl is a syscall)."""
        if self._masks.get(fd, mask) != mask:
            self._epoll.modify(fd, mask)
            self._masks[fd] = mask
            if fd in self._priority_fds:
                self._priority.modify(fd, mask & READABLE)

    def unregister(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is not None:
            del self._masks[fd]
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass
            if fd in self._priority_fds:
                self._priority_fds.discard(fd)
                try:
                    self._priority.unregister(fd)
                except (OSError, ValueError):
                    pass

    # -- time ---------------------------------------------------------------
    def call_later(self, delay: float, callback: Callable, *args) -> Timer:
        timer = Timer(time.monotonic() + delay, callback, args)
        heapq.heappush(self._timers, timer)
        return timer

    def cancel(self, timer: Timer) -> None:
        """Flag a timer; sweep the heap when most of it is dead weight."""
        if timer is not None and not timer.cancelled:
            timer.cancel()
            self._cancelled_timers += 1
            if self._cancelled_timers > 512 and self._cancelled_timers * 2 >= len(self._timers):
                self._timers = [t for t in self._timers if not t.cancelled]
                heapq.heapify(self._timers)
                self._cancelled_timers = 0

    def call_soon(self, callback: Callable, *args) -> None:
        """Run at the end of this pass, after every event of the pass."""
        self._soon.append((callback, args))

    # -- signals ------------------------------------------------------------
    def add_signal_handler(self, signum: int, callback: Callable[[int], None]) -> None:
        """Python's handler does nothing; the number arrives on a socket and
        the loop runs ``callback`` between two passes, never inside a write."""
        if self._signal_r is None:
            self._signal_r, self._signal_w = socket.socketpair()
            self._signal_r.setblocking(False)
            self._signal_w.setblocking(False)
            signal.set_wakeup_fd(self._signal_w.fileno(), warn_on_full_buffer=False)
            self.register(self._signal_r.fileno(), _SignalPipe(self))
        self._signal_handlers[signum] = callback
        signal.signal(signum, _ignore_signal)

    def _deliver_signals(self) -> None:
        try:
            data = self._signal_r.recv(256)
        except (BlockingIOError, InterruptedError):
            return
        for signum in data:
            callback = self._signal_handlers.get(signum)
            if callback is not None:
                self._guarded(callback, signum)

    # -- the loop -----------------------------------------------------------
    def stop(self) -> None:
        self._running = False

    def run(self) -> None:
        self._running = True
        while self._running:
            self.run_once()

    def run_once(self) -> None:
        self.passes += 1
        events = self._epoll.poll(self._poll_timeout(), _MAX_EVENTS)
        handlers = self._handlers
        for fd, mask in events:
            handler = handlers.get(fd)
            if handler is None:
                continue  # closed earlier in this pass
            try:
                handler.on_events(mask)
            except Exception as exc:  # one connection's fault, not the loop's
                self._fail(handler, exc)
        self._run_timers()
        self._run_soon()

    def _poll_timeout(self) -> float:
        if self._soon:
            return 0
        while self._timers and self._timers[0].cancelled:
            heapq.heappop(self._timers)
            self._cancelled_timers -= 1
        if not self._timers:
            return -1
        return max(0.0, self._timers[0].when - time.monotonic())

    def _run_timers(self) -> None:
        now = time.monotonic()
        due = []
        while self._timers and self._timers[0].when <= now:
            timer = heapq.heappop(self._timers)
            if timer.cancelled:
                self._cancelled_timers -= 1
            else:
                due.append(timer)
        for timer in due:  # popped first, so a timer set now waits a pass
            if not timer.cancelled:
                callback, args = timer.callback, timer.args
                timer.cancel()
                self._guarded(callback, *args)

    def _run_soon(self) -> None:
        while self._soon:
            batch, self._soon = self._soon, []
            for callback, args in batch:
                self._guarded(callback, *args)

    def _guarded(self, callback: Callable, *args) -> None:
        try:
            callback(*args)
        except Exception as exc:
            owner = getattr(callback, "__self__", None)
            self._fail(owner, exc)

    def fail(self, handler, exc: Exception) -> None:
        """``handler`` raised in code run for it outside the loop's own
        dispatch (a flush queue, say): close that handler, not the loop."""
        self._fail(handler, exc)

    def _fail(self, handler, exc: Exception) -> None:
        on_failure = getattr(handler, "on_failure", None)
        if on_failure is None:
            self._on_error(f"error in {callback_name(handler)}: {exc!r}", exc)
            return
        try:
            on_failure(exc)
        except Exception as exc2:
            self._on_error(f"error while closing after {exc!r}: {exc2!r}", exc2)

    def close(self) -> None:
        if self._signal_r is not None:
            signal.set_wakeup_fd(-1)
            self._signal_r.close()
            self._signal_w.close()
        self._epoll.close()
        self._priority.close()


class _SignalPipe:
    def __init__(self, reactor: Reactor):
        self._reactor = reactor

    def on_events(self, mask: int) -> None:
        self._reactor._deliver_signals()


def _ignore_signal(signum, frame) -> None:
    """The wake-up socket carries the signal; nothing may run here."""


def callback_name(obj) -> str:
    return type(obj).__name__ if obj is not None else "callback"


def raise_nofile_limit() -> None:
    """Many browsers need many descriptors: take the hard limit as soft."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass

