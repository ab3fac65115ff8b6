"""HTTPS streams on the real daemon: verifying clients, curl, every fixed
answer over TLS with close_notify, status output and the client list."""

import re
import shutil
import ssl
import subprocess

import pytest

from support import wait_until
from tls_support import TlsSseClient, open_stream, selfsigned, ssl_args


@pytest.fixture
def pair(tmp_path):
    return selfsigned(tmp_path / "certs")


@pytest.fixture
def https(daemon_factory, pair):
    def start(*extra):
        return daemon_factory(*ssl_args(*pair), *extra)
    return start


@pytest.mark.parametrize("version, name", [(ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")])
def test_verifying_client_receives_handshake_and_events(https, pair, version, name):
    daemon = https()
    client = open_stream(daemon, pair[0], version=version)
    assert client.sock.version() == name
    assert client.sock.selected_alpn_protocol() == "http/1.1"
    assert b"Content-Type: text/event-stream\r\n" in client.head
    daemon.control("room1=first;room1=second\n")
    assert [e["data"] for e in client.read_events(2)] == ["first", "second"]
    client.close()


@pytest.mark.parametrize("host", ["localhost", "::1"])
def test_certificate_names_localhost_and_ipv6_loopback(https, pair, host):
    daemon = https()
    client = open_stream(daemon, pair[0], host=host)
    daemon.control("room1=named\n")
    assert client.read_event()["data"] == "named"
    client.close()


def test_many_events_and_a_large_one_arrive_intact(https, pair):
    daemon = https()
    client = open_stream(daemon, pair[0])
    big = "x" * 300_000
    daemon.control("".join(f"room1=m{i}\n" for i in range(200)) + f"room1={big}\n")
    events = client.read_events(201, timeout=10)
    assert [e["data"] for e in events[:200]] == [f"m{i}" for i in range(200)]
    assert events[200]["data"] == big
    client.close()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed (scripts/deps.d/tls.sh)")
def test_curl_with_cacert_receives_an_event(https, pair):
    daemon = https()
    curl = subprocess.Popen(
        ["curl", "-sN", "--max-time", "5", "--cacert", str(pair[0]), "-H", "Connection: keep-alive",
         f"https://localhost:{daemon.port}/sse?subscribe=room1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        daemon.wait_clients(1, timeout=10)
        daemon.control("room1=hello curl\n")
        out, err = curl.communicate(timeout=15)
    finally:
        if curl.poll() is None:
            curl.kill()
            curl.wait(5)
    assert b"data: hello curl\n" in out, (out, err)


ANSWERS = [
    ("GET /sse?subscribe=a HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 400 Bad Request\r\n"),
    ("GET /elsewhere?subscribe=a HTTP/1.1\r\nConnection: keep-alive\r\n\r\n", b"HTTP/1.1 404 Not Found\r\n"),
    ("POST /sse HTTP/1.1\r\nContent-Length: 0\r\n\r\n", b"HTTP/1.1 501 Not Implemented\r\n"),
    ("HEAD /sse HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 200 OK\r\n"),
    ("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 200 OK\r\n"),
]


@pytest.mark.parametrize("request_text, status_line", ANSWERS, ids=["400", "404", "501", "HEAD", "OPTIONS"])
def test_every_answer_travels_over_tls_then_close_notify(https, pair, request_text, status_line):
    daemon = https()
    client = TlsSseClient("127.0.0.1", daemon.port, pair[0])
    client.request(request_text)
    answer = client.read_until_closed()  # raises SSLEOFError without close_notify
    assert answer.startswith(status_line), answer
    if request_text.startswith("OPTIONS"):
        assert b"Allow: GET, HEAD, OPTIONS\r\n" in answer
    client.close()


def test_stream_lifetime_ends_with_last_chunk_and_close_notify(https, pair):
    daemon = https("--stream-lifetime", "1")
    client = open_stream(daemon, pair[0])
    assert client.read_chunk(timeout=5) == b""  # the terminating chunk
    client.read_until_closed()
    client.close()


def test_handshake_timeout_after_tls_sends_close_notify(https, pair):
    daemon = https("--handshake-timeout", "1")
    client = TlsSseClient("127.0.0.1", daemon.port, pair[0])
    client.request("GET /sse?subscribe=a HTTP/1.1\r\n")  # never finished
    assert client.read_until_closed() == b""
    daemon.wait_log(r"no complete request within 1 s")
    client.close()


def test_daemon_stop_ends_tls_streams_properly(https, pair):
    daemon = https()
    client = open_stream(daemon, pair[0])
    daemon.wait_clients(1)
    assert daemon.stop() == 0
    assert client.read_chunk() == b""
    client.read_until_closed()
    client.close()


def test_client_close_notify_is_answered(https, pair):
    daemon = https()
    client = open_stream(daemon, pair[0])
    daemon.wait_clients(1)
    client.sock = client.sock.unwrap()  # sends close_notify, waits for the daemon's
    daemon.wait_clients(0)
    client.close()


def test_status_tcpstatus_and_client_list_show_tls(https, pair):
    daemon = https()
    client = open_stream(daemon, pair[0], version=ssl.TLSVersion.TLSv1_2)
    status = daemon.control_json("tcpstatus")
    assert status["mode"] == "SSL encrypted (https)"
    assert status["certsubject"] == "O=pyhasses self-signed,CN=localhost"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", status["certexpires"])
    for key in ("version", "runningtime", "loglevel", "allconncli", "sseconncli", "maxconncli",
                "msgproccnt", "msgsendcnt"):
        assert key in status
    daemon.control("status\nclientlist\n")
    daemon.wait_log(r"Certificate expires: ")
    log = daemon.log()
    assert "Mode: SSL encrypted (https)" in log
    assert "Certificate: O=pyhasses self-signed,CN=localhost" in log
    cipher = client.sock.cipher()[0]
    wait_until(lambda: f"TLS: TLSv1.2 cipher {cipher} (open)" in daemon.log(), what="the client list's TLS line")
    assert re.search(r"#1 - <\d+> info: 127\.0\.0\.1:\d+ S:SSE .* SSL:Yes", log)
    client.close()


def test_plain_daemon_reports_unencrypted(daemon):
    status = daemon.control_json("tcpstatus")
    assert status["mode"] == "unencrypted (http)"
    assert "certsubject" not in status


def test_heartbeat_comments_are_encrypted_too(https, pair):
    daemon = https("--heartbeat", "0.3")
    client = open_stream(daemon, pair[0])
    payload = client.read_chunk(timeout=5)
    while payload.startswith(b"retry:"):  # the stream's retry hint comes first
        payload = client.read_chunk(timeout=5)
    assert payload.startswith(b":"), payload
    daemon.control("room1=between heartbeats\n")
    assert client.read_event()["data"] == "between heartbeats"
    client.close()
