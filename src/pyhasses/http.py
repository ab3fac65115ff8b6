"""HTTP on the SSE port: reading request heads and the fixed answers.

Owns: where a head ends, its size limit, parsing it with httptools, the
decision a head leads to (stream, HEAD, OPTIONS or an error status) and the
exact bytes of every answer of PROTOCOL.md 3.  Must not touch: sockets, the
hub.  ``RequestReader.feed`` takes bytes and returns the first head once it
is complete (bytes after it are kept for the connection to judge);
``decide`` turns one head into what the connection must do.
"""

from __future__ import annotations

import dataclasses
import email.utils
import re
import time
from typing import Optional
from urllib.parse import unquote

import httptools

SERVER = b"Server: AsyncSSEServer (Hyper)\r\n"
ALLOW_HEADERS = b"Access-Control-Allow-Headers: cache-control, last-event-id, X-Requested-With\r\n"


def cors_lines(cors: bytes) -> bytes:
    """The CORS block every answer that allows a browser carries."""
    return b"".join((b"Access-Control-Allow-Origin: ", cors, b"\r\n",
                     b"Access-Control-Allow-Methods: GET\r\n", ALLOW_HEADERS))

_BODIES = {
    400: b'<!DOCTYPE HTML PUBLIC "-//IETF//DTD HTML 2.0//EN"><html><body>Bad Request</body></html>',
    404: b'<!DOCTYPE HTML PUBLIC "-//IETF//DTD HTML 2.0//EN"><html><body>Not Found</body></html>',
    431: b'<!DOCTYPE HTML PUBLIC "-//IETF//DTD HTML 2.0//EN"><html><body>Request Header Fields Too Large</body></html>',
    501: b'<!DOCTYPE HTML PUBLIC "-//IETF//DTD HTML 2.0//EN"><html><body>Not Implemented</body></html>',
}
_REASONS = {400: b"Bad Request", 404: b"Not Found", 431: b"Request Header Fields Too Large", 501: b"Not Implemented"}

#: Bytes that never occur in a request line: control characters and non-ASCII.
#: Seeing one answers 400 at once instead of waiting for a line end.
_NOT_REQUEST_LINE = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\xff]")
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_BARE_LF = re.compile(rb"(?<!\r)\n")
#: RFC 9110 5.6.2: a method is a token, case-sensitive ("get" is a method
#: we do not implement, not junk).
_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_LINE = _TOKEN + rb" [!-~]+ HTTP/([0-9](?:\.[0-9])?)"
_REQUEST_LINE = re.compile(_LINE + rb"\Z")
#: A whole head as RFC 9112 has it: request line, header fields (no space
#: before the colon, no control characters, no obsolete line folding).
#: httptools releases differ there: Debian 12's (0.1.1) takes
#: "Connection : keep-alive" as a field, PyPI's refuses it.
_HEAD = re.compile(_LINE + rb"\r\n(?:" + _TOKEN + rb":[\t -~\x80-\xff]*\r\n)*\r\n\Z")
#: What a request line may start with, before its end has come.
_REQUEST_LINE_START = re.compile(rb"(?:" + _TOKEN + rb"(?: [!-~]*(?: (?:H(?:T(?:T(?:P(?:/[0-9.]*)?)?)?)?)?)?)?)?\r?\Z")

KNOWN_METHODS = (b"GET", b"HEAD", b"OPTIONS")
#: HTTP versions a request line may name (RFC 9110 2.5; what llhttp reads).
#: Others are a well-formed request we do not serve: 501.
READABLE_VERSIONS = (b"0.9", b"1.0", b"1.1", b"2.0")


_date_line = [0, b""]  # [second, header line]: formatted once a second


def http_date() -> bytes:
    """The Date header line, formatted once per second (a connection storm
    sends thousands in the same second)."""
    now = int(time.time())
    if now != _date_line[0]:
        _date_line[1] = b"Date: " + email.utils.formatdate(now, usegmt=True).encode() + b"\r\n"
        _date_line[0] = now
    return _date_line[1]


# -- the answers ------------------------------------------------------------
_handshakes: dict = {}  # cors -> (Date line, head): rebuilt once a second


def handshake(cors: bytes) -> bytes:
    date = http_date()
    cached = _handshakes.get(cors)
    if cached is not None and cached[0] is date:
        return cached[1]
    head = _handshake(cors, date)
    if len(_handshakes) > 16:
        _handshakes.clear()
    _handshakes[cors] = (date, head)
    return head


