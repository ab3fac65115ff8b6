"""Delivery over real sockets: resume, reset, heartbeats, retry hint, the
connection cap, drain, slow clients, tcpclientlist, tcpstatus and metrics."""

import json
import re
import signal
import socket
import threading
import time

import pytest
from support import SseClient, id_key, parse_event, raw_exchange, wait_until


def open_stream(d, subscribe, uniq=None, last_id=None, query_last_id=None, sock_setup=None,
                agent="delivery-test"):
    """A stream whose request may carry Last-Event-ID (header or query)."""
    query = f"subscribe={subscribe}" + (f"&id={uniq}" if uniq else "")
    if query_last_id is not None:
        query += f"&lastEventId={query_last_id}"
    head = f"GET {d.murl}?{query} HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive\r\nUser-Agent: {agent}\r\n"
    if last_id is not None:
        head += f"Last-Event-ID: {last_id}\r\n"
    client = SseClient.__new__(SseClient)
    client.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if sock_setup:
        sock_setup(client.sock)
    client.sock.settimeout(5)
    client.sock.connect(("127.0.0.1", d.port))
    client.buf = b""
    client.head = b""
    client.request(head + "\r\n")
    client.read_handshake()
    return client


def publish_ack(d, token, data):
    reply = d.control(json.dumps({"to": token, "data": data, "ack": True}) + "\n")
    return json.loads(reply)["id"]


def test_resume_gets_exactly_the_missed_events_for_its_token_then_live(daemon_factory):
    d = daemon_factory()
    first = open_stream(d, "mine-shared", uniq="u1")
    last_id = publish_ack(d, "mine", "before")
    assert first.read_event()["id"] == last_id
    first.close()
    d.wait_clients(0)
    # Missed while away: 10 for "mine", among messages for others, for a
    # prefix that reaches it, and for a prefix with its own id excepted.
    expected = []
    for i in range(10):
        d.control(f"other=o{i}\n")
        if i % 3 == 0:
            d.control(f"zz*=prefix-other{i}\n")
        expected.append(f"m{i}")
        if i % 2:
            d.control(f"mi*=m{i}\n")  # a prefix that reaches "mine"
        else:
            d.control(f"mine=m{i}\n")
        if i == 4:
            d.control("mine-u1=not for u1\n")  # excepted by uniq id
    again = open_stream(d, "mine", uniq="u1", last_id=last_id)
    got = again.read_events(10)
    assert [e["data"] for e in got] == expected
    ids = [id_key(e["id"]) for e in got]
    assert ids == sorted(ids) and ids[0] > id_key(last_id)
    d.control("mine=live")
    assert again.read_event()["data"] == "live"
    again.expect_nothing(0.3)
    status = d.control_json("tcpstatus")
    assert status["replayed"] == 10


def test_reconnecting_while_messages_keep_coming_loses_and_repeats_nothing(daemon_factory):
    d = daemon_factory("--heartbeat", "0")
    total = 400
    stop = threading.Event()

    def publish():
        with socket.create_connection(("127.0.0.1", d.cport)) as ctl:
            for i in range(total):
                if stop.is_set():
                    return
                ctl.sendall(f"t=#{i}\n".encode())
                time.sleep(0.002)

    seen = []
    c = d.sse("t")
    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    try:
        for _round in range(3):  # drop the stream twice in the middle
            for _ in range(60):
                event = c.read_event(timeout=10)
                seen.append((int(event["data"][1:]), event["id"]))
            c.close()
            time.sleep(0.05)
            c = open_stream(d, "t", last_id=seen[-1][1])
        while seen[-1][0] != total - 1:
            event = c.read_event(timeout=10)
            seen.append((int(event["data"][1:]), event["id"]))
    finally:
        stop.set()
        publisher.join(10)
    assert [n for n, _ in seen] == list(range(total))
    ids = [id_key(i) for _, i in seen]
    assert ids == sorted(set(ids))


