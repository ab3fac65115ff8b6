"""Request heads and answers on the SSE port, bytes only (PROTOCOL.md 3)."""

import re

from pyhasses import http

URL = "/sse"
GOOD = b"GET /sse?subscribe=room1-room2&id=u1 HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nUser-Agent: UA/1\r\n\r\n"


def feed_all(*parts, limit=32768):
    reader = http.RequestReader(limit)
    out = []
    for p in parts:
        item = reader.feed(p)
        if item is not None:
            out.append(item)
    return out


def decide(raw):
    [head] = feed_all(raw)
    assert isinstance(head, http.RequestHead), head
    return http.decide(head, URL, 128)


def test_head_split_anywhere_is_joined():
    lf_only = GOOD.replace(b"\r\n", b"\n")
    for raw in (GOOD, lf_only, b"\r\n\r\n" + GOOD):
        for cut in range(1, len(raw)):
            out = feed_all(raw[:cut], raw[cut:])
            assert len(out) == 1 and isinstance(out[0], http.RequestHead), (raw[:cut], out)
        out = feed_all(*(raw[i:i + 1] for i in range(len(raw))))  # byte by byte
        assert len(out) == 1 and isinstance(out[0], http.RequestHead), raw
        assert out[0].fields[b"user-agent"] == b"UA/1"


def test_each_head_is_read_on_its_own_whatever_came_before():
    """parse_head keeps a parser for the next head when the last one left
    it clean: a head with a body, an upgrade, a close, a refused one or
    HTTP/1.0 before must change nothing in how the next head reads."""
    before = [
        b"GET /sse?subscribe=a HTTP/1.1\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\n",
        b"POST /sse HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET /sse?subscribe=a HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /sse?subscribe=a HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"GET /sse?subscribe=a HTTP/1.0\r\n\r\n",
        b"GET /sse?subscribe=a HTTP/1.1\r\nBad Field: x\r\n\r\n",
        b"GET /sse?subscribe=secret HTTP/1.1\r\nCookie: c=1\r\nConnection: keep-alive\r\n\r\n",
        GOOD,
        b"GET /sse?subscribe=a HTTP/1.1\r\nConnection: keep-alive\r\n\r\n",
        b"HEAD /sse HTTP/1.1\r\nConnection: keep-alive\r\n\r\n",
    ]
    for first in before:
        for second in before:
            alone = http.parse_head(second)
            http.parse_head(first)
            after = http.parse_head(second)
            assert type(after) is type(alone), (first, second, after, alone)
            if isinstance(alone, http.RequestHead):
                assert (after.method, after.target, after.version, after.headers, after.fields) == (
                    alone.method, alone.target, alone.version, alone.headers, alone.fields), (first, second)
            else:
                assert (after.status, after.reason) == (alone.status, alone.reason), (first, second)


def test_any_number_of_empty_lines_before_a_request():
    reader = http.RequestReader(4096)
    for _ in range(100):
        assert reader.feed(b"\r\n" * 1000) is None  # more than the limit in all: not a head
    assert isinstance(reader.feed(GOOD), http.RequestHead)


def test_incomplete_head_waits():
    assert feed_all(GOOD[:-2]) == []


def test_stream_request_fields():
    req = decide(GOOD)
    assert isinstance(req, http.StreamRequest)
    assert req.tokens == ["room1", "room2"]
    assert req.uniq_id == "u1"
    assert req.agent == "UA/1"


def test_query_percent_decoded_and_any_order():
    req = decide(b"GET /sse?id=a%20b&subscribe=caf%C3%A9-x%2Fy HTTP/1.1\r\nConnection: keep-alive\r\n\r\n")
    assert req.tokens == ["café", "x/y"]
    assert req.uniq_id == "a b"


def test_bare_lf_head_accepted():
    out = feed_all(b"GET /sse?subscribe=a HTTP/1.1\nConnection: keep-alive\n\n")
    assert isinstance(http.decide(out[0], URL, 128), http.StreamRequest)