def _handshake(cors: bytes, date: bytes) -> bytes:
    return b"".join((
        b"HTTP/1.1 200 OK\r\n", date, SERVER,
        cors_lines(cors),
        b"Cache-Control: no-cache\r\n",
        b"Keep-Alive: timeout=300, max=100\r\n",
        b"Connection: Keep-Alive\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Content-Type: text/event-stream\r\n",
        b"X-Accel-Buffering: no\r\n",
        b"\r\n",
    ))


def error(status: int, cors: bytes) -> bytes:
    body = _BODIES[status]
    allow = b"Allow: GET, HEAD\r\n" + cors_lines(cors) if status == 501 else b""
    return b"".join((
        b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status]), http_date(), SERVER, allow,
        b"Content-Length: %d\r\n" % len(body),
        b"Connection: close\r\n",
        b"Content-Type: text/html; charset=utf8\r\n\r\n",
        body,
    ))


def unavailable(retry_after: int) -> bytes:
    """503 above the connection cap: come back in ``retry_after`` seconds."""
    body = b'<!DOCTYPE HTML PUBLIC "-//IETF//DTD HTML 2.0//EN"><html><body>Service Unavailable</body></html>'
    return b"".join((
        b"HTTP/1.1 503 Service Unavailable\r\n", http_date(), SERVER,
        b"Retry-After: %d\r\n" % retry_after,
        b"Content-Length: %d\r\n" % len(body),
        b"Connection: close\r\n",
        b"Content-Type: text/html; charset=utf8\r\n\r\n",
        body,
    ))


PROMETHEUS_TEXT = b"text/plain; version=0.0.4; charset=utf-8"
METRICS_STATUS = {200: b"HTTP/1.1 200 OK\r\n", 503: b"HTTP/1.1 503 Service Unavailable\r\n"}


def metrics_answer(body: bytes, status: int = 200, content_type: bytes = PROMETHEUS_TEXT,
                   head_only: bool = False) -> bytes:
    """An answer on the metrics port (the Prometheus text by default);
    HEAD gets the same head without the body."""
    return b"".join((
        METRICS_STATUS[status], http_date(), SERVER,
        b"Content-Type: ", content_type, b"\r\n",
        b"Cache-Control: no-cache\r\n",
        b"Content-Length: %d\r\n" % len(body),
        b"Connection: close\r\n\r\n",
        b"" if head_only else body,
    ))


_AUTH_REASONS = {401: b"Unauthorized", 403: b"Forbidden", 413: b"Content Too Large", 400: b"Bad Request"}


def denied(status: int, reason: str, cors: bytes) -> bytes:
    """401, 403, 413 (or 400) of the access checks (PROTOCOL.md 9): a
    one-line plain-text reason, then close.  The CORS header lets a page's
    script read why it was refused."""
    body = reason.encode("utf-8", "replace").replace(b"\r", b" ").replace(b"\n", b" ")[:300] + b"\n"
    challenge = b'WWW-Authenticate: Bearer realm="pyhasses"\r\n' if status == 401 else b""
    return b"".join((
        b"HTTP/1.1 %d %s\r\n" % (status, _AUTH_REASONS[status]), http_date(), SERVER,
        cors_lines(cors),
        challenge,
        b"Content-Length: %d\r\n" % len(body),
        b"Connection: close\r\n",
        b"Content-Type: text/plain; charset=utf-8\r\n\r\n",
        body,
    ))


def publish_reply(body: bytes, cors: bytes) -> bytes:
    """200 to an HTTP publish: the acknowledgement JSON line of PROTOCOL.md
    5a; the connection stays open for the publisher's next POST.  A refusal
    (``"ok": false``: a cluster whose Redis is away with its spool full)
    is 503, so a publisher that reads only the status sees it."""
    status = b"503 Service Unavailable" if body.startswith(b'{"ok": false') else b"200 OK"
    return b"".join((
        b"HTTP/1.1 ", status, b"\r\n", http_date(), SERVER,
        b"Access-Control-Allow-Origin: ", cors, b"\r\n",
        b"Cache-Control: no-cache\r\n",
        b"Content-Length: %d\r\n" % len(body),
        b"Content-Type: application/json\r\n\r\n",
        body,
    ))


def head_answer(cors: bytes) -> bytes:
    return b"".join((
        b"HTTP/1.1 200 OK\r\n", http_date(),
        b"Accept: text/*\r\n", SERVER,
        b"Cache-control: no-cache\r\n",
        cors_lines(cors),
        b"Allow: GET, HEAD, OPTIONS\r\n",
        b"Keep-Alive: timeout=300, max=100\r\n",
        b"Content-Type: text/event-stream\r\n",
        b"Connection: close\r\n\r\n",
    ))


