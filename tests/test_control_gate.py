"""The control connection's gate with bytes only: other protocols refused
before any part runs, the ``auth SECRET`` first part (PROTOCOL.md 9)."""

from __future__ import annotations

import pytest

from pyhasses.control import HTTP_REQUEST, TLS_RECORD, Framer, Gate, Oversize, Refusal, foreign_protocol


def gate(secret=None):
    return Gate(Framer(b";", 1 << 20), secret)


@pytest.mark.parametrize("first", [
    b"GET / HTTP/1.1\r\n", b"GET /;room1=x HTTP/1.1\r\nHost: x\r\n\r\n", b"POST / HTTP/1.1\r\n\r\nroom1=x",
    b"get /x http/1.0\r\n", b"PrOpFiNd * HtTp/1.1\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"OPTIONS http://127.0.0.1:8085/ HTTP/1.1\r\n", b"BREW /pot HTTP/1.1",
    b"\r\n\r\nGET / HTTP/1.1\r\n", b"GET\t/\tHTTP/1.1\r\n", b"GET  /x  HTTP/1.1", b"GET /\r\n",
    b"post /;room1=x", b"Delete *", b"PUT http://x/", b"CONNECT example.com:443 HTTP/1.1\r\n",
])
def test_an_http_request_line_is_refused(first):
    assert foreign_protocol(first) == HTTP_REQUEST


def test_a_tls_record_is_refused():
    assert foreign_protocol(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03") == TLS_RECORD
    assert foreign_protocol(b"\x16") is None
    assert foreign_protocol(b"\x16\x03") == TLS_RECORD


@pytest.mark.parametrize("first", [
    b"room1=hello", b"room1=GET / HTTP/1.1", b"status\n", b"tcpstatus", b'{"to": "a", "data": "b"}\n',
    b"auth s3cret\n", b"*=all;room1=x", b"kick:alice\n", b"a b\n", b"news*=x HTTP/1.1",
    b"my room=GET / HTTP/1.1", b"gettoken=x", b"\n\nroom1=x", b"\x16room=x",
])
def test_control_input_passes(first):
    assert foreign_protocol(first, final=True) == ""


@pytest.mark.parametrize("start", [b"G", b"GET", b"GET ", b"FOO /", b"FOO /x ", b"FOO /x HT", b"FOO /x HTTP",
                                   b"\r\n", b"\r\nGE"])
def test_a_request_line_start_waits_for_more(start):
    assert foreign_protocol(start) is None


def test_a_part_that_cannot_be_a_request_line_is_judged_at_once():
    assert foreign_protocol(b"room1") is None          # still could be a method
    assert foreign_protocol(b"room1=") == ""           # '=' is no method character
    assert foreign_protocol(b"status\n") == ""         # a line end before any space
    assert foreign_protocol(b"auth secret\n") == ""    # a line without HTTP/


def test_split_http_request_runs_nothing_of_it():
    g = gate()
    out = []
    for byte in b"POST / HTTP/1.1\r\nContent-Length: 7\r\n\r\nroom1=x":
        out += g.feed(bytes([byte]))
    assert out == [Refusal("protocol", out[0].reason)] and "HTTP" in out[0].reason
    assert g.feed(b";room2=y\n") == [] and g.finish() == []


def test_control_input_flows_unchanged_after_the_gate():
    g = gate()
    assert g.feed(b"room") == []
    assert g.feed(b"1=a;room2=b\nsta") == [b"room1=a", b"room2=b"]
    assert g.finish() == [b"sta"]


def test_an_undecided_start_is_control_input_at_the_idle_flush():
    g = gate()
    assert g.feed(b"FOO /x") == [] and g.pending == 6
    assert g.finish() == [b"FOO /x"]


@pytest.mark.parametrize("start", [b"G", b"GET", b"get", b"GET ", b"Post\t", b"\r\nPROPF", b"OPTIONS"])
def test_the_start_of_a_known_method_waits_out_a_pause(start):
    g = gate()
    assert g.feed(start) == [] and g.finish(idle=True) == []
    out = g.feed((b"" if start.endswith((b" ", b"\t")) else b" ") + b"/;room1=x HTTP/1.1\r\n")
    assert len(out) == 1 and isinstance(out[0], Refusal)


@pytest.mark.parametrize("start", [b"status", b"tcpstatus", b"room1", b"GETX", b"GET x", b"clientlist"])
def test_any_other_start_is_a_part_at_the_pause(start):
    g = gate()
    assert g.feed(start) == [] and g.finish(idle=True) == [start]


def test_the_start_of_a_method_at_end_of_input_is_a_part():
    g = gate()
    assert g.feed(b"GET") == [] and g.finish() == [b"GET"]


def test_an_endless_request_line_is_refused_at_the_sniff_limit():
    g = gate()
    out = g.feed(b"GET /" + b"a" * 20000)
    assert len(out) == 1 and isinstance(out[0], Refusal)


def test_the_secret_must_be_the_first_part():
    g = gate(b"s3cret")
    assert g.feed(b"auth s3cret;room1=x\n") == [b"room1=x"]
    assert g.feed(b"auth s3cret\n") == [b"auth s3cret"]  # only the first part is the password


@pytest.mark.parametrize("first", [b"room1=x;auth s3cret\n", b"auth s3cre\n", b"auth s3cretX\n", b"auth  s3cret\n",
                                   b"AUTH s3cret\n", b"tcpstatus\n", b"auth\n"])
def test_anything_else_first_refuses_the_connection_with_nothing_run(first):
    g = gate(b"s3cret")
    out = g.feed(first + b"room2=y\n")
    assert len(out) == 1 and isinstance(out[0], Refusal) and out[0].kind == "auth"
    assert g.feed(b"room3=z\n") == [] and g.finish() == []


def test_an_http_request_is_refused_before_the_secret_is_looked_at():
    g = gate(b"s3cret")
    assert g.feed(b"GET /auth%20s3cret HTTP/1.1\r\n")[0].kind == "protocol"


def test_the_secret_split_over_reads_and_given_at_end_of_input():
    g = gate(b"s3cret")
    assert g.feed(b"au") == [] and g.feed(b"th s3") == []
    assert g.finish()[0].kind == "auth"  # the secret was wrong (cut short) ...
    g = gate(b"s3cret")
    g.feed(b"auth s3")
    assert g.feed(b"cret") == []
    assert g.finish() == []  # ... or right, and nothing follows it
    assert g.refused is None


def test_an_oversize_first_part_is_no_secret():
    g = Gate(Framer(b";", 16), b"s3cret")
    out = g.feed(b"auth " + b"x" * 40 + b"\n")
    assert isinstance(out[0], Refusal)
    assert not any(isinstance(item, Oversize) for item in out)


def test_a_flood_of_empty_lines_is_not_held_forever():
    g = gate()
    assert g.feed(b"\r\n" * 100) == []
    assert g.feed(b"\r\n" * 10000) == [] and g.pending == 0  # judged: control input, empty parts dropped
    assert g.feed(b"room1=x\n") == [b"room1=x"]


def test_a_long_token_before_its_equals_sign_is_control_input():
    """A method is short: a first part of tens of KB of token characters (a
    publisher's over-long id, refused later with a reason) is no request."""
    assert foreign_protocol(b"x-" + b"u" * 40000) == ""
    assert foreign_protocol(b"u" * 33) == ""
    assert foreign_protocol(b"u" * 32) is None  # may still be a method
    g = gate()
    out = g.feed(b"x-" + b"u" * 40000 + b"=m\nroom1=after\n")
    assert out == [b"x-" + b"u" * 40000 + b"=m", b"room1=after"]