def test_resume_with_the_query_parameter_and_no_duplicate_across_the_switch(daemon_factory):
    d = daemon_factory()
    ids = [publish_ack(d, "q", f"x{i}") for i in range(5)]
    c = open_stream(d, "q", query_last_id=ids[1])
    # Publish on the same control connection in one go: the replay and the
    # live events meet in the same moment.
    d.control("q=live1;q=live2;")
    events = c.read_events(5)
    assert [e["data"] for e in events] == ["x2", "x3", "x4", "live1", "live2"]
    assert len({e["id"] for e in events}) == 5
    c.expect_nothing(0.3)


def test_an_id_older_than_the_history_gets_a_reset_then_the_held_ones(daemon_factory):
    d = daemon_factory("--history-count", "3")
    old = publish_ack(d, "t", "gone1")
    publish_ack(d, "t", "gone2")
    kept = [publish_ack(d, "t", f"kept{i}") for i in range(3)]
    c = open_stream(d, "t", last_id=old)
    reset = c.read_event()
    assert reset["event"] == "reset" and "id" not in reset
    assert json.loads(reset["data"]) == {"oldest": kept[0], "reason": "too-old"}
    assert [e["data"] for e in c.read_events(3)] == ["kept0", "kept1", "kept2"]
    d.control("t=live")
    assert c.read_event()["data"] == "live"


def test_an_id_that_is_not_ours_gets_a_reset_then_only_live_events(daemon_factory):
    d = daemon_factory()
    held = [publish_ack(d, "t", f"h{i}") for i in range(3)]
    c = open_stream(d, "t", last_id="not-an-id")
    reset = c.read_event()
    assert reset["event"] == "reset"
    assert json.loads(reset["data"]) == {"oldest": held[0], "reason": "unknown-id"}
    assert reset["id"] == held[-1]  # the browser asks from the newest next time
    d.control("t=live")
    assert c.read_event()["data"] == "live"
    c.expect_nothing(0.3)


def test_after_a_restart_the_old_id_gets_a_reset(daemon_factory):
    d = daemon_factory()
    old = publish_ack(d, "t", "before restart")
    assert d.stop() == 0
    d2 = daemon_factory()
    c = open_stream(d2, "t", last_id=old)
    reset = c.read_event()
    assert reset["event"] == "reset" and json.loads(reset["data"])["oldest"] is None
    d2.control("t=after")
    assert c.read_event()["data"] == "after"


def test_a_backlog_larger_than_the_queue_is_trimmed_not_fatal(daemon_factory):
    d = daemon_factory("--max-queue-bytes", "64K")
    first = publish_ack(d, "t", "first")
    d.control("".join(f"t=#{i} {'b' * 1000}\n" for i in range(100)))  # ~100 KB missed
    c = open_stream(d, "t", last_id=first)
    reset = c.read_event()
    assert reset["event"] == "reset"
    info = json.loads(reset["data"])
    assert info["reason"] == "dropped" and info["oldest"] == first
    kept = [int(e["data"][1:].split()[0]) for e in c.read_events(100 - info["dropped"])]
    assert kept == list(range(info["dropped"], 100))  # the newest, in order
    assert 30 < len(kept) < 64
    d.control("t=live")
    assert c.read_event()["data"] == "live"
    assert d.control_json("tcpstatus")["droppedclients"] == 0


def test_retry_hint_with_jitter_follows_the_handshake(daemon_factory):
    d = daemon_factory("--retry", "1000")
    hints = set()
    for _ in range(8):
        c = d.sse("t")
        assert b"\r\nX-Accel-Buffering: no\r\n" in c.head
        assert c.retry is not None  # the hint came with the handshake
        hints.add(c.retry)
        c.close()
    assert all(1000 <= h <= 2000 for h in hints)
    assert len(hints) > 1  # jittered per connection


def test_retry_zero_sends_no_hint(daemon_factory):
    d = daemon_factory("--retry", "0")
    c = d.sse("t")
    assert c.retry is None
    d.control("t=first")
    assert parse_event(c.read_chunk())["data"] == "first"


def test_heartbeats_arrive_on_an_idle_stream(daemon_factory):
    d = daemon_factory("--heartbeat", "1", "--retry", "0")
    c = d.sse("t")
    start = time.monotonic()
    times = []
    while len(times) < 3:
        payload = c.read_chunk(timeout=3)
        assert payload.startswith(b":") and payload.endswith(b"\n\n"), payload
        times.append(time.monotonic() - start)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(0.6 < g < 1.8 for g in gaps), times
    assert times[0] < 2.2


