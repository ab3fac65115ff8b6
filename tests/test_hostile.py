"""What one publisher or one client sends cannot hurt the others (issue 15):
memory follows the limits, the FIFO keeps writers apart, cheap requests
cannot stall the loop, every JSON publisher gets an answer, and ids of two
runs never meet.  Real daemons, real sockets, a real FIFO."""

import json
import os
import resource
import socket
import threading
import time
from pathlib import Path

import pytest
from support import SseClient, control_exchange, id_key, wait_until

FAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def stream(d, subscribe, last_id=None) -> SseClient:
    client = SseClient("127.0.0.1", d.port)
    head = f"GET {d.murl}?subscribe={subscribe} HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive\r\n"
    if last_id is not None:
        head += f"Last-Event-ID: {last_id}\r\n"
    client.request(head + "\r\n")
    client.read_handshake()
    return client


def ack(d, obj) -> dict:
    return json.loads(d.control(json.dumps({**obj, "ack": True}) + "\n"))


def send_all(cport, payload: bytes, timeout=60.0) -> bytes:
    """Send a large control input while reading the replies (so that
    neither side waits on the other), then half-close and read the rest."""
    with socket.create_connection(("127.0.0.1", cport), timeout=timeout) as s:
        got = []
        reader = threading.Thread(target=lambda: got.append(_read_all(s, timeout)), daemon=True)
        reader.start()
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        reader.join(timeout)
        return got[0] if got else b""


def _read_all(sock, timeout) -> bytes:
    out = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = sock.recv(1 << 20)
        except OSError:
            break
        if not data:
            break
        out += data
    return bytes(out)


# -- 1. memory follows the limits ---------------------------------------------

def test_long_exclusion_ids_are_refused_and_memory_stays_flat(daemon_factory):
    """Today 300 messages ``x-<1 MB id>=m`` grow the daemon by 600 MiB."""
    d = daemon_factory("--heartbeat", "0")
    before = rss_kib(d.pid)
    big_id = "u" * (1024 * 1024)
    send_all(d.cport, "".join(f"x-{big_id}{n}=m\n" for n in range(100)).encode())
    reply = ack(d, {"to": "x", "data": "m", "except": "v" * 129})
    assert reply["ok"] is False and "longer than 128" in reply["error"]
    status = d.control_json("tcpstatus")
    assert status["msgproccnt"] == 0 and status["historysize"] == 0
    grown = rss_kib(d.pid) - before
    assert grown < 40 * 1024, f"daemon grew by {grown} KiB"
    d.wait_log(r"id after '-' longer than 128 characters")


def test_too_many_exclusion_ids_are_refused_with_a_reason(daemon_factory):
    """Today 20 JSON messages with 150,000 ``except`` ids each add 344 MiB."""
    d = daemon_factory("--heartbeat", "0")
    before = rss_kib(d.pid)
    excepts = [f"id{n}" for n in range(150_000)]
    lines = "".join(json.dumps({"to": "x", "data": "m", "except": excepts, "ack": True}) + "\n" for _ in range(10))
    replies = [json.loads(line) for line in send_all(d.cport, lines.encode()).splitlines()]
    assert len(replies) == 10
    assert all(r["ok"] is False and "--max-except" in r["error"] for r in replies), replies[0]
    assert ack(d, {"to": "x", "data": "m", "except": excepts[:256]})["ok"] is True
    grown = rss_kib(d.pid) - before
    assert grown < 48 * 1024, f"daemon grew by {grown} KiB"


def test_max_except_is_an_option(daemon_factory):
    d = daemon_factory("--max-except", "2")
    assert ack(d, {"to": "x", "data": "m", "except": ["a", "b"]})["ok"] is True
    reply = ack(d, {"to": "x", "data": "m", "except": ["a", "b", "c"]})
    assert reply == {"ok": False, "error": '"except" holds 3 ids, more than 2 (--max-except)'}


def test_a_huge_address_list_is_refused_and_other_streams_are_not_held_up(daemon_factory):
    """A careless publisher's 100,000-address list took the loop ~0.7 s to
    read, and every stream waited.  Now it is refused with a reason, and a
    message published right after it reaches its stream at once."""
    d = daemon_factory("--heartbeat", "0")
    client = d.sse("room1")
    big = json.dumps({"to": [f"user{n}" for n in range(100_000)], "data": "m", "ack": True})
    with socket.create_connection(("127.0.0.1", d.cport), timeout=10) as s:
        s.sendall(big.encode() + b'\n{"to": "room1", "data": "next", "ack": true}\n')
        s.shutdown(socket.SHUT_WR)
        sent = time.monotonic()
        assert client.read_event(2)["data"] == "next"
        waited = time.monotonic() - sent
        replies = [json.loads(line) for line in _read_all(s, 5).splitlines()]
    assert replies[0] == {"ok": False, "error": '"to" holds 100000 addresses, more than 4096 (--max-targets)'}
    assert replies[1]["ok"] is True and replies[1]["delivered"] == 1
    assert waited < 0.5, f"the next message waited {waited:.2f} s"
    d.wait_log(r"more than 4096 \(--max-targets\)")


