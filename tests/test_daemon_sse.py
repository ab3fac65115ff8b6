"""The SSE port of the real daemon over real sockets (PROTOCOL.md 2-4)."""

import json
import os
import re
import signal
import socket
import time

import pytest

from support import SseClient, id_key, raw_exchange, wait_until
from tcpqueues import peer_has_read

DATE = re.compile(rb"Date: [A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT\r\n")
ACA = (b"Access-Control-Allow-Origin: *\r\nAccess-Control-Allow-Methods: GET\r\n"
       b"Access-Control-Allow-Headers: cache-control, last-event-id, X-Requested-With\r\n")


def undate(raw):
    assert DATE.search(raw), raw
    return DATE.sub(b"Date: X\r\n", raw, count=1)


def test_handshake_byte_for_byte(daemon):
    c = SseClient("127.0.0.1", daemon.port)
    c.request(b"GET /sse?subscribe=room1 HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n")
    head = c.read_handshake()
    assert undate(head) == (
        b"HTTP/1.1 200 OK\r\nDate: X\r\nServer: AsyncSSEServer (Hyper)\r\n" + ACA +
        b"Cache-Control: no-cache\r\nKeep-Alive: timeout=300, max=100\r\nConnection: Keep-Alive\r\n"
        b"Transfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\nX-Accel-Buffering: no\r\n\r\n")


def error_answer(status, reason, body, extra=b""):
    return (b"HTTP/1.1 %d %s\r\nDate: X\r\nServer: AsyncSSEServer (Hyper)\r\n" % (status, reason) + extra +
            b"Content-Length: %d\r\nConnection: close\r\nContent-Type: text/html; charset=utf8\r\n\r\n" % len(body)
            + body)


HTML = b'<!DOCTYPE HTML PUBLIC "-//IETF//DTD HTML 2.0//EN"><html><body>%s</body></html>'


@pytest.mark.parametrize("request_bytes,expected", [
    (b"GET /sse?subscribe=a HTTP/1.1\r\nHost: x\r\n\r\n", error_answer(400, b"Bad Request", HTML % b"Bad Request")),
    (b"GET /sse?id=x HTTP/1.1\r\nConnection: keep-alive\r\n\r\n", error_answer(400, b"Bad Request", HTML % b"Bad Request")),
    (b"GET /nope?subscribe=a HTTP/1.1\r\nConnection: keep-alive\r\n\r\n", error_answer(404, b"Not Found", HTML % b"Not Found")),
    (b"GET /sse?subscribe=a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
     error_answer(501, b"Not Implemented", HTML % b"Not Implemented", b"Allow: GET, HEAD\r\n" + ACA)),
    (b"POST /sse HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
     error_answer(501, b"Not Implemented", HTML % b"Not Implemented", b"Allow: GET, HEAD\r\n" + ACA)),
    (b"DELETE /sse HTTP/1.1\r\n\r\n",
     error_answer(501, b"Not Implemented", HTML % b"Not Implemented", b"Allow: GET, HEAD\r\n" + ACA)),
    (b"get /sse?subscribe=a HTTP/1.1\r\nConnection: keep-alive\r\n\r\n",  # methods are case-sensitive
     error_answer(501, b"Not Implemented", HTML % b"Not Implemented", b"Allow: GET, HEAD\r\n" + ACA)),
    (b"GET /sse?subscribe=a HTTP/1.1\r\nConnection : keep-alive\r\n\r\n",  # RFC 9112 5.1
     error_answer(400, b"Bad Request", HTML % b"Bad Request")),
    (b"HEAD /sse HTTP/1.1\r\n\r\n",
     b"HTTP/1.1 200 OK\r\nDate: X\r\nAccept: text/*\r\nServer: AsyncSSEServer (Hyper)\r\nCache-control: no-cache\r\n"
     + ACA + b"Allow: GET, HEAD, OPTIONS\r\nKeep-Alive: timeout=300, max=100\r\nContent-Type: text/event-stream\r\n"
     b"Connection: close\r\n\r\n"),
    (b"OPTIONS * HTTP/1.1\r\n\r\n",
     b"HTTP/1.1 200 OK\r\nDate: X\r\nAccept: text/*\r\nServer: AsyncSSEServer (Hyper)\r\nCache-control: no-cache\r\n"
     + ACA + b"Allow: GET, HEAD, OPTIONS\r\nAccept-Encoding:\r\nKeep-Alive: timeout=300, max=100\r\n"
     b"Content-Length: 0\r\nConnection: close\r\n\r\n"),
])
def test_fixed_answers_byte_for_byte_then_close(daemon, request_bytes, expected):
    got = raw_exchange("127.0.0.1", daemon.port, request_bytes)
    assert undate(got) == expected


def test_options_on_murl_same_as_star(daemon):
    a = undate(raw_exchange("127.0.0.1", daemon.port, b"OPTIONS /sse HTTP/1.1\r\n\r\n"))
    b = undate(raw_exchange("127.0.0.1", daemon.port, b"OPTIONS * HTTP/1.1\r\n\r\n"))
    assert a == b and a.startswith(b"HTTP/1.1 200 OK")