def test_zero_turns_heartbeats_off(daemon_factory):
    d = daemon_factory("--heartbeat", "0", "--retry", "0")
    c = d.sse("t")
    c.expect_nothing(1.5)


def test_a_busy_stream_gets_no_heartbeat(daemon_factory):
    d = daemon_factory("--heartbeat", "1", "--retry", "0")
    c = d.sse("t")
    with socket.create_connection(("127.0.0.1", d.cport)) as ctl:
        for i in range(10):
            ctl.sendall(f"t=busy{i}\n".encode())
            time.sleep(0.25)
            payload = c.read_chunk(timeout=2)
            assert parse_event(payload)["data"] == f"busy{i}", payload


def test_503_above_the_connection_cap(daemon_factory):
    d = daemon_factory("--max-clients", "2", "--retry", "2000")
    a, b = d.sse("t"), d.sse("t")
    answer = raw_exchange("127.0.0.1", d.port,
                          f"GET {d.murl}?subscribe=t HTTP/1.1\r\nConnection: keep-alive\r\n\r\n".encode())
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 503 Service Unavailable"
    headers = dict(line.split(b": ", 1) for line in lines[1:])
    assert 2 <= int(headers[b"Retry-After"]) <= 4
    assert headers[b"Connection"] == b"close"
    assert int(headers[b"Content-Length"]) == len(body)
    assert b"Date" in headers and b"Server" in headers
    status = d.control_json("tcpstatus")
    assert status["refused"] == 1 and status["allconncli"] == 2
    # Streams that were in keep receiving; a freed slot is usable again.
    d.control("t=still")
    assert a.read_event()["data"] == "still" and b.read_event()["data"] == "still"
    a.close()
    d.wait_clients(1, established=False)
    c = d.sse("t")
    d.control("t=again")
    assert c.read_event()["data"] == "again"


def test_drain_spreads_closes_over_the_period_and_exits_0(daemon_factory, tmp_path):
    pidfile = tmp_path / "p.pid"
    d = daemon_factory("--drain", "2", f"-pidfile={pidfile}")
    clients = [d.sse("t") for _ in range(8)]
    d.wait_clients(8)
    sent = time.monotonic()
    d.signal(signal.SIGTERM)
    d.wait_log("Draining 8 stream", timeout=3)
    # The loop keeps serving while it drains: publishers still reach the
    # streams that remain, and no new stream is taken.
    d.control("t=during the drain\n")
    with pytest.raises(OSError):
        d.sse("t")
    ended = []
    for c in clients:
        tail = c.read_until_closed(timeout=6)
        assert tail.endswith(b"0\r\n\r\n"), tail
        ended.append(time.monotonic() - sent)
    assert b"during the drain" in tail  # the last stream got it before its end
    # Connections are read in connection order, oldest closes first.
    assert ended[0] < 1.0, ended
    assert ended[-1] > 1.3, ended
    assert d.proc.wait(10) == 0
    assert not pidfile.exists()


def test_drain_zero_closes_everything_at_once(daemon_factory):
    d = daemon_factory()
    clients = [d.sse("t") for _ in range(5)]
    sent = time.monotonic()
    d.signal(signal.SIGTERM)
    for c in clients:
        assert c.read_until_closed(timeout=5).endswith(b"0\r\n\r\n")
    assert time.monotonic() - sent < 1.5
    assert d.proc.wait(10) == 0


def _stalled(d, subscribe="t"):
    """A stream whose reader never reads again, with a tiny window."""
    def small(sock):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)

    return open_stream(d, subscribe, sock_setup=small)


class Reader(threading.Thread):
    """Reads a stream in the background until the event ``stop`` arrives."""

    def __init__(self, client):
        super().__init__(daemon=True)
        self.client = client
        self.events = []
        self.error = None

    def run(self):
        try:
            while True:
                event = self.client.read_event(timeout=20)
                self.events.append(event)
                if event["data"] == "stop":
                    return
        except Exception as exc:  # shown by the test
            self.error = exc


