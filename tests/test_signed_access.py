"""Signed subscriptions and HTTP publishing on the SSE port, against the real
daemon over real sockets (issue 12 points 3 and 4, PROTOCOL.md 9): tokens
from the header, the cookie and the query; refused tokens of every kind get
401, tokens that do not cover get 403; a stream ends at its token's exp;
POSTs on one kept connection publish through the control channel's path."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import time

import pytest

from pyhasses import auth
from support import SseClient, free_port, read_to_close, wait_until

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(not os.path.exists("/usr/bin/curl"), reason="curl is not installed")]


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "access.key"
    path.write_text(os.urandom(32).hex() + "\n")
    return path


def token(key_file, ttl=600, **grants) -> str:
    return auth.mint(auth.load_key(str(key_file)), ttl=ttl, **grants)


def curl(*args, timeout=20) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-s", "--noproxy", "*", *args], capture_output=True, timeout=timeout)


def stream_status(daemon, query: str, *headers) -> tuple:
    """curl's status code and body for a stream request that is refused."""
    extra = [arg for h in headers for arg in ("-H", h)]
    r = curl("-m", "5", "-o", "-", "-w", "\n%{http_code}", "-H", "Connection: keep-alive", *extra,
             f"http://127.0.0.1:{daemon.port}/sse?{query}")
    body, _, code = r.stdout.decode().rpartition("\n")
    return int(code), body