def test_copies_of_a_prefix_cost_one_lookup_and_other_streams_are_not_held_up(daemon_factory):
    """4,000 copies of ``room*`` (or ``room*-uN`` variants) to 6,400 matching
    tokens scanned them 4,000 times: seconds while every stream waited."""
    d = daemon_factory("--heartbeat", "0")
    held = [d.sse("-".join(f"room{n}x{k}" for k in range(64))) for n in range(100)]
    watcher = d.sse("lat")
    d.wait_clients(101)
    for copies in (["room*"] * 4000, [f"room*-u{n}" for n in range(4000)]):
        with socket.create_connection(("127.0.0.1", d.cport), timeout=10) as s:
            s.sendall(json.dumps({"to": copies, "data": "wide", "ack": True}).encode() + b"\nlat=ping\n")
            s.shutdown(socket.SHUT_WR)
            sent = time.monotonic()
            assert watcher.read_event(10)["data"] == "ping"
            waited = time.monotonic() - sent
            assert json.loads(_read_all(s, 5).splitlines()[0])["delivered"] == 100
        assert waited < 0.5, f"the next message waited {waited:.2f} s"
    assert all(c.read_events(2)[1]["data"] == "wide" for c in held)


def test_max_targets_is_an_option(daemon_factory):
    d = daemon_factory("--max-targets", "2")
    assert ack(d, {"to": ["a", "b"], "data": "m"})["ok"] is True
    assert ack(d, {"to": ["a", "b", "c"], "data": "m"}) == {
        "ok": False, "error": '"to" holds 3 addresses, more than 2 (--max-targets)'}


def test_held_exclusion_lists_count_against_history_bytes(daemon_factory):
    """Events within every limit, each addressed with 256 long exclusion
    ids: the history's byte figure counts them, and so does the daemon's
    memory, which stays near --history-bytes."""
    d = daemon_factory("--history-bytes", "4M", "--heartbeat", "0")
    before = rss_kib(d.pid)
    batch = "".join(
        json.dumps({"to": f"room{n % 50}", "data": "short",
                    "except": [f"{n:05d}{'u' * 120}{k:03d}" for k in range(256)]}) + "\n"
        for n in range(1000))
    send_all(d.cport, batch.encode())
    status = d.control_json("tcpstatus")
    assert status["msgproccnt"] == 1000
    assert status["historybytes"] <= 4 * 1024 * 1024
    # each held event is counted with its 256 ids of 128 characters
    assert status["historybytes"] >= status["historysize"] * 256 * 128
    assert status["historysize"] < 1000
    grown = rss_kib(d.pid) - before
    assert grown < 24 * 1024, f"daemon grew by {grown} KiB"


# -- 2. the FIFO keeps writers apart ----------------------------------------------

def fifo_write(path: str, data: bytes) -> None:
    """A publisher as PHP's file_put_contents is: open, one write, close."""
    fd = os.open(path, os.O_WRONLY)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def test_two_unterminated_fifo_writes_30_ms_apart_stay_two_events(daemon_factory):
    d = daemon_factory(fifo=True)
    a, b = stream(d, "fa"), stream(d, "fb")
    d.wait_clients(2)
    fifo_write(d.fifo, b"fa=secret-for-A")
    time.sleep(0.03)
    fifo_write(d.fifo, b"fb=hello-B")
    assert a.read_event()["data"] == "secret-for-A"
    assert b.read_event()["data"] == "hello-B"
    a.expect_nothing(0.3)


def test_one_large_fifo_write_arrives_whole(daemon_factory):
    """Larger than the pipe: the kernel hands it over in several reads."""
    d = daemon_factory(fifo=True)
    c = stream(d, "big")
    d.wait_clients(1)
    for size in (200_000, 200 * 1024):  # the second ends on a page boundary
        body = bytes(ord("a") + n % 26 for n in range(size - len("big=")))
        writer = threading.Thread(target=fifo_write, args=(d.fifo, b"big=" + body))
        writer.start()
        event = c.read_event(timeout=10)
        writer.join(10)
        assert event["data"] == body.decode()
    c.expect_nothing(0.3)