N_SLOW = 1800  # the kernel holds about 4 MB for a stalled loopback peer
SLOW_PAYLOAD = "s" * 4000


def _flood(d):
    for start in range(0, N_SLOW, 200):
        d.control("".join(f"t=#{i} {SLOW_PAYLOAD}\n" for i in range(start, start + 200)))
    d.control("t=stop\n")


def _flood_past_a_stalled_reader(d):
    """A stalled stream and a reading one, then the flood: the reader gets
    every event whatever happens to the stalled one."""
    stalled = _stalled(d)
    good = Reader(d.sse("t"))
    good.start()
    _flood(d)
    good.join(30)
    assert good.error is None and len(good.events) == N_SLOW + 1
    return stalled, d.control_json("tcpstatus")


def test_stalled_client_is_disconnected_and_others_keep_receiving(daemon_factory):
    d = daemon_factory("--max-queue-bytes", "128K", "--heartbeat", "0")
    stalled, status = _flood_past_a_stalled_reader(d)
    assert status["droppedclients"] == 1
    assert status["sseconncli"] == 1
    stalled.close()


def test_stalled_client_under_drop_policy_gets_a_reset_and_the_newest(daemon_factory):
    d = daemon_factory("--max-queue-bytes", "128K", "--heartbeat", "0", "--slow-client-policy", "drop")
    stalled, status = _flood_past_a_stalled_reader(d)
    assert status["droppedclients"] == 0 and status["sseconncli"] == 2
    assert status["droppedevents"] > 0
    queued = status["queuedbytes"]
    assert 0 < queued <= 128 * 1024
    rows = {r["agent"]: r for r in d.control_json("tcpclientlist")["clients"]}
    # Now read the stalled stream: well-formed chunks, a reset, the end.
    stalled.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    events = []
    while not events or events[-1].get("data") != "stop":
        events.append(stalled.read_event(timeout=10))
    resets = [e for e in events if e.get("event") == "reset"]
    assert resets and all(json.loads(r["data"])["reason"] == "dropped" for r in resets)
    assert sum(json.loads(r["data"])["dropped"] for r in resets) == status["droppedevents"]
    numbers = [int(e["data"][1:].split()[0]) for e in events if e["data"].startswith("#")]
    assert numbers == sorted(numbers) and len(numbers) == N_SLOW - status["droppedevents"]
    assert numbers[-1] == N_SLOW - 1  # the newest survive
    assert rows["delivery-test"]["dropped"] == status["droppedevents"]


def test_tcpclientlist_lists_every_client(daemon_factory):
    d = daemon_factory("--heartbeat", "0")
    before = time.time()
    a = open_stream(d, "alpha-beta", uniq="ua", agent="Agent A")
    b = open_stream(d, "*", agent="Agent B")
    half = socket.create_connection(("127.0.0.1", d.port))
    half.sendall(b"GET /sse?subscr")
    d.control("alpha=1;alpha=2;gamma=3;")
    a.read_events(2)
    b.read_events(3)
    wait_until(lambda: len(d.control_json("tcpclientlist")["clients"]) == 3)
    reply = d.control("tcpclientlist\n")
    assert reply.endswith(b"\n") and reply.count(b"\n") == 1
    rows = json.loads(reply)["clients"]
    by_agent = {r["agent"]: r for r in rows}
    ra, rb = by_agent["Agent A"], by_agent["Agent B"]
    assert ra["subscriptions"] == ["alpha", "beta"] and ra["id"] == "ua"
    assert rb["subscriptions"] == ["*"] and rb["id"] == ""
    assert ra["messages"] == 2 and rb["messages"] == 3
    assert ra["state"] == rb["state"] == "SSE"
    assert ra["queued"] == 0 and ra["tls"] is None
    assert re.fullmatch(r"127\.0\.0\.1:\d+", ra["peer"])
    assert int(ra["peer"].rsplit(":", 1)[1]) == a.sock.getsockname()[1]
    assert before - 1 < ra["connected"] <= ra["handshaked"] < time.time() + 1
    pending = by_agent[""]
    assert pending["state"] == "HEA" and pending["handshaked"] is None
    half.close()