def alg_none(claims: dict) -> str:
    def part(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


# -- signed subscriptions ----------------------------------------------------------------


def test_a_token_in_the_header_the_cookie_or_the_query_opens_the_stream(daemon_factory, key_file):
    daemon = daemon_factory(f"--subscriber-key={key_file}")
    good = token(key_file, subscribe=["room1"])
    url = f"http://127.0.0.1:{daemon.port}/sse?subscribe=room1"
    ways = [["-H", f"Authorization: Bearer {good}", url],
            ["--cookie", f"pyhassesAuthorization={good}", url],
            [f"{url}&authorization={good}"]]
    procs = [subprocess.Popen(["curl", "-s", "-N", "--noproxy", "*", "-m", "4", "-H", "Connection: keep-alive", *way],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for way in ways]
    try:
        daemon.wait_clients(3)
        daemon.control("room1=signed hello\n")
    finally:
        outputs = [p.communicate(timeout=20)[0] for p in procs]
    for out in outputs:
        assert b"data: signed hello\n" in out, out


@pytest.mark.parametrize("kind", ["junk", "expired", "other-secret", "alg-none", "truncated", "tampered", "nbf"])
def test_refused_tokens_over_the_wire_are_401_with_a_reason(daemon_factory, key_file, kind):
    daemon = daemon_factory(f"--subscriber-key={key_file}")
    good = token(key_file, subscribe=["room1"])
    bad = {
        "junk": "not-a-token",
        "expired": token(key_file, ttl=-30, subscribe=["room1"]),
        "other-secret": auth.mint(auth.key_from_bytes(os.urandom(32).hex().encode()), subscribe=["room1"]),
        "alg-none": alg_none({"pyhasses": {"subscribe": ["room1"]}, "exp": int(time.time()) + 600}),
        "truncated": good[:-6],
        "tampered": good.split(".")[0] + "." + base64.urlsafe_b64encode(
            json.dumps({"pyhasses": {"subscribe": ["*"]}}).encode()).rstrip(b"=").decode() + "." + good.split(".")[2],
        "nbf": token(key_file, subscribe=["room1"], nbf=int(time.time()) + 600),
    }[kind]
    for how in ([f"Authorization: Bearer {bad}"], [f"Cookie: pyhassesAuthorization={bad}"]):
        code, body = stream_status(daemon, "subscribe=room1", *how)
        assert code == 401 and body and "\n" not in body.strip(), (how, body)
    code, _ = stream_status(daemon, f"subscribe=room1&authorization={bad}")
    assert code == 401
    status = daemon.control_json("tcpstatus")
    assert status["sseconncli"] == 0 and status["streamdenied"] == 3


def test_no_token_is_401_and_the_answer_carries_the_cors_block(daemon_factory, key_file):
    daemon = daemon_factory(f"--subscriber-key={key_file}", "-cors-base=https://app.example")
    r = curl("-m", "5", "-i", "-H", "Connection: keep-alive", f"http://127.0.0.1:{daemon.port}/sse?subscribe=room1")
    head = r.stdout.decode()
    assert head.startswith("HTTP/1.1 401 Unauthorized\r\n")
    assert "Access-Control-Allow-Origin: https://app.example\r\nAccess-Control-Allow-Methods: GET\r\n" in head
    assert "WWW-Authenticate: Bearer" in head and "Connection: close" in head


def test_a_token_not_covering_every_token_is_403(daemon_factory, key_file):
    daemon = daemon_factory(f"--subscriber-key={key_file}")
    tok = token(key_file, subscribe=["room1", "news*"])
    code, body = stream_status(daemon, "subscribe=room1-news7-secret", f"Authorization: Bearer {tok}")
    assert code == 403 and "'secret'" in body
    code, _ = stream_status(daemon, "subscribe=*", f"Authorization: Bearer {tok}")
    assert code == 403
    daemon.wait_log(r"token does not grant subscribing to 'secret'; answered 403")
    stream = SseClient("127.0.0.1", daemon.port)
    stream.request(f"GET /sse?subscribe=room1-news7 HTTP/1.1\r\nConnection: keep-alive\r\n"
                   f"Authorization: Bearer {tok}\r\n\r\n")
    stream.read_handshake()
    daemon.control("news7=covered by the prefix grant\n")
    assert stream.read_event()["data"] == "covered by the prefix grant"


def test_a_stream_ends_within_a_second_after_its_token_expires(daemon_factory, key_file):
    """The lifetime sweep's period is minutes here: the expiry timer ends it."""
    daemon = daemon_factory(f"--subscriber-key={key_file}", "--stream-lifetime=3600")
    now = time.time()
    tok = auth.mint(auth.load_key(str(key_file)), subscribe=["room1"], ttl=2, now=now)
    exp = int(now + 2)
    stream = SseClient("127.0.0.1", daemon.port, timeout=10)
    stream.request(f"GET /sse?subscribe=room1 HTTP/1.1\r\nConnection: keep-alive\r\n"
                   f"Cookie: pyhassesAuthorization={tok}\r\n\r\n")
    stream.read_handshake()
    rest = stream.read_until_closed(timeout=10)
    closed = time.time()
    assert exp - 0.05 <= closed < exp + 1.0, (closed - exp)
    assert rest.endswith(b"0\r\n\r\n")  # the chunked body ends properly: the browser reconnects
    daemon.wait_log(r"its token expired; ending the stream")


def test_without_a_subscriber_key_streams_need_no_token(daemon_factory):
    daemon = daemon_factory()
    stream = daemon.sse("room1")
    daemon.control("room1=open\n")
    assert stream.read_event()["data"] == "open"


# -- publishing over HTTP ----------------------------------------------------------------


def read_response(sock, buf=b"") -> tuple:
    """One HTTP response with a Content-Length body: (head, body, rest)."""
    sock.settimeout(5)
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        assert data, f"closed before a response: {buf!r}"
        buf += data
    head, _, buf = buf.partition(b"\r\n\r\n")
    length = int([line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")][0])
    while len(buf) < length:
        data = sock.recv(65536)
        assert data, "closed inside a body"
        buf += data
    return head.decode(), buf[:length], buf[length:]


def post_bytes(tok, body: bytes, ctype="application/x-www-form-urlencoded") -> bytes:
    return (f"POST /publish HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {tok}\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def test_three_posts_on_one_kept_connection_publish_like_the_control_channel(daemon_factory, key_file):
    daemon = daemon_factory(f"--publisher-key={key_file}")
    stream = daemon.sse("room1")
    tok = token(key_file, publish=["room*"])
    bodies = [(b"to=room1&data=one", "application/x-www-form-urlencoded"),
              (json.dumps({"to": "room1", "event": "chat", "data": "two; x=1\nline"}).encode(), "application/json"),
              (b"to=room1&to=room2&data=three&retry=1500", "application/x-www-form-urlencoded")]
    acks = []
    with socket.create_connection(("127.0.0.1", daemon.port)) as sock:
        rest = b""
        for body, ctype in bodies:
            sock.sendall(post_bytes(tok, body, ctype))
            head, reply, rest = read_response(sock, rest)
            assert head.startswith("HTTP/1.1 200 OK\r\n") and "Content-Type: application/json" in head
            assert "Connection: close" not in head
            acks.append(json.loads(reply))
    assert [a["ok"] for a in acks] == [True] * 3 and [a["delivered"] for a in acks] == [1, 1, 1]
    assert int(acks[0]["id"]) < int(acks[1]["id"]) < int(acks[2]["id"])
    events = stream.read_events(3)
    assert [e["data"] for e in events] == ["one", "two; x=1\nline", "three"]
    assert events[1]["event"] == "chat" and events[2]["retry"] == "1500"
    assert [e["id"] for e in events] == [a["id"] for a in acks]
    status = daemon.control_json("tcpstatus")
    assert status["msgproccnt"] == 3 and status["msgsendcnt"] == 3
    # Kept in the history as a control channel's messages are.
    late = SseClient("127.0.0.1", daemon.port)
    late.request(f"GET /sse?subscribe=room1 HTTP/1.1\r\nConnection: keep-alive\r\nLast-Event-ID: {acks[0]['id']}\r\n\r\n")
    late.read_handshake()
    assert [e["data"] for e in late.read_events(2)] == ["two; x=1\nline", "three"]


def test_curl_publishes_with_a_bearer_token(daemon_factory, key_file):
    daemon = daemon_factory(f"--publisher-key={key_file}")
    stream = daemon.sse("room1")
    r = curl("-m", "5", "-H", f"Authorization: Bearer {token(key_file, publish=['room1'])}",
             "--data-urlencode", "to=room1", "--data-urlencode", "data=a;b=c", f"http://127.0.0.1:{daemon.port}/publish")
    assert json.loads(r.stdout)["delivered"] == 1
    assert stream.read_event()["data"] == "a;b=c"


def publish_status(daemon, *args) -> tuple:
    r = curl("-m", "10", "-o", "-", "-w", "\n%{http_code}", *args, f"http://127.0.0.1:{daemon.port}/publish")
    body, _, code = r.stdout.decode().rpartition("\n")
    return int(code), body


def test_publish_refusals_over_the_wire(daemon_factory, key_file, tmp_path):
    daemon = daemon_factory(f"--publisher-key={key_file}")
    stream = daemon.sse("room1")
    pub = token(key_file, publish=["room1"])
    assert publish_status(daemon, "-d", "to=room1&data=x")[0] == 401
    assert publish_status(daemon, "-H", "Authorization: Bearer junk", "-d", "to=room1&data=x")[0] == 401
    expired = token(key_file, ttl=-5, publish=["room1"])
    assert publish_status(daemon, "-H", f"Authorization: Bearer {expired}", "-d", "to=room1&data=x")[0] == 401
    sub_only = token(key_file, subscribe=["room1"])
    assert publish_status(daemon, "-H", f"Authorization: Bearer {sub_only}", "-d", "to=room1&data=x")[0] == 403
    code, body = publish_status(daemon, "-H", f"Authorization: Bearer {pub}", "-d", "to=room2&data=x")
    assert code == 403 and "'room2'" in body
    assert publish_status(daemon, "-H", f"Authorization: Bearer {pub}", "-d", "to=room1&bogus=x")[0] == 400
    assert publish_status(daemon, "-H", f"Authorization: Bearer {pub}", "-H", "Content-Type: application/json",
                          "-d", "{not json")[0] == 400
    big = tmp_path / "big"
    big.write_bytes(b"to=room1&data=" + b"x" * (3 * 1024 * 1024))
    code, body = publish_status(daemon, "-H", f"Authorization: Bearer {pub}", "--data-binary", f"@{big}")
    assert code == 413 and "over" in body
    stream.expect_nothing(0.3)
    status = daemon.control_json("tcpstatus")
    assert status["msgproccnt"] == 0 and status["publishdenied"] == 8
    metrics = daemon.control("tcpmetrics\n").decode()
    assert "pyhasses_http_publishes_denied_total 8\n" in metrics and "pyhasses_streams_denied_total 0\n" in metrics


def test_an_http_publish_is_held_to_the_control_channels_limits(daemon_factory, key_file):
    """A form's retry in digits int() refuses ("²"), or in thousands of
    digits, was an internal error that closed the connection without an
    answer; --max-except and --max-targets held on the control channel only."""
    daemon = daemon_factory(f"--publisher-key={key_file}", "--max-except=1", "--max-targets=2")
    stream = daemon.sse("room1")
    pub = ["-H", f"Authorization: Bearer {token(key_file, publish=['*'])}"]
    rule = '"retry" must be a whole number of milliseconds, at most 2147483647'
    for retry in ("%C2%B2", "9" * 5000, "2147483648", "-1"):
        assert publish_status(daemon, *pub, "-d", f"to=room1&data=x&retry={retry}") == (400, rule + "\n"), retry
    code, body = publish_status(daemon, *pub, "-d", "to=room1&data=x&except=a&except=b")
    assert code == 400 and "--max-except" in body
    code, body = publish_status(daemon, *pub, "-H", "Content-Type: application/json",
                                "-d", json.dumps({"to": ["room1", "a", "b"], "data": "x"}))
    assert code == 400 and "--max-targets" in body
    stream.expect_nothing(0.3)
    code, body = publish_status(daemon, *pub, "-d", "to=room1&to=a&data=y&retry=2147483647")
    assert code == 200 and json.loads(body)["delivered"] == 1
    assert stream.read_event()["retry"] == "2147483647"
    assert "internal error" not in daemon.log()


def test_tokens_never_reach_the_log(daemon_factory, key_file):
    """At debug level, bytes sent on an established stream are logged, and a
    wrong URL is logged at level 1: the token in them was logged too."""
    daemon = daemon_factory(f"--publisher-key={key_file}", f"--subscriber-key={key_file}")
    daemon.control("loglevel_debug\n")
    pub, sub = token(key_file, publish=["room1"]), token(key_file, subscribe=["room1"])
    stream = SseClient("127.0.0.1", daemon.port)
    stream.request(f"GET /sse?subscribe=room1 HTTP/1.1\r\nConnection: keep-alive\r\n"
                   f"Cookie: pyhassesAuthorization={sub}\r\n\r\n")
    stream.read_handshake()
    stream.sock.sendall(post_bytes(pub, b"to=room1&data=x"))
    daemon.wait_log(r"Connected client message .*Authorization: <hidden>")
    r = curl("-m", "5", "-H", "Connection: keep-alive", f"http://127.0.0.1:{daemon.port}/wrong?authorization={sub}")
    assert r.returncode == 0
    daemon.wait_log(r"unknown URL '/wrong\?authorization=<hidden>'")
    log = daemon.log()
    assert pub not in log and sub not in log and pub.split(".")[1] not in log


def test_without_a_publisher_key_the_publish_url_answers_as_before(daemon_factory, key_file):
    daemon = daemon_factory()
    code, _ = publish_status(daemon, "-H", f"Authorization: Bearer {token(key_file, publish=['*'])}",
                             "-d", "to=room1&data=x")
    assert code == 501


def test_a_stream_and_a_publish_may_share_one_key_file(daemon_factory, key_file):
    daemon = daemon_factory(f"--subscriber-key={key_file}", f"--publisher-key={key_file}",
                            "--publish-url=/api/push")
    stream = SseClient("127.0.0.1", daemon.port)
    stream.request(f"GET /sse?subscribe=room1&authorization={token(key_file, subscribe=['room1'])} HTTP/1.1\r\n"
                   "Connection: keep-alive\r\n\r\n")
    stream.read_handshake()
    r = curl("-m", "5", "-H", f"Authorization: Bearer {token(key_file, publish=['*'])}", "-H",
             "Content-Type: application/json", "-d", '{"to": "*", "data": "everyone"}',
             f"http://127.0.0.1:{daemon.port}/api/push")
    assert json.loads(r.stdout)["ok"] is True
    assert stream.read_event()["data"] == "everyone"


def test_the_python_publisher_keeps_publishing_across_the_daemons_idle_close(daemon_factory, key_file):
    """pyhasses.publish.HttpPublisher against the real daemon: one kept
    connection; when the daemon closes it after --handshake-timeout of
    silence, the next publish goes out on a new one."""
    from pyhasses.publish import HttpPublisher

    daemon = daemon_factory(f"--publisher-key={key_file}", "--handshake-timeout=1")
    stream = daemon.sse("room1")
    publisher = HttpPublisher(f"http://127.0.0.1:{daemon.port}/publish", token(key_file, publish=["room1"]))
    try:
        assert publisher.publish("room1", "first")["delivered"] == 1
        assert publisher.publish("room1", "second")["delivered"] == 1
        daemon.wait_clients(2, established=False)  # the stream and the publisher's connection
        daemon.wait_clients(1, established=False, timeout=5)  # closed after a second of silence
        assert publisher.publish("room1", "third")["delivered"] == 1
    finally:
        publisher.close()
    assert [e["data"] for e in stream.read_events(3)] == ["first", "second", "third"]


def test_signed_stream_and_kept_alive_publishes_over_https(daemon_factory, key_file, tmp_path):
    """The recommended set-up for publishers on other hosts: HTTPS.  The
    same session rules run behind the TLS pump: a signed stream opens, two
    POSTs on one TLS connection publish to it, a bad token is 401."""
    from tls_support import TlsSseClient, client_context, selfsigned, ssl_args

    cert, key = selfsigned(tmp_path / "certs")
    daemon = daemon_factory(*ssl_args(cert, key), f"--subscriber-key={key_file}", f"--publisher-key={key_file}")
    stream = TlsSseClient("127.0.0.1", daemon.port, cert)
    stream.request(f"GET /sse?subscribe=room1 HTTP/1.1\r\nConnection: keep-alive\r\n"
                   f"Authorization: Bearer {token(key_file, subscribe=['room1'])}\r\n\r\n")
    stream.read_handshake()
    tok = token(key_file, publish=["room1"])
    raw = socket.create_connection(("127.0.0.1", daemon.port))
    with client_context(cert).wrap_socket(raw, server_hostname="localhost") as sock:
        rest = b""
        for data in ("one", "two"):
            sock.sendall(post_bytes(tok, f"to=room1&data={data}".encode()))
            head, reply, rest = read_response(sock, rest)
            assert head.startswith("HTTP/1.1 200 OK") and json.loads(reply)["delivered"] == 1
    assert [e["data"] for e in stream.read_events(2)] == ["one", "two"]
    r = curl("-m", "5", "--cacert", str(cert), "-o", "/dev/null", "-w", "%{http_code}", "-H", "Authorization: Bearer x",
             "-d", "to=room1&data=x", f"https://localhost:{daemon.port}/publish")
    assert r.stdout == b"401"


def test_curl_publishes_a_large_message_without_waiting_for_its_expect_timeout(daemon_factory, key_file, tmp_path):
    """curl asks ``Expect: 100-continue`` above 1 MiB; the daemon answers at
    once, so the publish does not wait curl's one-second fallback."""
    daemon = daemon_factory(f"--publisher-key={key_file}", "--max-message-bytes=4194304")
    stream = daemon.sse("room1")
    big = tmp_path / "big"
    big.write_bytes(b"to=room1&data=" + b"y" * (1536 * 1024))
    started = time.monotonic()
    r = curl("-m", "10", "-H", f"Authorization: Bearer {token(key_file, publish=['room1'])}", "-H",
             "Expect: 100-continue", "--expect100-timeout", "5", "--data-binary", f"@{big}",
             f"http://127.0.0.1:{daemon.port}/publish")
    assert json.loads(r.stdout)["delivered"] == 1 and time.monotonic() - started < 3
    assert len(stream.read_event(timeout=10)["data"]) == 1536 * 1024
