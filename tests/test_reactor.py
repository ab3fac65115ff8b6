"""The loop: timers fire on time without socket events, a failing handler
closes only itself, call_soon runs after the pass, signals arrive."""

import os
import signal
import socket
import time

from pyhasses.reactor import READABLE, Reactor


def test_timer_fires_without_any_socket_event():
    r = Reactor(on_error=print)
    fired = []
    start = time.monotonic()
    r.call_later(0.2, lambda: (fired.append(time.monotonic() - start), r.stop()))
    r.run()
    assert 0.19 <= fired[0] < 1.0
    r.close()


def test_timers_run_in_order_and_cancel():
    r = Reactor(on_error=print)
    seen = []
    r.call_later(0.05, seen.append, 2)
    r.call_later(0.01, seen.append, 1)
    t = r.call_later(0.03, seen.append, "cancelled")
    r.cancel(t)
    r.call_later(0.1, r.stop)
    r.run()
    assert seen == [1, 2]
    r.close()


def test_many_cancelled_timers_are_swept():
    r = Reactor(on_error=print)
    timers = [r.call_later(100, lambda: None) for _ in range(2000)]
    for t in timers:
        r.cancel(t)
    assert len(r._timers) < 2000
    r.close()


class Boom:
    def __init__(self, sock):
        self.sock = sock
        self.failed = None

    def on_events(self, mask):
        self.sock.recv(10)
        raise RuntimeError("handler bug")

    def on_failure(self, exc):
        self.failed = exc


class Echo:
    def __init__(self, sock, reactor):
        self.sock = sock
        self.reactor = reactor
        self.got = b""

    def on_events(self, mask):
        self.got += self.sock.recv(10)
        self.reactor.stop()


def test_failing_handler_does_not_stop_loop():
    r = Reactor(on_error=print)
    a1, b1 = socket.socketpair()
    a2, b2 = socket.socketpair()
    boom = Boom(a1)
    echo = Echo(a2, r)
    r.register(a1.fileno(), boom, READABLE)
    r.register(a2.fileno(), echo, READABLE)
    b1.send(b"x")
    b2.send(b"y")
    r.call_later(2, r.stop)
    r.run()
    if not echo.got:
        r.run()
    assert isinstance(boom.failed, RuntimeError)
    assert echo.got == b"y"
    for s in (a1, b1, a2, b2):
        s.close()
    r.close()


class Recorder:
    def __init__(self, sock, name, order, reactor, soon=False):
        self.sock, self.name, self.order, self.reactor, self.soon = sock, name, order, reactor, soon

    def on_events(self, mask):
        self.sock.recv(10)
        self.order.append(self.name)
        if self.soon:
            self.reactor.call_soon(self.order.append, "soon")


def test_call_soon_runs_after_every_event_of_the_pass():
    r = Reactor(on_error=print)
    order = []
    pairs = [socket.socketpair() for _ in range(2)]
    for i, (a, b) in enumerate(pairs):
        r.register(a.fileno(), Recorder(a, f"h{i}", order, r, soon=True), READABLE)
        b.send(b"x")  # a socket pair's bytes are readable at once: both events in one pass
    r.run_once()
    assert sorted(order[:2]) == ["h0", "h1"] and order[2:] == ["soon", "soon"]
    for a, b in pairs:
        a.close(), b.close()
    r.close()


def test_signal_arrives_through_wakeup_socket():
    r = Reactor(on_error=print)
    got = []
    r.add_signal_handler(signal.SIGUSR1, lambda n: (got.append(n), r.stop()))
    r.call_later(0.05, os.kill, os.getpid(), signal.SIGUSR1)
    r.call_later(3, r.stop)
    r.run()
    assert got == [signal.SIGUSR1]
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    r.close()


def test_input_waiting_sees_only_priority_descriptors_that_are_read():
    r = Reactor(on_error=print)

    class Handler:
        def __init__(self, priority):
            self.priority_input = priority

        def on_events(self, mask):
            pass

    pub_a, pub_b = socket.socketpair()
    sse_a, sse_b = socket.socketpair()
    try:
        r.register(pub_a.fileno(), Handler(True), READABLE)
        r.register(sse_a.fileno(), Handler(False), READABLE)
        assert not r.input_waiting()
        sse_b.send(b"GET")  # a browser's bytes are not a publisher's
        assert not r.input_waiting()
        pub_b.send(b"room=x\n")
        assert r.input_waiting()
        r.modify(pub_a.fileno(), 0)  # not reading it now: not waiting either
        assert not r.input_waiting()
        r.modify(pub_a.fileno(), READABLE)
        assert r.input_waiting()
        r.unregister(pub_a.fileno())
        assert not r.input_waiting()
    finally:
        for s in (pub_a, pub_b, sse_a, sse_b):
            s.close()
        r.close()