def test_tcpclientlist_larger_than_the_queue_limit_is_still_answered(daemon_factory):
    d = daemon_factory("--max-queue-bytes", "64K", "--heartbeat", "0")
    agent = "A" * 200
    clients = [open_stream(d, f"token{i}", uniq=f"u{i}", agent=agent) for i in range(250)]
    reply = d.control("tcpclientlist\n", timeout=20)
    assert len(reply) > 64 * 1024
    rows = json.loads(reply)["clients"]
    assert sorted(r["id"] for r in rows) == sorted(f"u{i}" for i in range(250))
    for c in clients:
        c.close()


def test_tcpmetrics_and_metrics_port_serve_the_same_counters(daemon_factory):
    from support import free_port

    mport = free_port()
    d = daemon_factory("--metrics-port", str(mport), "--heartbeat", "0")
    a = d.sse("t")
    b = d.sse("t-u")
    d.control("t=1;t=2;u=3;nobody=4;")
    a.read_events(2)
    b.read_events(3)
    text = d.control("tcpmetrics\n").decode()
    values = parse_prometheus(text)
    assert values["pyhasses_streams"] == 2
    assert values["pyhasses_messages_total"] == 4
    assert values["pyhasses_deliveries_total"] == 5
    assert values["pyhasses_history_events"] == 4
    assert values["pyhasses_handshakes_total"] == 2
    assert values["pyhasses_refused_total"] == 0
    answer = raw_exchange("127.0.0.1", mport, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: text/plain; version=0.0.4" in head
    assert int(re.search(rb"Content-Length: (\d+)", head).group(1)) == len(body)
    served = parse_prometheus(body.decode())
    for key in ("pyhasses_streams", "pyhasses_messages_total", "pyhasses_deliveries_total",
                "pyhasses_history_events", "pyhasses_connections"):
        assert served[key] == values[key], key
    assert raw_exchange("127.0.0.1", mport, b"GET /other HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404")
    d.wait_log(r"Metrics client 127\.0\.0\.1:\d+: unknown URL b'/other'; answered 404 and closing")
    assert raw_exchange("127.0.0.1", mport, b"\x16\x03\x01junk").startswith(b"HTTP/1.1 400")
    d.wait_log(r"Metrics client 127\.0\.0\.1:\d+: not an HTTP request; answered 400 and closing")
    # loopback only by default: every listening socket on that port is
    assert listening_addresses(mport) <= {"127.0.0.1", "::1"}
    assert "127.0.0.1" in listening_addresses(mport)


def listening_addresses(port):
    """Local addresses with a socket listening on ``port`` (/proc/net)."""
    import ipaddress

    found = set()
    for name, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        try:
            lines = open(name).read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            addr, hexport = fields[1].split(":")
            if fields[3] != "0A" or int(hexport, 16) != port:
                continue
            raw = bytes.fromhex(addr)
            # /proc prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(str(ipaddress.ip_address(raw)))
    return found


def parse_prometheus(text):
    """Samples of the text format; every sample must have HELP and TYPE."""
    values, typed = {}, set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
        elif line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            assert name.split("{")[0] in typed, line
            values[name] = float(value)
    return values


def test_tcpstatus_gains_keys_and_history_stays_bounded(daemon_factory):
    d = daemon_factory("--history-bytes", "256K", "--heartbeat", "0")
    payload = "h" * 1024
    for _ in range(3):
        d.control("".join(f"t={payload}\n" for _ in range(500)))
    status = d.control_json("tcpstatus")
    for key in ("version", "runningtime", "mode", "loglevel", "allconncli", "sseconncli",
                "maxconncli", "msgproccnt", "msgsendcnt"):
        assert key in status
    assert status["msgproccnt"] == 1500
    assert 0 < status["historybytes"] <= 256 * 1024
    assert status["historysize"] < 1500
    assert status["droppedclients"] == 0 and status["queuedbytes"] == 0


def test_bad_option_values_are_refused(daemon_factory):
    from support import run_module

    for args in (["--slow-client-policy", "never"], ["--heartbeat", "-1"], ["--max-clients", "x"],
                 ["--history-bytes", "0"]):
        proc = run_module("pyhasses", "-nodaemon", "-p=1", "-murl=/s", "-cp=2", *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert args[0] in proc.stderr