def test_terminated_fifo_writes_from_many_writers_all_arrive(daemon_factory):
    d = daemon_factory(fifo=True)
    c = stream(d, "t")
    d.wait_clients(1)
    writers = [threading.Thread(target=fifo_write, args=(d.fifo, f"t=w{n}-0;t=w{n}-1\n".encode()))
               for n in range(20)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(10)
    got = sorted(e["data"] for e in c.read_events(40, timeout=10))
    assert got == sorted(f"w{n}-{k}" for n in range(20) for k in range(2))


# -- 3. cheap requests cannot stall the loop -------------------------------------

class Pinger:
    """Publishes ``ping=N`` every 50 ms and times each one's arrival on a
    normal stream: the longest wait is what a flood cost everyone."""

    def __init__(self, d):
        self.d = d
        self.client = stream(d, "ping")
        self.sent: dict = {}
        self.got: dict = {}
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._publish, daemon=True),
                        threading.Thread(target=self._read, daemon=True)]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(10)

    def _publish(self):
        with socket.create_connection(("127.0.0.1", self.d.cport)) as ctl:
            n = 0
            while not self.stop.is_set():
                self.sent[n] = time.monotonic()
                ctl.sendall(f"ping={n}\n".encode())
                n += 1
                time.sleep(0.05)

    def _read(self):
        while not self.stop.is_set():
            try:
                event = self.client.read_event(timeout=1)
            except (TimeoutError, OSError):
                continue
            self.got[int(event["data"])] = time.monotonic()

    def worst(self) -> float:
        answered = [n for n in self.sent if n in self.got]
        assert len(answered) > 10, (len(self.sent), len(self.got))
        waits = [self.got[n] - self.sent[n] for n in answered]
        # a ping still unanswered at the end waited at least this long
        late = [time.monotonic() - self.sent[n] for n in self.sent if n not in self.got]
        return max(waits + [w for w in late if w > 0.5])


def test_a_flood_of_resumes_does_not_stall_other_streams(daemon_factory):
    """500 streams resume from an old id while 10,000 events are held; each
    resume looks at every held event (none is for them)."""
    d = daemon_factory("--heartbeat", "0")
    first = ack(d, {"to": "t", "data": "first"})["id"]
    send_all(d.cport, "".join(f"t=#{n}\n" for n in range(9_999)).encode())
    assert d.control_json("tcpstatus")["historysize"] == 10_000
    socks = [socket.create_connection(("127.0.0.1", d.port)) for _ in range(500)]
    request = f"GET /sse?subscribe=other HTTP/1.1\r\nConnection: keep-alive\r\nLast-Event-ID: {first}\r\n\r\n"
    try:
        wait_until(lambda: d.control_json("tcpstatus")["allconncli"] == 500, 20, what="500 connections")
        with Pinger(d) as pinger:
            time.sleep(0.3)
            for s in socks:  # all at once: the daemon reads them in the same pass
                s.sendall(request.encode())
            wait_until(lambda: d.control_json("tcpstatus")["sseconncli"] == 501, 20, what="501 streams")
            time.sleep(1.0)
        assert pinger.worst() < 0.5, pinger.worst()
        # the resumed streams are live ones now
        d.control("other=after\n")
        for s in socks[:5]:
            s.settimeout(5)
            wait_until(lambda s=s: b"data: after" in s.recv(65536, socket.MSG_PEEK), 5, what="the live event")
    finally:
        for s in socks:
            s.close()


def test_a_resume_with_a_long_backlog_gets_it_whole_and_in_order(daemon_factory):
    """Replayed over several loop passes; live events published meanwhile
    come after it, none doubled or lost."""
    d = daemon_factory("--heartbeat", "0")
    first = ack(d, {"to": "t", "data": "first"})["id"]
    send_all(d.cport, "".join(f"t=#{n}\n" for n in range(6000)).encode())
    c = stream(d, "t", last_id=first)
    d.control("t=live\n")
    events = c.read_events(6001, timeout=20)
    assert [e["data"] for e in events] == [f"#{n}" for n in range(6000)] + ["live"]
    keys = [id_key(e["id"]) for e in events]
    assert keys == sorted(set(keys))
    assert d.control_json("tcpstatus")["replayed"] == 6000


