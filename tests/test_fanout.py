"""The fan-out's batching (issue 6): events of one control read joined per
run of targets (Hub.hold), streams flushed a slice per loop pass
(flushqueue), acknowledgements after the first slice.  Whatever the batching,
every stream gets every event, once, whole and in order, with its own id."""

import json
import socket
import time

from pyhasses import flushqueue
from pyhasses.flushqueue import FlushQueue
from pyhasses.hub import Hub, parse_target
from support import id_key, parse_event, subscribed


def test_held_events_are_joined_per_run_of_targets_in_publishing_order():
    hub = Hub()
    a, b = subscribed(hub, "a", ["room1"]), subscribed(hub, "b", ["room2"])
    room1, room2 = [parse_target("room1", 128)], [parse_target("room2", 128)]
    hub.hold()
    assert hub.publish(room1, b"1") == 1
    assert hub.publish(room1, b"2") == 1
    assert hub.publish(room2, b"x") == 1
    assert hub.publish(room1, b"3") == 1
    assert a.got == [] and b.got == []  # nothing leaves before release
    hub.release()
    assert a.got == [b"12", b"3"] and b.got == [b"x"]
    assert a.messages == 3 and b.messages == 1  # events, not queue steps
    assert hub.counters.msgproccnt == 4 and hub.counters.msgsendcnt == 4
    hub.publish(room1, b"4")  # released: straight through again
    assert a.got[-1] == b"4"


def read_events(sock, n, timeout=20.0):
    """Undo the chunked framing of a raw stream until ``n`` events came."""
    buf, events = b"", []
    deadline = time.monotonic() + timeout
    while len(events) < n:
        while True:
            size_line, sep, rest = buf.partition(b"\r\n")
            if not sep:
                break
            size = int(size_line, 16)
            if len(rest) < size + 2:
                break
            event = parse_event(rest[:size])
            if "data" in event:  # not the retry hint, not a comment
                events.append(event)
            buf = rest[size + 2:]
        if len(events) >= n:
            break
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        data = sock.recv(65536)
        assert data, "stream closed"
        buf += data
    return events


def open_streams(d, count, token="all"):
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", d.port), timeout=10)
        s.sendall(f"GET /sse?subscribe={token} HTTP/1.1\r\nConnection: keep-alive\r\n\r\n".encode())
        socks.append(s)
    for s in socks:
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(1)
        assert head.startswith(b"HTTP/1.1 200 OK")
    return socks


def test_acked_publishes_reach_every_stream_in_order_across_slices(daemon):
    # More streams than one slice flushes, so events published one by one
    # (each acknowledged at once) meet streams still waiting for the last.
    socks = open_streams(daemon, 700)
    try:
        daemon.wait_clients(700, timeout=20)
        with socket.create_connection(("127.0.0.1", daemon.cport), timeout=10) as pub:
            replies = pub.makefile("rb")
            for i in range(30):
                pub.sendall(json.dumps({"to": "all", "data": f"m{i}", "ack": True}).encode() + b"\n")
                reply = json.loads(replies.readline())
                assert reply["ok"] is True and reply["delivered"] == 700
        for s in socks:
            events = read_events(s, 30)
            assert [e["data"] for e in events] == [f"m{i}" for i in range(30)]
            ids = [id_key(e["id"]) for e in events]
            assert ids == sorted(set(ids))  # each event its own, increasing id
    finally:
        for s in socks:
            s.close()


def test_one_control_write_of_many_events_arrives_as_separate_events(daemon):
    socks = open_streams(daemon, 3)
    other = open_streams(daemon, 1, token="else")[0]
    try:
        daemon.wait_clients(4)
        lines = "".join(f"all=b{i}\n" for i in range(50)) + "else=e\n" + "all=last\n"
        daemon.control(lines)
        for s in socks:
            events = read_events(s, 51)
            assert [e["data"] for e in events] == [f"b{i}" for i in range(50)] + ["last"]
            ids = [id_key(e["id"]) for e in events]
            assert ids == sorted(set(ids))
        assert [e["data"] for e in read_events(other, 1)] == ["e"]
        status = daemon.control_json("tcpstatus")
        assert status["msgproccnt"] == 52 and status["msgsendcnt"] == 3 * 51 + 1
    finally:
        for s in socks + [other]:
            s.close()


class LoopStub:
    """The calls FlushQueue makes on the reactor, run by hand: a pass runs
    the timers set in earlier passes, then the callbacks queued for its end
    until there are none (as Reactor.run_once)."""

    def __init__(self):
        self.pending = []
        self.later = []
        self.input = False
        self.checks = 0

    def call_soon(self, callback, *args):
        self.pending.append((callback, args))

    def call_later(self, delay, callback, *args):
        self.later.append((callback, args))

    def input_waiting(self):
        self.checks += 1
        return self.input

    def fail(self, conn, exc):
        raise exc

    def run_pass(self):
        timers, self.later = self.later, []
        for callback, args in timers:
            callback(*args)
        while self.pending:
            batch, self.pending = self.pending, []
            for callback, args in batch:
                callback(*args)


class Conn:
    def __init__(self, i, flushed):
        self.i, self.flushed = i, flushed

    def flush(self):
        self.flushed.append(self.i)


def test_a_slice_ends_early_when_a_publisher_writes_and_keeps_the_order():
    loop, flushed, replies = LoopStub(), [], []
    queue = FlushQueue(loop)
    total = 20000
    for i in range(total):
        queue.add(Conn(i, flushed))
    queue.after_slice(lambda: replies.append(len(flushed)))
    loop.input = True  # a publisher wrote while the slice runs
    loop.run_pass()
    # The slice is a fifth of the queue; the first look comes after a
    # quarter of it, at a multiple of CHECK_EVERY.
    every = flushqueue.CHECK_EVERY
    first_look = -(-(total // 5 // 4) // every) * every
    assert every < first_look < total // 5
    assert flushed == list(range(first_look))
    assert replies == [first_look]  # the reply follows that slice
    loop.input = False
    while loop.pending or loop.later:
        loop.run_pass()
    assert flushed == list(range(total))  # nobody skipped, nobody twice, in order


def test_replies_wait_for_the_slice_that_follows_the_publish():
    loop, flushed, replies = LoopStub(), [], []
    queue = FlushQueue(loop)
    queue.after_slice(lambda: replies.append("idle"))  # nothing to send: end of pass
    loop.run_pass()
    assert replies == ["idle"]
    for i in range(400):
        queue.add(Conn(i, flushed))
    queue.after_slice(lambda: replies.append(len(flushed)))
    loop.run_pass()
    assert replies == ["idle", flushqueue.MIN_SLICE]  # 400 // 5 < MIN_SLICE
    assert loop.checks == 0  # a slice under CHECK_EVERY never looks


def test_acknowledgement_follows_the_sends_of_a_small_fan_out(daemon):
    # Under one slice of recipients, "delivered: N" means every one of
    # them was handed its event before the reply left.
    socks = open_streams(daemon, 40)
    try:
        daemon.wait_clients(40)
        with socket.create_connection(("127.0.0.1", daemon.cport), timeout=10) as pub:
            replies = pub.makefile("rb")
            for i in range(5):
                pub.sendall(json.dumps({"to": "all", "data": f"m{i}", "ack": True}).encode() + b"\n")
                assert json.loads(replies.readline())["delivered"] == 40
                for s in socks:
                    s.setblocking(False)
                    got = s.recv(65536)  # already here: no wait
                    s.setblocking(True)
                    assert f"data: m{i}".encode() in got
    finally:
        for s in socks:
            s.close()
