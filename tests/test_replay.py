"""delivery.Replayer with bytes only: a resume is spread over loop passes,
live events wait behind it, and nothing is doubled, lost or reordered."""

from pyhasses import delivery
from pyhasses.history import History
from pyhasses.hub import Hub, parse_target
from pyhasses.outbox import Outbox
from pyhasses.sse import EventIds, encode_event


class Loop:
    """The two calls the replayer makes on the reactor, run by hand."""

    def __init__(self):
        self.soon, self.later = [], []

    def call_soon(self, callback, *args):
        self.soon.append((callback, args))

    def call_later(self, delay, callback, *args):
        self.later.append((callback, args))

    def fail(self, handler, exc):
        raise exc

    def run_pass(self):
        due, self.later = self.later, []
        for callback, args in due:
            callback(*args)
        while self.soon:
            batch, self.soon = self.soon, []
            for callback, args in batch:
                callback(*args)


class Stream:
    """A stream as the hub and the replayer see it; ``deliver`` holds live
    events back while a replay runs, as connections.SseClient does."""

    def __init__(self, limit=1 << 20):
        self.tokens, self.everything, self.uniq_id, self.established = (), False, "", False
        self.messages = 0
        self.outbox = Outbox(limit)
        self.replay = None
        self.closed = self.closing = False

    def deliver(self, data):
        if self.replay is not None:
            self.replay.hold(data)
            return
        self.outbox.append(data)
        self.messages += 1

    def write(self, data):
        self.outbox.append(data)

    def sent(self):
        return b"".join(self.outbox.take_head())


class Daemon:
    def __init__(self, history_count=100_000):
        self.loop, self.hub, self.ids = Loop(), Hub(), EventIds(7)
        self.history = History(history_count, 1 << 30, 3600)
        self.replayer = delivery.Replayer(self.loop, self.history, self.hub, self.ids)

    def publish(self, token, text):
        event_id, key = self.ids.next_id()
        data = encode_event(event_id, text)
        targets = [parse_target(token, 128)]
        self.hub.publish(targets, data)
        self.history.record(key, event_id, targets, data)
        return event_id

    def stream(self, token):
        s = Stream()
        self.hub.connected(s)
        self.hub.subscribe(s, [token], "")
        return s


def datas(raw: bytes) -> list:
    return [line[6:].decode() for line in raw.split(b"\n") if line.startswith(b"data: ")]


def test_a_long_backlog_takes_several_passes_and_live_events_wait_behind_it():
    d = Daemon()
    first = d.publish("t", "first")
    for n in range(3 * delivery.REPLAY_BUDGET):
        d.publish("t", f"#{n}")
        d.publish("other", "not for it")
    s = d.stream("t")
    d.replayer.start(s, first)
    passes = 0
    while s.replay is not None:
        d.publish("t", f"live{passes}")  # published while it catches up
        d.loop.run_pass()
        passes += 1
    assert passes >= 6  # 12,288 held events, 2,048 looked at per pass
    got = datas(s.sent())
    assert got == [f"#{n}" for n in range(3 * delivery.REPLAY_BUDGET)] + [f"live{p}" for p in range(passes)]
    assert d.hub.counters.replayed == 3 * delivery.REPLAY_BUDGET


def test_the_budget_is_shared_by_every_resume_of_a_pass():
    d = Daemon()
    first = d.publish("t", "first")
    for n in range(1000):
        d.publish("t", f"#{n}")
    streams = [d.stream("x") for _ in range(10)]  # nothing held is for them
    for s in streams:
        d.replayer.start(s, first)
    d.loop.run_pass()
    done = sum(s.replay is None for s in streams)
    assert done == 2 and len(d.replayer) == 8  # 2,048 events looked at: two resumes of 1,000
    for _ in range(5):
        d.loop.run_pass()
    assert len(d.replayer) == 0 and all(s.replay is None for s in streams)