def test_cors_base_is_used(daemon_factory):
    d = daemon_factory("-cors-base=https://app.example")
    c = d.sse("a")
    assert b"Access-Control-Allow-Origin: https://app.example\r\n" in c.head


def test_head_split_over_two_writes(daemon):
    c = SseClient("127.0.0.1", daemon.port)
    for part in (b"GET /sse?subscr", b"ibe=room1 HTTP/1.1\r\nConnection: keep-"):
        c.request(part)
        wait_until(lambda: peer_has_read(c.sock), timeout=5, interval=0.005, what="the daemon to read the part")
    c.request(b"alive\r\n\r\n")
    c.read_handshake()
    daemon.control("room1=joined\n")
    assert c.read_event()["data"] == "joined"


@pytest.mark.parametrize("junk", [
    b"\x00\x01\x02garbage",
    bytes.fromhex("160301020001000001fc0303") + os.urandom(64),   # a TLS ClientHello's start
    os.urandom(256).replace(b"G", b"g"),
    b"hello world\r\n\r\n",
])
def test_junk_gets_400_at_once(daemon, junk):
    start = time.monotonic()
    got = raw_exchange("127.0.0.1", daemon.port, junk, timeout=5)
    assert got.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert time.monotonic() - start < 3  # not the 20 s handshake limit
    assert daemon.alive()


def test_100kb_header_refused_daemon_fine(daemon):
    big = b"GET /sse?subscribe=a HTTP/1.1\r\nConnection: keep-alive\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    got = raw_exchange("127.0.0.1", daemon.port, big)
    assert got.startswith(b"HTTP/1.1 431 ")
    c = daemon.sse("ok")
    daemon.control("ok=still here\n")
    assert c.read_event()["data"] == "still here"


def test_ipv6_loopback(daemon):
    c = daemon.sse("six", host="::1")
    daemon.control("six=over v6\n")
    assert c.read_event()["data"] == "over v6"


def test_event_format_and_increasing_ids(daemon):
    c = daemon.sse("r")
    daemon.control("r=one;r=two;r=three\n")
    raw = [c.read_chunk() for _ in range(3)]
    ids = []
    for body, text in zip(raw, ("one", "two", "three")):
        m = re.fullmatch(rb"id: ([1-9][0-9]{9,})\ndata: (.*)\n\n", body)
        assert m and m.group(2) == text.encode()
        ids.append(id_key(m.group(1).decode()))
    assert ids == sorted(set(ids)) and len({tag for tag, _ in ids}) == 1


def test_a_restart_gives_ids_of_a_new_run_that_still_grow(daemon_factory):
    """An id of the earlier run can never name an event of this one, and
    with a sane clock the new run's ids are greater, as integers."""
    d = daemon_factory()
    c = d.sse("r")
    d.control("r=before\n")
    first_text = c.read_event()["id"]
    first = id_key(first_text)
    assert d.stop() == 0
    d2 = daemon_factory()
    c2 = d2.sse("r")
    d2.control("r=after\n")
    after_text = c2.read_event()["id"]
    after = id_key(after_text)
    assert after[0] != first[0] and after[1] > first[1] and int(after_text) > int(first_text)


def test_multiline_message_is_several_data_lines(daemon):
    c = daemon.sse("m")
    daemon.control(json.dumps({"to": "m", "data": "line one\nline two\r\nthree"}) + "\n")
    body = c.read_chunk()
    assert body.endswith(b"data: line one\ndata: line two\ndata: three\n\n")


def test_one_mebibyte_message_intact(daemon):
    c = daemon.sse("big")
    payload = "".join(chr(97 + i % 26) for i in range(1 << 20))
    daemon.control("big=" + payload + "\n")
    ev = c.read_event(timeout=15)
    assert ev["data"] == payload


def test_routing_through_the_daemon(daemon):
    a = daemon.sse("room1-room2", uniq="ua")
    b = daemon.sse("room1", uniq="ub")
    star = daemon.sse("*")
    daemon.control("room1-ua=not a;room*-ub=not b;room2=only a\n")
    assert a.read_event()["data"] == "not b"
    assert a.read_event()["data"] == "only a"
    assert b.read_event()["data"] == "not a"
    assert [e["data"] for e in star.read_events(3)] == ["not a", "not b", "only a"]
    b.expect_nothing()


def test_handshake_timeout_fires_without_other_traffic(daemon_factory):
    d = daemon_factory("--handshake-timeout", "0.5")
    s = socket.create_connection(("127.0.0.1", d.port))
    s.sendall(b"GET /sse?subscribe=a HTTP/1.1\r\n")  # never finished
    start = time.monotonic()
    s.settimeout(5)
    assert s.recv(100) == b""
    assert 0.4 < time.monotonic() - start < 2.5
    s.close()