def options_answer(cors: bytes) -> bytes:
    return b"".join((
        b"HTTP/1.1 200 OK\r\n", http_date(),
        b"Accept: text/*\r\n", SERVER,
        b"Cache-control: no-cache\r\n",
        cors_lines(cors),
        b"Allow: GET, HEAD, OPTIONS\r\n",
        b"Accept-Encoding:\r\n",
        b"Keep-Alive: timeout=300, max=100\r\n",
        b"Content-Length: 0\r\n",
        b"Connection: close\r\n\r\n",
    ))


# -- reading heads ----------------------------------------------------------
class RequestHead:
    """One request head: ``headers`` as sent, ``[(lower-case name, value)]``
    in order; ``fields`` the same by name, a repeated field's values joined
    by ", " (RFC 9110 5.3)."""

    __slots__ = ("method", "target", "version", "headers", "fields")

    def __init__(self, method: bytes, target: bytes, version: str, headers: list, fields: dict):
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.fields = fields

    def header(self, name: bytes) -> Optional[bytes]:
        """The value of the lower-case ``name``, or None."""
        return self.fields.get(name)


@dataclasses.dataclass
class BadHead:
    """Input that is not a request we can read; ``status`` is the answer."""

    status: int
    reason: str


class _Collector:
    """httptools callbacks, keeping what one head says."""

    __slots__ = ("target", "headers", "fields", "done")

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.target = b""
        self.headers = []
        self.fields = {}
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        self.headers.append((name, value))
        fields = self.fields
        fields[name] = fields[name] + b", " + value if name in fields else value

    def on_headers_complete(self) -> None:
        self.done = True