def test_connection_token_case_and_list():
    for value in (b"Keep-Alive", b"KEEP-ALIVE", b"keep-alive, Upgrade", b"Upgrade,keep-alive"):
        raw = b"GET /sse?subscribe=a HTTP/1.1\r\nconnection: " + value + b"\r\n\r\n"
        assert isinstance(decide(raw), http.StreamRequest), value


def test_upgrade_header_does_not_break_head():
    raw = b"GET /sse?subscribe=a HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n"
    assert isinstance(decide(raw), http.StreamRequest)


def test_missing_keepalive_is_400():
    d = decide(b"GET /sse?subscribe=a HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert (d.status, d.kind) == (400, "error")
    d = decide(b"GET /sse?subscribe=a HTTP/1.1\r\n\r\n")
    assert d.status == 400


def test_missing_subscribe_is_400():
    assert decide(b"GET /sse?id=1 HTTP/1.1\r\nConnection: keep-alive\r\n\r\n").status == 400
    assert decide(b"GET /sse HTTP/1.1\r\nConnection: keep-alive\r\n\r\n").status == 400


def test_wrong_path_is_404():
    for target in (b"/", b"/ssex?subscribe=a", b"/sse/x", b"/other?subscribe=a"):
        d = decide(b"GET " + target + b" HTTP/1.1\r\nConnection: keep-alive\r\n\r\n")
        assert d.status == 404, target


def test_http10_is_501():
    assert decide(b"GET /sse?subscribe=a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").status == 501


def test_other_methods_are_501():
    for m in (b"POST", b"PUT", b"DELETE", b"TRACE", b"PATCH"):
        d = decide(m + b" /sse HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        assert d.status == 501, m


def test_unknown_method_token_is_501_not_400():
    # RFC 9110: a method is any token, case-sensitive; hasses answers 501 too.
    for method in (b"FOO", b"get", b"Get", b"M-SEARCH", b"x.y"):
        for cut in (None, 3):  # whole, and split before the line ends
            raw = method + b" /sse HTTP/1.1\r\nConnection: keep-alive\r\n\r\n"
            out = feed_all(raw) if cut is None else feed_all(raw[:cut], raw[cut:])
            assert len(out) == 1, (method, cut, out)
            got = out[0]
            status = got.status if isinstance(got, http.BadHead) else http.decide(got, URL, 128).status
            assert status == 501, (method, cut, got)


def test_malformed_request_line_is_400_with_every_httptools():
    for line in (b"GET /s\x7fse HTTP/1.1", b"GET /sse HTTP/1.1 x", b"GET /sse\tHTTP/1.1"):
        [bad] = feed_all(line + b"\r\nConnection: keep-alive\r\n\r\n")
        assert isinstance(bad, http.BadHead) and bad.status == 400, (line, bad)


def test_malformed_header_field_is_400_not_501():
    # RFC 9112 5.1: whitespace between a field name and its colon is a bad request.
    for field in (b"Connection : keep-alive", b"Conn ection: keep-alive", b"\x01x: y", b": empty-name",
                  b"X: a\x01b", b" folded", b"X: a\x7fb"):
        [bad] = feed_all(b"GET /sse?subscribe=a HTTP/1.1\r\n" + field + b"\r\n\r\n")
        assert isinstance(bad, http.BadHead) and bad.status == 400, (field, bad)


def test_head_and_options():
    assert decide(b"HEAD /sse HTTP/1.1\r\n\r\n").kind == "head"
    assert decide(b"OPTIONS /sse HTTP/1.1\r\n\r\n").kind == "options"
    assert decide(b"OPTIONS * HTTP/1.1\r\n\r\n").kind == "options"
    assert decide(b"HEAD * HTTP/1.1\r\n\r\n").status == 404


def test_junk_refused_at_once():
    for junk in (b"\x00", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"hello there\n", b"GET /\x00",
                 b"hello, there", b"GET /sse HTTQ", b"GET  /sse"):
        out = feed_all(junk)
        assert len(out) == 1 and isinstance(out[0], http.BadHead) and out[0].status == 400, junk


def test_oversize_head_is_431():
    out = feed_all(b"GET /sse HTTP/1.1\r\nX: " + b"a" * 5000, limit=4096)
    assert isinstance(out[0], http.BadHead) and out[0].status == 431


def test_long_token_refused():
    raw = b"GET /sse?subscribe=" + b"a" * 129 + b" HTTP/1.1\r\nConnection: keep-alive\r\n\r\n"
    assert decide(raw).status == 400
    raw = b"GET /sse?subscribe=" + b"a" * 128 + b" HTTP/1.1\r\nConnection: keep-alive\r\n\r\n"
    assert decide(raw).tokens == ["a" * 128]


def test_only_the_first_head_is_read_and_the_rest_kept():
    # What follows the head is the connection's to judge (ignored on a
    # stream, a re-init under -ra), never a second request read here.
    reader = http.RequestReader(32768)
    for tail in (GOOD, b"xyz", b"\x00\x01", b"POST / HTTP/1.1\r\n\r\n"):
        reader = http.RequestReader(32768)
        head = reader.feed(GOOD + tail)
        assert isinstance(head, http.RequestHead) and reader.rest() == tail
    reader = http.RequestReader(32768)
    assert reader.feed(b"\r\n" + GOOD[:10]) is None
    assert isinstance(reader.feed(GOOD[10:]), http.RequestHead) and reader.rest() == b""


def test_handshake_bytes():
    got = http.handshake(b"https://example.com")
    got = re.sub(rb"Date: [^\r]*\r\n", b"Date: X\r\n", got)
    assert got == (
        b"HTTP/1.1 200 OK\r\nDate: X\r\nServer: AsyncSSEServer (Hyper)\r\n"
        b"Access-Control-Allow-Origin: https://example.com\r\n"
        b"Access-Control-Allow-Methods: GET\r\n"
        b"Access-Control-Allow-Headers: cache-control, last-event-id, X-Requested-With\r\n"
        b"Cache-Control: no-cache\r\nKeep-Alive: timeout=300, max=100\r\nConnection: Keep-Alive\r\n"
        b"Transfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\nX-Accel-Buffering: no\r\n\r\n"
    )


def test_error_answers_have_consistent_length():
    for status in (400, 404, 431, 501):
        raw = http.error(status, b"*")
        head, _, body = raw.partition(b"\r\n\r\n")
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
        assert length == len(body)
        assert b"Connection: close\r\n" in head
        assert head.endswith(b"Content-Type: text/html; charset=utf8")


def test_date_format():
    assert re.fullmatch(rb"Date: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT\r\n", http.http_date())


def test_absolute_form_targets_are_accepted():
    # RFC 9112 3.2.2: a server must accept them (some proxies send them).
    for target in (b"http://example.com/sse?subscribe=a", b"HTTPS://h:8443/sse?subscribe=a"):
        req = decide(b"GET " + target + b" HTTP/1.1\r\nConnection: keep-alive\r\n\r\n")
        assert isinstance(req, http.StreamRequest) and req.tokens == ["a"], target
    for target in (b"http://h?subscribe=a", b"http://h", b"http://h/other/sse?subscribe=a", b"ftp://h/sse"):
        assert decide(b"GET " + target + b" HTTP/1.1\r\nConnection: keep-alive\r\n\r\n").status == 404, target
    assert http.origin_form(b"http://h?x=1") == b"/?x=1" and http.origin_form(b"/sse") == b"/sse"


def test_credentials_are_hidden_from_what_a_log_line_shows():
    from pyhasses.http import without_credentials

    assert without_credentials(b"GET /sse?subscribe=a&authorization=eyJ.a.b HTTP/1.1") == \
        b"GET /sse?subscribe=a&authorization=<hidden> HTTP/1.1"
    assert without_credentials(b"/x?Authorization=t&id=1") == b"/x?Authorization=<hidden>&id=1"
    request = b"POST /p HTTP/1.1\r\nauthorization: Bearer eyJ.x.y\r\nCOOKIE: c=eyJ\r\nHost: h\r\n\r\n"
    assert without_credentials(request) == \
        b"POST /p HTTP/1.1\r\nauthorization: <hidden>\r\nCOOKIE: <hidden>\r\nHost: h\r\n\r\n"
    assert without_credentials(b"GET /sse?subscribe=authorization HTTP/1.1") == b"GET /sse?subscribe=authorization HTTP/1.1"