def test_events_let_go_during_the_replay_are_reported_by_a_reset():
    d = Daemon(history_count=3000)
    first = d.publish("t", "first")
    for n in range(2500):
        d.publish("t", f"#{n}")
    s = d.stream("t")
    d.replayer.start(s, first)
    d.loop.run_pass()  # 2,048 looked at
    for n in range(3000):  # pushes the rest out of the history before the replay gets there
        d.publish("other", "x")
    d.loop.run_pass()
    raw = s.sent()
    assert b"event: reset" in raw and b'"reason":"dropped"' in raw
    got = datas(raw)
    assert '"reason":"dropped"' in got[0]  # first, as for a trimmed backlog
    assert got[1:] == [f"#{n}" for n in range(2048)]  # what was found before they left


def test_a_reinitialised_stream_drops_its_backlog_but_not_its_live_events():
    d = Daemon()
    first = d.publish("t", "first")
    for n in range(5000):
        d.publish("t", f"#{n}")
    s = d.stream("t")
    d.replayer.start(s, first)
    d.publish("t", "live")
    s.replay.stop()  # what SseClient does on re-init
    d.loop.run_pass()
    assert datas(s.sent()) == ["live"]


def test_live_traffic_that_outruns_the_replay_ends_it_with_a_reset():
    d = Daemon()
    first = d.publish("t", "first")
    for n in range(5000):
        d.publish("t", f"#{n}")
    s = d.stream("t")
    s.outbox.limit = 64 * 1024
    d.replayer.start(s, first)
    big = "b" * 10_000
    for _ in range(7):
        d.publish("t", big)
    assert s.replay is None  # given up: the live events did not fit behind it
    raw = s.sent()
    assert b"event: reset" in raw
    assert datas(raw).count(big) == 7


class ClusterLikeIds:
    """Ids as a cluster node has them: keys are the ids, and another node
    may have given out ids this node has not read yet."""

    def __init__(self):
        self.last_key = 0

    @property
    def last_text(self):
        return str(self.last_key)

    def key_of(self, text):
        return int(text) if text and text.isdigit() else None

    def next_id(self):
        self.last_key += 1
        return str(self.last_key), self.last_key


def lagging_node():
    d = Daemon()
    d.ids = d.replayer.ids = ClusterLikeIds()
    d.replayer.ahead_wait = 3.0
    timers = []
    loop = d.loop
    loop.call_later = lambda delay, cb, *args: (timers.append((cb, args)) if delay else loop.later.append((cb, args)))
    return d, timers


def test_a_resume_ahead_of_this_node_waits_then_gets_exactly_what_follows_the_id():
    d, timers = lagging_node()
    d.publish("t", "one")
    d.publish("t", "two")
    s = d.stream("t")
    assert d.replayer.start(s, "4").kind == delivery.AHEAD  # 3 and 4 not read here yet
    d.loop.run_pass()
    assert s.sent() == b"" and len(timers) == 1
    d.publish("t", "three")  # this node reads on: not yet at the id
    d.replayer.caught_up()
    d.loop.run_pass()
    assert s.sent() == b"" and d.replayer.waiting
    d.publish("t", "four")
    d.publish("t", "five")
    d.replayer.caught_up()  # past the id now: what follows it, from the history
    d.publish("t", "six")  # live, behind the catch-up
    d.loop.run_pass()
    assert s.sent() == encode_event("5", "five") + encode_event("6", "six")
    cb, args = timers.pop()
    cb(*args)  # the time limit passes after the wait ended: nothing happens
    d.publish("t", "seven")
    assert s.sent() == encode_event("7", "seven") and d.hub.counters.resets == 0


def test_a_resume_ahead_of_this_node_that_is_not_reached_in_time_gets_a_reset():
    d, timers = lagging_node()
    d.publish("t", "one")
    s = d.stream("t")
    d.replayer.start(s, "9")
    d.publish("t", "two")  # dropped while waiting: the reset below says reload
    cb, args = timers.pop()
    cb(*args)
    sent = s.sent()
    assert sent.startswith(delivery.reset_event(d.history.oldest, "unknown-id", event_id="2"))
    assert s.replay is None and not d.replayer.waiting and d.hub.counters.resets == 1
    d.publish("t", "three")
    assert s.sent() == encode_event("3", "three")
