"""Bytes-only checks of the delivery pieces: hub.reach agrees with
hub.recipients, the outbox drops whole chunks only, the reset and retry
bytes, the metrics text."""

import json
import random
import socket

from pyhasses import delivery, metrics
from pyhasses.hub import Hub, parse_target
from pyhasses.outbox import Outbox
from support import HubClient, parse_event


def test_reaches_agrees_with_recipients_for_every_address():
    rng = random.Random(5)
    hub = Hub()
    words = ["a", "ab", "abc", "b", "ba", "room1", "room12"] + [f"w{n}" for n in range(300)]
    clients = []
    for i in range(60):
        c = HubClient()
        subs = rng.sample(words + ["*"], rng.choice([1, 2, 3, 150]))  # some hold many tokens
        hub.subscribe(c, subs, rng.choice(["", "u1", "u2", f"x{i}"]))
        clients.append(c)
    idle = HubClient()  # connected, never subscribed
    hub.connected(idle)
    addresses = ["*", "a", "ab*", "a*", "b*", "room1", "room1*", "zzz", "*-u1", "ab*-u2", "room1-u1", "abc",
                 "w1*", "w29*", "w299", "w3*-u1", "w*", "x*", "room123*"]
    for text in addresses:
        target = parse_target(text, 128)
        expected = set(hub.recipients(target))
        assert {c for c in clients + [idle] if hub.reach(c)([target])} == expected, text
    two = [parse_target("a", 128), parse_target("b*-u1", 128)]
    union = set(hub.recipients(two[0])) | set(hub.recipients(two[1]))
    assert {c for c in clients if hub.reach(c)(two)} == union


def test_drop_oldest_keeps_the_head_and_whole_chunks():
    a, b = socket.socketpair()
    try:
        box = Outbox(100)
        for part in (b"H" * 30, b"1" * 20, b"2" * 20, b"3" * 20):
            box.append(part)
        removed = box.drop_oldest(1, 31)
        assert removed == [b"1" * 20, b"2" * 20]
        assert len(box) == 50
        box.put(1, b"R" * 5)
        box.append(b"4" * 20)
        assert box.flush(a)
        assert b.recv(1000) == b"H" * 30 + b"R" * 5 + b"3" * 20 + b"4" * 20
    finally:
        a.close()
        b.close()


def test_drop_oldest_never_touches_a_partly_sent_head():
    a, b = socket.socketpair()
    try:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        box = Outbox(1 << 20)
        big = b"x" * 200_000
        box.append(big)
        box.append(b"y" * 10)
        a.setblocking(False)
        assert not box.flush(a)  # the head is now partly sent
        partly = len(box) - 10
        assert 0 < partly < len(big)
        assert box.drop_oldest(1, 1 << 20) == [b"y" * 10]
        assert len(box) == partly
    finally:
        a.close()
        b.close()


def test_put_in_place_replaces_and_counts():
    box = Outbox(1000)
    box.append(b"head")
    box.put(1, b"r1")
    box.put(1, b"r-two", replace=True)
    assert len(box) == 9 and box.unsent(1) == b"r-two" and box.unsent(2) is None


def test_reset_event_bytes():
    payload = delivery.reset_event(17, "too-old")
    size, _, rest = payload.partition(b"\r\n")
    assert int(size, 16) == len(rest) - 2
    event = parse_event(rest[:-2])
    assert event["event"] == "reset" and "id" not in event
    assert json.loads(event["data"]) == {"oldest": "17", "reason": "too-old"}
    dropped = parse_event(delivery.reset_event(None, "dropped", 4, event_id=99).split(b"\r\n")[1])
    assert dropped["id"] == "99" and json.loads(dropped["data"]) == {"oldest": None, "reason": "dropped",
                                                                      "dropped": 4}


def test_retry_hint_is_jittered_between_base_and_double():
    rng = random.Random(1)
    values = {int(parse_event(delivery.retry_hint(500, rng).split(b"\r\n")[1])["retry"]) for _ in range(50)}
    assert min(values) >= 500 and max(values) <= 1000 and len(values) > 10
    assert delivery.retry_hint(0) == b""
    assert all(3 <= delivery.retry_after(2500, rng) <= 6 for _ in range(20))


def test_metrics_text_has_help_type_and_values():
    text = metrics.render({"version": 'v"1', "allconncli": 3, "msgproccnt": 7, "extra": {"historysize": 2,
                                                                                          "uptime": 1.25}})
    lines = text.splitlines()
    assert "pyhasses_connections 3" in lines and "pyhasses_messages_total 7" in lines
    assert "pyhasses_history_events 2" in lines and "pyhasses_uptime_seconds 1.25" in lines
    assert "# TYPE pyhasses_messages_total counter" in lines
    assert 'pyhasses_info{version="v\\"1"} 1' in lines
    assert "pyhasses_streams" not in text  # absent keys are not invented


def test_unavailable_answer_bytes():
    from pyhasses import http

    answer = http.unavailable(7)
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 503 Service Unavailable"
    assert lines[1].startswith(b"Date: ") and lines[2] == b"Server: AsyncSSEServer (Hyper)"
    assert b"Retry-After: 7" in lines and b"Connection: close" in lines
    assert b"Content-Length: %d" % len(body) in lines


def test_last_event_id_from_header_or_query():
    from pyhasses import http

    def decide(request):
        head = http.parse_head(request)
        return http.decide(head, "/sse", 128)

    base = b"GET /sse?subscribe=a%s HTTP/1.1\r\nConnection: keep-alive\r\n%s\r\n"
    assert decide(base % (b"", b"")).last_event_id is None
    assert decide(base % (b"", b"Last-Event-ID: 42\r\n")).last_event_id == "42"
    assert decide(base % (b"&lastEventId=17", b"")).last_event_id == "17"
    assert decide(base % (b"&lastEventId=17", b"Last-Event-ID: 42\r\n")).last_event_id == "42"
    assert decide(base % (b"", b"Last-Event-ID: \r\n")).last_event_id is None


def test_delivery_options_parse_into_settings():
    from pyhasses import cli

    raw = cli.parse_args(["-p=8080", "-murl=/sse", "-cp=8085", "--history-count", "5", "--history-bytes", "2M",
                          "--history-age", "60", "--heartbeat", "0", "--retry", "500", "--max-clients", "9",
                          "--drain", "2.5", "--slow-client-policy", "drop", "--metrics-port", "9108"])
    s = cli.build_settings(raw)
    assert (s.history_count, s.history_bytes, s.history_age) == (5, 2 * 1024 * 1024, 60.0)
    assert (s.heartbeat, s.retry, s.max_clients, s.drain) == (0.0, 500, 9, 2.5)
    assert s.slow_client_policy == "drop"
    assert s.metrics.port == 9108 and s.metrics.hosts == ("127.0.0.1", "::1")
    anywhere = cli.build_settings(cli.parse_args(["-p=1", "-murl=/s", "-cp=2", "--metrics-port", "*:9108"]))
    assert anywhere.metrics.hosts == ()
    default = cli.build_settings(cli.parse_args(["-p=1", "-murl=/s", "-cp=2"]))
    assert (default.heartbeat, default.retry, default.max_clients, default.drain) == (15.0, 3000, 0, 0.0)
    assert default.slow_client_policy == "disconnect" and default.metrics is None