def test_a_burst_of_status_commands_does_not_stall_2000_streams(daemon_factory):
    d = daemon_factory("--heartbeat", "0")
    socks = []
    try:
        for _ in range(2000):
            s = socket.create_connection(("127.0.0.1", d.port))
            s.sendall(b"GET /sse?subscribe=idle HTTP/1.1\r\nConnection: keep-alive\r\n\r\n")
            socks.append(s)
        wait_until(lambda: d.control_json("tcpstatus")["sseconncli"] == 2000, 30, what="2000 streams")
        with Pinger(d) as pinger:
            time.sleep(0.3)
            burst = b"tcpstatus\n" * (65536 // 10)
            replies = send_all(d.cport, burst)
            time.sleep(0.5)
        assert replies.count(b"\n") == 65536 // 10
        assert pinger.worst() < 0.5, pinger.worst()
    finally:
        for s in socks:
            s.close()


# -- 4. one request is one request ------------------------------------------------

@pytest.mark.parametrize("reinit", [True, False], ids=["ra", "no-ra"])
def test_a_get_with_a_second_request_in_its_body_never_reads_the_secret(daemon_factory, reinit):
    """The issue's exploit: a front proxy checks only the outer URL; the
    body's GET used to re-subscribe the stream to ``secret`` under -ra."""
    d = daemon_factory(*(["-ra"] if reinit else []))
    inner = (f"GET {d.murl}?subscribe=secret HTTP/1.1\r\nHost: localhost\r\n"
             "Connection: keep-alive\r\n\r\n").encode()
    outer = (f"GET {d.murl}?subscribe=public HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive\r\n"
             f"Content-Length: {len(inner)}\r\n\r\n").encode() + inner
    with socket.create_connection(("127.0.0.1", d.port), timeout=5) as s:
        s.sendall(outer)
        got = b""
        while b"\r\n\r\n" not in got:  # the answer's head
            data = s.recv(65536)
            if not data:
                break
            got += data
        assert got.startswith(b"HTTP/1.1 400 Bad Request\r\n"), got
        assert d.control_json("tcpsubscribedclients:secret")["subscribedclients"] == 0
        d.control("secret=leaked;public=leaked too\n")
        rest = b""
        while True:  # the daemon closes after its one answer
            data = s.recv(65536)
            if not data:
                break
            rest += data
    everything = got + rest
    assert everything.count(b"HTTP/1.1 ") == 1 and b"leaked" not in everything, everything
    assert d.control_json("tcpstatus")["msgsendcnt"] == 0
    assert d.alive()


# -- 5. every publisher gets an answer -------------------------------------------

@pytest.mark.parametrize("nested", [
    "[" * 100_000 + "]" * 100_000,
    '{"a":' * 100_000 + "1" + "}" * 100_000,
    "[" * 100_000,
], ids=["array", "object", "unclosed"])  # short ids: pytest puts the id in the environment of every child
def test_json_nested_100000_deep_gets_an_error_and_the_connection_goes_on(daemon_factory, nested):
    d = daemon_factory()
    c = stream(d, "t")
    d.wait_clients(1)
    part = '{"ack": true, "to": "t", "data": ' + nested + "}\n"
    good = json.dumps({"to": "t", "data": "after", "ack": True}) + "\n"
    with socket.create_connection(("127.0.0.1", d.cport), timeout=10) as s:
        s.sendall(part.encode())
        replies = s.makefile("rb")
        bad = json.loads(replies.readline())
        assert bad["ok"] is False and "nested too deeply" in bad["error"]
        s.sendall(good.encode())
        assert json.loads(replies.readline())["ok"] is True
    assert c.read_event()["data"] == "after"
    assert d.alive()


# -- 6. ids that never lie ---------------------------------------------------------

def test_an_id_of_another_run_gets_a_reset_then_all_of_this_run(daemon_factory):
    d = daemon_factory()
    mine = [ack(d, {"to": "t", "data": f"m{n}"})["id"] for n in range(3)]
    tag, n = id_key(mine[1])
    crafted = f"{n}{(int(tag) + 1) % 10 ** 9:09d}"  # the same microsecond, another run
    c = stream(d, "t", last_id=crafted)
    reset = c.read_event()
    assert reset["event"] == "reset" and json.loads(reset["data"])["reason"] == "unknown-id"
    assert "id" not in reset  # the replayed events carry this run's ids
    # It saw nothing of this run: it gets all of it, never a skip from the
    # middle, whatever event of this run the crafted id resembles.
    replayed = c.read_events(3)
    assert [e["data"] for e in replayed] == ["m0", "m1", "m2"]
    assert [e["id"] for e in replayed] == mine
    d.control("t=live\n")
    assert c.read_event()["data"] == "live"
    c.expect_nothing(0.3)


def test_the_start_of_a_run_misses_nothing_of_it(daemon_factory):
    d = daemon_factory()
    c = stream(d, "t", last_id="not-ours")
    reset = c.read_event()
    assert reset["event"] == "reset"
    c.close()
    one = ack(d, {"to": "t", "data": "one"})["id"]
    # the run's start: this run's tag, a microsecond before its first id
    assert id_key(reset["id"])[0] == id_key(one)[0] and id_key(reset["id"])[1] < id_key(one)[1]
    again = stream(d, "t", last_id=reset["id"])
    assert again.read_event()["data"] == "one"


@pytest.mark.skipif(not FAKETIME.exists(), reason="libfaketime not installed (scripts/deps.d/hostile.sh)")
@pytest.mark.parametrize("clocks", [("2026-01-01 00:00:00", "2026-01-01 00:00:00"),     # frozen
                                    ("@2026-01-01 00:00:30", "@2026-01-01 00:00:00")])  # stepped back 30 s
def test_after_a_restart_under_a_bad_clock_an_old_id_gets_a_reset(daemon_factory, clocks):
    def run(clock):
        return daemon_factory("--heartbeat", "0", env={"LD_PRELOAD": str(FAKETIME), "FAKETIME": clock,
                                                       "FAKETIME_DONT_FAKE_MONOTONIC": "1"})

    d1 = run(clocks[0])
    old = [ack(d1, {"to": "t", "data": f"old{n}"})["id"] for n in range(5)]
    assert d1.stop() == 0
    d2 = run(clocks[1])
    new = [ack(d2, {"to": "t", "data": f"new{n}"})["id"] for n in range(10)]
    c = stream(d2, "t", last_id=old[2])
    first = c.read_event()
    assert first.get("event") == "reset", first  # never a silent skip into this run's events
    # then all of this run, from its first event: none is taken for one already seen
    assert [e["data"] for e in c.read_events(10)] == [f"new{n}" for n in range(10)]
    d2.control("t=live\n")
    assert c.read_event()["data"] == "live"
    assert not set(old) & set(new)
    assert [id_key(i) for i in new] == sorted(id_key(i) for i in new)  # ids grow within a run


# -- 7. out of descriptors, new clients still get an answer ------------------------

def _first_answer(sock, deadline: float) -> bytes:
    """The answer's head (up to the empty line), or what came before a
    close or the deadline (time.monotonic)."""
    got = b""
    while b"\r\n\r\n" not in got:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except (socket.timeout, ConnectionResetError):
            break
        if not data:
            break
        got += data
    return got


def test_out_of_descriptors_every_client_gets_a_503_or_a_stream(daemon_factory):
    """Issue 15 point 7: with the descriptor limit reached, waiting clients
    used to sit in the backlog with no answer.  A reserve descriptor lets
    the daemon accept each, answer 503 with Retry-After and close."""
    d = daemon_factory("--heartbeat", "0")
    fds = [int(name) for name in os.listdir(f"/proc/{d.pid}/fd")]
    free = 6
    limit = max(len(fds) + free, max(fds) + 1)
    resource.prlimit(d.pid, resource.RLIMIT_NOFILE, (limit, limit))
    request = (f"GET {d.murl}?subscribe=t HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n").encode()
    clients = []
    try:
        for _ in range(60):  # ten times the free descriptors
            s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
            s.sendall(request)
            clients.append(s)
        deadline = time.monotonic() + 10  # none hangs: all answered within
        answers = [_first_answer(s, deadline) for s in clients]
        streams = [a for a in answers if a.startswith(b"HTTP/1.1 200 OK\r\n")]
        busy = [a for a in answers if a.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")]
        assert len(streams) + len(busy) == len(clients), [a[:40] for a in answers]
        assert streams and busy  # as many streams as descriptors were free, about
        assert all(b"\r\nRetry-After: " in a for a in busy)
        # Logged once per burst, not once per client: a burst ends when an
        # accept works again (a descriptor the daemon held, such as the
        # readiness probe's connection, may be freed meanwhile).
        log = d.log()
        bursts, ends = log.count("out of descriptors"), log.count("descriptors free again")
        assert bursts - ends in (0, 1) and bursts <= 3 < len(busy), log
        assert d.alive()
    finally:
        for s in clients:
            s.close()
    # descriptors free again: a new client gets a stream
    def streams_again():
        with socket.create_connection(("127.0.0.1", d.port), timeout=5) as s:
            s.sendall(request)
            return _first_answer(s, time.monotonic() + 5).startswith(b"HTTP/1.1 200 OK\r\n")

    wait_until(streams_again, 10, what="a stream once descriptors are free")
    d.wait_log("descriptors free again")
    c = stream(d, "t")
    d.control("t=back\n")
    assert c.read_event()["data"] == "back"