class RequestReader:
    """Buffers bytes up to the empty line that ends a head, within a limit.

    A head split over any number of reads is joined.  Only the first head
    is read: what follows it in the same reads (pipelined requests, a body,
    junk) stays in ``rest`` for the connection, which decides what such
    bytes mean once its stream is established.  Junk is refused as soon as
    it is seen, not when the limit or the handshake timer runs out.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self._buf = bytearray()
        self._searched = 0       # bytes at the front of _buf known to hold no head end
        self._line_done = False  # the first line is complete and is a request line

    def feed(self, data: bytes):
        """The first head once complete (RequestHead, or BadHead for what
        cannot be read), else None.  Each byte is looked at about once,
        however the head is split: a head trickling in byte by byte must
        not cost the loop more than one sent whole."""
        if (not self._buf and 4 < len(data) <= self.limit and 0x41 <= data[0] <= 0x5A
                and data.find(b"\n\r\n") == len(data) - 3 and b"\n\n" not in data):
            # The usual case: one whole head, alone, in one read (it starts
            # with a method and its only empty line is the last one).
            return parse_head(data)
        buf = self._buf
        old = len(buf)
        buf += data
        if not old and buf[0] in b"\r\n":
            # Empty lines before a request are allowed (RFC 9112 2.2): all
            # of them go at once.
            del buf[:len(buf) - len(buf.lstrip(b"\r\n"))]
            old = 0
            if not buf:
                return None
        match = _HEAD_END.search(buf, max(0, self._searched - 3))
        if match is None:
            self._searched = len(buf)
            return self._check_partial(old)
        end = match.end()
        if end > self.limit:
            return BadHead(431, f"request head over {self.limit} bytes")
        head = bytes(buf[:end])
        del buf[:end]
        self._searched = 0
        self._line_done = False
        return parse_head(head)

    def rest(self) -> bytes:
        """The bytes received after the head ``feed`` returned."""
        return bytes(self._buf)

    def _check_partial(self, old: int) -> Optional[BadHead]:
        """Refuse what cannot become a request line as soon as it shows;
        ``old``: bytes of the buffer checked before."""
        buf = self._buf
        if len(buf) > self.limit:
            return BadHead(431, f"request head over {self.limit} bytes")
        if self._line_done:
            return None
        line_end = buf.find(b"\n", old)
        if line_end >= 0:
            if not _REQUEST_LINE.match(buf, 0, line_end - (buf[line_end - 1:line_end] == b"\r")):
                return BadHead(400, "not an HTTP request line")
            self._line_done = True
        elif _NOT_REQUEST_LINE.search(buf, old) or (old < 64 and not _REQUEST_LINE_START.match(buf[:64])):
            # The method and the start of the target tell junk from a request;
            # the rest of a long line is judged when it ends.
            return BadHead(400, "not an HTTP request")
        return None


def parse_head(head: bytes):
    """One complete head (ending in an empty line) to RequestHead or BadHead.

    The one authority on a head, in this order: the request line's grammar
    (400), its version (501), then httptools reads the fields (an unknown
    method is 501 as hasses answers; any other refusal is a bad field,
    400), and the whole head must be RFC 9112's grammar (400): httptools
    releases differ there (Debian 12's takes "Connection : keep-alive")."""
    head = head.lstrip(b"\r\n")
    # Hand-typed requests end lines with LF alone; hasses takes them, and so
    # do we, on every httptools release.
    if head.count(b"\n") != head.count(b"\r\n"):
        head = _BARE_LF.sub(b"\r\n", head)
    # A well-formed head (nearly every one) is judged by one pass of the
    # grammar; only a refused one is looked at again, for the right answer.
    whole = _HEAD.match(head)
    request_line = whole if whole is not None else _REQUEST_LINE.match(head, 0, max(0, head.find(b"\r\n")))
    if request_line is None:
        return BadHead(400, f"malformed request line: {_first_line(head)!r}")
    if request_line.group(1) not in READABLE_VERSIONS:
        return BadHead(501, f"unsupported request line: {_first_line(head)!r}")
    if _spare_parser:
        collector, parser = _spare_parser.pop()
        collector.reset()
    else:
        collector = _Collector()
        parser = httptools.HttpRequestParser(collector)
    reusable = True
    try:
        parser.feed_data(head)
    except httptools.HttpParserUpgrade:
        reusable = False  # "Connection: keep-alive, Upgrade": the head itself is complete
    except httptools.HttpParserInvalidMethodError:
        return BadHead(501, f"unsupported request line: {_first_line(head)!r}")
    except httptools.HttpParserError as exc:
        return BadHead(400, f"malformed header field: {exc}")
    if not collector.done:
        return BadHead(400, "incomplete request head")
    if whole is None:
        return BadHead(400, "malformed request head")
    fields = collector.fields
    version = parser.get_http_version()
    result = RequestHead(parser.get_method(), collector.target, version, collector.headers, fields)
    if (reusable and version == "1.1" and fields.get(b"connection") == b"keep-alive"
            and b"content-length" not in fields and b"transfer-encoding" not in fields):
        # The message ended with its head and asked for nothing that ends
        # or changes the connection: the parser waits at the start of the
        # next message, so the next head may use it.
        _spare_parser.append((collector, parser))
    return result


#: A parser (and its collector) left ready by the last head: making one
#: costs about as much as reading a head, once per connection.  Only the
#: usual stream request (HTTP/1.1, "Connection: keep-alive", no body)
#: returns it here, as llhttp releases differ on what follows a close or
#: an HTTP/1.0 head; anything else leaves the next head a fresh one.
_spare_parser: list = []


def _first_line(head: bytes) -> bytes:
    """A head's request line, as much of it as a log line shows."""
    end = head.find(b"\r\n")
    return without_credentials(head[:end if 0 <= end < 80 else 80])


_CREDENTIAL_PARAM = re.compile(rb"(?i)((?:^|[?&])authorization=)[^&\s]*")
_CREDENTIAL_FIELD = re.compile(rb"(?i)((?:^|\n)(?:authorization|cookie)[ \t]*:)[^\r\n]*")


def without_credentials(data: bytes) -> bytes:
    """``data`` (a request, or part of one) as a log line may show it: the
    values of the ``authorization`` query parameter and of the
    Authorization and Cookie fields hidden (PROTOCOL.md 9: tokens ride
    there, and a log is read by more people than the tokens are for)."""
    return _CREDENTIAL_FIELD.sub(rb"\1 <hidden>", _CREDENTIAL_PARAM.sub(rb"\1<hidden>", data))


# -- deciding what a head asks for -------------------------------------------
@dataclasses.dataclass
class StreamRequest:
    """A valid SSE request: subscribe to ``tokens`` (``*`` for everything)."""

    tokens: list
    uniq_id: str
    agent: str
    head: RequestHead
    #: The id of the last event the client saw (``Last-Event-ID`` header, or
    #: the ``lastEventId`` query parameter of EventSource polyfills); None
    #: for a fresh stream.
    last_event_id: Optional[str] = None


@dataclasses.dataclass
class FixedAnswer:
    """Send ``status``'s answer and close; ``reason`` goes to the log."""

    status: int  # 200 for HEAD and OPTIONS
    kind: str    # "head", "options", "error" or "denied" (access checks, PROTOCOL.md 9)
    reason: str


def fixed_answer(answer: FixedAnswer, cors: bytes) -> bytes:
    """The bytes of a ``FixedAnswer``."""
    if answer.kind == "head":
        return head_answer(cors)
    if answer.kind == "options":
        return options_answer(cors)
    if answer.kind == "denied":  # the access checks': the reason is the body
        return denied(answer.status, answer.reason, cors)
    return error(answer.status, cors)


def origin_form(target: bytes) -> bytes:
    """The path and query of a request target.  RFC 9112 3.2.2: a server
    must accept the absolute form (``http://host/sse?...``), which some
    proxies send; its authority is not checked, as Host is not."""
    if target[:1] == b"/" or not target[:8].lower().startswith((b"http://", b"https://")):
        return target
    rest = target[target.find(b"//") + 2:]
    for at, byte in enumerate(rest):
        if byte in b"/?":
            return rest[at:] if byte == 0x2F else b"/" + rest[at:]
    return b"/"


def decide(head: RequestHead, match_url: str, max_token_length: int, max_subscriptions: int = 64):
    """hasses' order of checks: method, URL (404), version (501), then for
    GET the keep-alive token and the query (400).  More than
    ``max_subscriptions`` distinct tokens in one stream is a 400: one
    anonymous request must not cost the hub thousands of index entries."""
    method = head.method
    if method not in KNOWN_METHODS:
        return FixedAnswer(501, "error", f"method {method.decode(errors='replace')} not implemented")
    path, _, query = origin_form(head.target).partition(b"?")
    url_ok = path.decode("latin-1") == match_url
    if method == b"OPTIONS" and head.target == b"*":
        url_ok = True
    if not url_ok:
        return FixedAnswer(404, "error", f"unknown URL {without_credentials(head.target[:200]).decode('latin-1')!r}")
    if head.version != "1.1":
        return FixedAnswer(501, "error", f"protocol HTTP/{head.version} not supported")
    if has_body(head):
        # A stream request carries no body.  Reading one as "bytes sent
        # after the handshake" would let a body hold a second request that
        # -ra obeys: a proxy that checks only the outer URL would let a
        # client subscribe to any token (issue 15 point 4).
        return FixedAnswer(400, "error", "a stream request with a body")
    if method == b"HEAD":
        return FixedAnswer(200, "head", "HEAD request")
    if method == b"OPTIONS":
        return FixedAnswer(200, "options", "OPTIONS request")
    if not keeps_alive(head):
        return FixedAnswer(400, "error", "no Connection: keep-alive")
    params = parse_query(query)
    if "subscribe" not in params:
        return FixedAnswer(400, "error", 'missing "subscribe" parameter')
    tokens = [t for t in params["subscribe"].split("-") if t]
    too_long = [t for t in tokens if len(t) > max_token_length]
    if too_long:
        return FixedAnswer(400, "error", f"token longer than {max_token_length} characters")
    if max_subscriptions and len(tokens) > max_subscriptions and len(set(tokens)) > max_subscriptions:
        return FixedAnswer(400, "error", f"more than {max_subscriptions} tokens (--max-subscriptions)")
    agent = (head.header(b"user-agent") or b"").decode("utf-8", "replace")
    return StreamRequest(tokens=tokens, uniq_id=params.get("id", "")[:64], agent=agent, head=head,
                         last_event_id=last_event_id(head, params))


def has_body(head: RequestHead) -> bool:
    """RFC 9112 6.3: any Transfer-Encoding, or a Content-Length above 0
    (parse_head already refused a malformed or repeated one)."""
    if head.header(b"transfer-encoding") is not None:
        return True
    length = head.header(b"content-length")
    return length is not None and length.strip().lstrip(b"0") != b""


def last_event_id(head: RequestHead, params: dict) -> Optional[str]:
    """The header wins over the query parameter; empty means none."""
    value = head.header(b"last-event-id")
    text = value.decode("latin-1").strip() if value is not None else params.get("lastEventId", "").strip()
    return text[:64] or None


def keeps_alive(head: RequestHead) -> bool:
    value = head.header(b"connection")
    if value is None:
        return False
    if value == b"keep-alive":  # what nearly every client sends
        return True
    return any(t.strip().lower() == b"keep-alive" for t in value.split(b","))


def parse_query(query: bytes) -> dict:
    """``subscribe`` and ``id`` (and anything else), percent-decoded; the
    last of a repeated name wins, as in hasses."""
    params = {}
    for item in query.split(b"&"):
        name, eq, value = item.partition(b"=")
        if eq:
            params[unquote(name.decode("latin-1"))] = unquote(value.decode("latin-1"), errors="replace")
    return params