def test_stream_lifetime_ends_with_last_chunk(daemon_factory):
    d = daemon_factory("--stream-lifetime", "1")
    c = d.sse("a")
    start = time.monotonic()
    assert c.read_chunk(timeout=5) == b""  # the terminating chunk 0\r\n\r\n
    assert 0.8 < time.monotonic() - start < 3
    assert c.read_until_closed() == b""
    d.wait_clients(0, established=False)


def reinit_request(c, token):
    c.request(f"GET /sse?subscribe={token} HTTP/1.1\r\nConnection: keep-alive\r\n\r\n")
    c.read_handshake()


def test_reinit_with_flag(daemon_factory):
    d = daemon_factory("-ra")
    c = d.sse("old")
    reinit_request(c, "new")
    d.control("old=x;new=y\n")
    assert c.read_event()["data"] == "y"
    assert d.control_json("tcpstatus")["sseconncli"] == 1


def test_no_reinit_ignores_bytes_then_command_enables(daemon):
    c = daemon.sse("old")
    c.request(b"GET /sse?subscribe=new HTTP/1.1\r\nConnection: keep-alive\r\n\r\n")
    daemon.control("old=still old\n")
    assert c.read_event()["data"] == "still old"
    daemon.control("reinit_enable\n")
    reinit_request(c, "new")
    daemon.control("old=x;new=y\n")
    assert c.read_event()["data"] == "y"
    daemon.control("reinit_disable\n")
    c.request(b"GET /sse?subscribe=old HTTP/1.1\r\nConnection: keep-alive\r\n\r\n")
    daemon.control("new=z\n")
    assert c.read_event()["data"] == "z"


STREAM_REQUEST = b"GET /sse?subscribe=%s HTTP/1.1\r\nConnection: keep-alive\r\n\r\n"


@pytest.mark.parametrize("tail", [b"xyz", b"\x00\x01", b"POST / HTTP/1.1\r\n\r\n", STREAM_REQUEST % b"new"],
                         ids=["text", "binary", "POST", "second GET"])
def test_bytes_sent_with_the_request_are_ignored_without_reinit(daemon, tail):
    # Whatever follows the head in the same packet is input from an
    # established client: ignored, never an answer written into the stream.
    c = SseClient("127.0.0.1", daemon.port)
    c.request(STREAM_REQUEST % b"old" + tail)
    c.read_handshake()
    daemon.control("new=not for it;old=for it\n")
    event = c.read_event()
    assert event["data"] == "for it" and set(event) == {"id", "data"}
    c.expect_nothing()
    assert daemon.control_json("tcpstatus")["sseconncli"] == 1


@pytest.mark.parametrize("between", [b"", b"\r\n"], ids=["adjacent", "empty line between"])
def test_a_second_get_sent_with_the_request_reinitialises_under_reinit(daemon_factory, between):
    d = daemon_factory("-ra")
    c = SseClient("127.0.0.1", d.port)
    c.request(STREAM_REQUEST % b"old" + between + STREAM_REQUEST % b"new")
    c.read_handshake()
    c.read_handshake()
    d.control("old=x;new=y\n")
    assert c.read_event()["data"] == "y"
    status = d.control_json("tcpstatus")
    assert status["sseconncli"] == 1


def test_a_thousand_pipelined_gets_under_reinit_end_on_the_last(daemon_factory):
    # One read's requests are taken one after the other, not by recursion.
    d = daemon_factory("-ra")
    c = SseClient("127.0.0.1", d.port)
    c.request(b"".join(STREAM_REQUEST % b"t%d" % i for i in range(1000)))
    wait_until(lambda: d.log().count("Re-initialize client") == 999, what="999 re-initialisations")
    d.control("t998=no;t999=yes\n")
    got = b""
    deadline = time.monotonic() + 10
    while b"data: yes" not in got and time.monotonic() < deadline:
        got += c.sock.recv(1 << 20)
    assert b"data: yes" in got and b"data: no" not in got
    assert got.count(b"HTTP/1.1 200 OK\r\n") == 1000  # one handshake per request
    assert "internal error" not in d.log()


def test_sigterm_ends_streams_and_removes_pidfile(daemon_factory, tmp_path):
    pidfile = tmp_path / "p.pid"
    d = daemon_factory(f"-pidfile={pidfile}")
    wait_until(lambda: pidfile.exists(), what="pid file")
    assert int(pidfile.read_text()) == d.pid
    c = d.sse("a")
    d.signal(signal.SIGTERM)
    assert c.read_chunk() == b""
    assert d.proc.wait(10) == 0
    assert not pidfile.exists()
    assert "Received INT/TERM signal" in d.log()


def test_sigint_exits_zero(daemon_factory):
    d = daemon_factory()
    d.signal(signal.SIGINT)
    assert d.proc.wait(10) == 0


def test_client_closing_mid_stream_is_counted_out(daemon):
    c = daemon.sse("a")
    daemon.wait_clients(1)
    c.close()
    daemon.wait_clients(0, established=False)
