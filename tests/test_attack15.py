"""Attacks from outside that once hurt a publisher or a client (issue 15,
second round): each test is one attack on a real daemon over real sockets."""

import json
import socket

from support import SseClient


def stream(d, subscribe) -> SseClient:
    client = d.sse(subscribe)
    d.wait_clients(1)
    return client


def test_an_oversize_json_part_waiting_for_its_ack_gets_an_error_and_the_connection_goes_on(daemon_factory):
    d = daemon_factory()
    c = stream(d, "t")
    oversize = b'{"ack": true, "to": "t", "data": "' + b"x" * (8 << 20) + b'"}\n'
    good = json.dumps({"to": "t", "data": "after", "ack": True}).encode() + b"\n"
    with socket.create_connection(("127.0.0.1", d.cport), timeout=10) as s:
        s.sendall(oversize)
        replies = s.makefile("rb")
        bad = json.loads(replies.readline())
        assert bad["ok"] is False and "over the limit" in bad["error"]
        s.sendall(good)
        assert json.loads(replies.readline())["ok"] is True
    assert c.read_event()["data"] == "after"
    assert "over the limit" in d.log()
