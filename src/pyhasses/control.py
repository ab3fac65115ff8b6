"""The control protocol of the TCP control port and the FIFO.

Owns: framing bytes into parts (delimiter, line end, end of input, idle
flush, size limit), telling a part's kind (command, JSON message, legacy
``TOKEN=MESSAGE``), and carrying it out against the hub.  Must not touch:
sockets, descriptors, timers: the connection layer feeds bytes, tells us
about idleness and end of input, and sends the replies we return.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import re
import time
from typing import Callable, List, Optional, Union

from . import sse
from .hub import RoutingError, Target, distinct_targets, parse_target

# -- framing ---------------------------------------------------------------


@dataclasses.dataclass
class Oversize:
    """A part passed the limit and was dropped; the next one is unharmed.
    ``json`` says it began with ``{``: its writer may wait for an answer."""

    size: int
    json: bool = False


class Framer:
    """Cuts a byte stream into parts.

    A part ends at the separator, at LF (a CR before it is dropped) or, by
    ``finish()``, at end of input or after the writer went idle.  A part that
    starts with ``{`` is JSON and ends only at a line end, so its payload may
    hold the separator.  ``feed`` returns parts (bytes) and ``Oversize``
    notices, in order.
    """

    def __init__(self, separator: bytes, limit: int):
        self._legacy_end = re.compile(b"[" + re.escape(separator) + b"\n]")
        self.limit = limit
        self._buf = bytearray()
        self._scanned = 0          # bytes of _buf known to hold no terminator
        self._dropping = None      # None, or "json"/"legacy" while skipping an oversize part
        self._dropped = 0

    @property
    def pending(self) -> int:
        """Bytes of an unterminated part held back."""
        return len(self._buf)

    def feed(self, data: bytes) -> list:
        # One pass over the buffer by position and one deletion at the end:
        # a publisher's read often holds dozens of parts.
        buf = self._buf
        buf += data
        out: list = []
        pos = 0
        size = len(buf)
        legacy_end = self._legacy_end.search
        tail = False
        while pos < size:
            dropping = self._dropping
            json_part = dropping == "json" if dropping is not None else buf[pos] == 0x7B  # "{"
            start = self._scanned if self._scanned > pos else pos
            if json_part:
                end = buf.find(b"\n", start)
            else:
                match = legacy_end(buf, start)
                end = match.start() if match else -1
            if end < 0:
                if dropping is not None:
                    self._dropped += size - pos
                    pos = size
                elif size - pos > self.limit:
                    self._dropping = "json" if json_part else "legacy"
                    self._dropped = size - pos
                    pos = size
                else:
                    tail = True
                break
            if dropping is not None:
                out.append(Oversize(self._dropped + end - pos, dropping == "json"))
                self._dropping = None
            else:
                self._emit(bytes(buf[pos:end]), out)
            self._scanned = 0
            pos = end + 1
        del buf[:pos]
        self._scanned = len(buf) if tail else 0
        return out

    def finish(self) -> list:
        """End of input or an idle writer: the held tail is a whole part."""
        out: list = []
        if self._dropping is not None:
            out.append(Oversize(self._dropped + len(self._buf), self._dropping == "json"))
        elif self._buf:
            self._emit(bytes(self._buf), out)
        self._buf.clear()
        self._scanned = 0
        self._dropping = None
        return out

    def _emit(self, part: bytes, out: list) -> None:
        if part.endswith(b"\r"):
            part = part[:-1]
        if len(part) > self.limit:
            out.append(Oversize(len(part), part[:1] == b"{"))
        elif part.strip():
            out.append(part)


# -- the gate of a socket's control connection ------------------------------
#
# PROTOCOL.md 9: a control connection whose first bytes begin an HTTP request
# line or a TLS record is another protocol aimed at us (a browser page's
# no-cors fetch, a server-side request forgery, a TLS client on the wrong
# port).  Framing such bytes would run ``room1=x HTTP/1.1`` as a message, so
# the judgement comes before the framer sees anything.

_TCHAR = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]"
#: METHOD SP target SP HTTP/ : any method (a token), any case; lenient
#: parsers take tabs and runs of blanks, so do we.  A method is a short
#: token: a control part that starts with a long run of token characters
#: (a long id before its '=') is no request line.
_METHOD = _TCHAR + rb"{1,32}"
_HTTP_LINE = re.compile(_METHOD + rb"[ \t]+[^\s]+[ \t]+[Hh][Tt][Tt][Pp]/")
#: Methods every HTTP library knows.
KNOWN_METHODS = (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE",
                 b"PROPFIND")
#: A known method, then a target: HTTP even without a version (HTTP/0.9
#: style), since such a part is never a control command.
_KNOWN_METHOD = re.compile(rb"(?i:" + b"|".join(KNOWN_METHODS) + rb")[ \t]+(?:[/*]|(?i:https?)://)")
#: What may still become such a line with more bytes.
_HTTP_LINE_START = re.compile(
    _TCHAR + rb"{0,32}\Z|" + _METHOD + rb"[ \t]+[^\s]*\Z|"
    + _METHOD + rb"[ \t]+[^\s]+[ \t]+(?:[Hh](?:[Tt](?:[Tt](?:[Pp])?)?)?)?\Z")
#: An undecided start longer than this is judged a request line (a control
#: part never looks like ``WORD SP TARGET`` for this long).
SNIFF_LIMIT = 16 * 1024

HTTP_REQUEST = "an HTTP request"
TLS_RECORD = "a TLS record"


def foreign_protocol(first: bytes, final: bool = False) -> Optional[str]:
    """What the first bytes of a control connection are: ``HTTP_REQUEST``,
    ``TLS_RECORD``, ``""`` for control input, or None while more bytes are
    needed to tell (``final``: no more will come soon, so decide)."""
    if first[:1] == b"\x16":
        if len(first) == 1:
            return "" if final else None
        return TLS_RECORD if first[1] == 0x03 else ""
    # RFC 9112 2.2: empty lines before a request line are allowed.
    stripped = first.lstrip(b"\r\n")
    if not stripped:
        # Empty lines are no request; nor control input, and not held forever.
        return "" if final or len(first) > SNIFF_LIMIT else None
    first = stripped
    if _HTTP_LINE.match(first) or _KNOWN_METHOD.match(first):
        return HTTP_REQUEST
    if len(first) > SNIFF_LIMIT:
        return HTTP_REQUEST if _HTTP_LINE_START.match(first, 0, SNIFF_LIMIT) else ""
    if final or not _HTTP_LINE_START.match(first):
        return ""
    return None


def may_begin_known_method(start: bytes) -> bool:
    """``G``, ``GET``, ``post `` (after any empty lines): what a request line
    split over a pause can have sent so far, and never a control part (no
    command begins so, and a message needs its '=')."""
    start = start.lstrip(b"\r\n")
    word = start.rstrip(b" \t").upper()
    if not word:
        return False
    if len(word) < len(start):  # blanks after it: the whole method came
        return word in KNOWN_METHODS
    return any(method.startswith(word) for method in KNOWN_METHODS)


@dataclasses.dataclass(frozen=True)
class Refusal:
    """Close this connection with nothing run; ``reason`` for the log,
    ``kind`` for the counters ("protocol" or "auth")."""

    kind: str
    reason: str


@dataclasses.dataclass
class AccessCounters:
    """What the access checks refused, under their tcpstatus keys."""

    crossprotocol: int = 0      # control connections speaking HTTP or TLS
    authfailed: int = 0         # control connections without the secret
    controlrefused: int = 0     # control connections above --max-control-clients
    controlidle: int = 0        # control connections closed for silence
    kicked: int = 0             # streams closed by kick commands
    streamdenied: int = 0       # streams answered 401 or 403 (--subscriber-key)
    publishdenied: int = 0      # HTTP publishes refused (401, 403, 400, 413)

    def count(self, kind: str) -> None:
        if kind == "protocol":
            self.crossprotocol += 1
        elif kind == "auth":
            self.authfailed += 1

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class Gate:
    """A socket's control input before the framer: the cross-protocol check
    on the first bytes and, with ``secret``, the ``auth SECRET`` first part.
    ``feed``/``finish`` give what a Framer gives, or ``[Refusal]`` once;
    after a refusal nothing more comes out."""

    def __init__(self, framer: Framer, secret: Optional[bytes] = None):
        self.framer = framer
        self._expected = b"auth " + secret if secret is not None else None
        self._first: Optional[bytearray] = bytearray()  # None once judged
        self.refused: Optional[Refusal] = None

    @property
    def pending(self) -> int:
        return self.framer.pending + (len(self._first) if self._first is not None else 0)

    @property
    def awaiting_secret(self) -> bool:
        """A secret is asked for and has not come yet."""
        return self._expected is not None and self.refused is None

    def feed(self, data: bytes) -> list:
        if self.refused is not None:
            return []
        if self._first is not None:
            self._first += data
            verdict = foreign_protocol(bytes(self._first[:SNIFF_LIMIT + 1]))
            if verdict is None:
                return []
            data = self._judged(verdict)
            if data is None:
                return [self.refused]
        return self._authorised(self.framer.feed(data))

    def finish(self, idle: bool = False) -> list:
        """End of input, or (``idle``) the writer paused."""
        if self.refused is not None:
            return []
        if self._first is not None:
            if idle and may_begin_known_method(bytes(self._first)):
                # "GET", a pause, then " /;room1=x HTTP/1.1": judged at the
                # pause, the rest would run as parts.  Such a start is no
                # control part, so holding it costs no writer anything.
                return []
            data = self._judged(foreign_protocol(bytes(self._first), final=True))
            if data is None:
                return [self.refused]
            items = self.framer.feed(data)
            return self._authorised(items + self.framer.finish())
        return self._authorised(self.framer.finish())

    def _judged(self, verdict: str) -> Optional[bytes]:
        first, self._first = bytes(self._first), None
        if verdict:
            self.refused = Refusal("protocol", f"{verdict} on the control channel: {first[:60]!r}")
            return None
        return first

    def _authorised(self, items: list) -> list:
        if self._expected is None or not items:
            return items
        part = items[0]
        good = isinstance(part, bytes) and hmac.compare_digest(part, self._expected)
        if not good:
            what = "oversize part" if isinstance(part, Oversize) else "wrong secret" \
                if isinstance(part, bytes) and part.startswith(b"auth ") else "no auth part first"
            self.refused = Refusal("auth", f"control secret required: {what}")
            return [self.refused]
        self._expected = None
        return items[1:]


class PipeReads:
    """Whether a read from the FIFO ends what its writer wrote.

    hasses took each read as a whole batch, and that keeps writers apart:
    a write of up to PIPE_BUF (4 KB) reaches the pipe at once, so two
    publishers that write one unterminated message each (PHP's
    ``file_put_contents``) come in two reads.  A larger write may be handed
    over in several reads, but only where the writer had to wait for room:
    the pipe was full, so the read filled our buffer, or it ended on a page
    boundary (the kernel fills a pipe page by page).  Such a read may be
    continued: its unterminated tail waits for more (or the idle flush);
    any other read ends the part.  What no reader can tell apart: writes
    that land in the same instant with no terminator, and concurrent writes
    above 4 KB; so publishers end each message with a line end."""

    PAGE = 4096

    def __init__(self, read_size: int):
        self.read_size = read_size
        self._run = 0  # bytes read since the last read that ended a part

    def ends_part(self, nbytes: int) -> bool:
        self._run += nbytes
        if nbytes >= self.read_size or self._run % self.PAGE == 0:
            return False
        self._run = 0
        return True

    def reset(self) -> None:
        """The held tail was taken as a whole part (idle flush)."""
        self._run = 0


# -- what a part says ------------------------------------------------------


@dataclasses.dataclass
class Command:
    name: str
    arg: str = ""


@dataclasses.dataclass
class Message:
    targets: List[Target]
    data: str
    event: Optional[str] = None
    retry: Optional[int] = None
    ack: bool = False
    is_json: bool = False


@dataclasses.dataclass
class Invalid:
    reason: str
    is_json: bool = False
    ack: bool = False


SIMPLE_COMMANDS = {
    "status", "tcpstatus", "clientlist", "numberofclients", "tcpnumberofclients",
    "loglevel_quiet", "loglevel_normal", "loglevel_debug", "reinit_enable", "reinit_disable",
    "tcpclientlist", "tcpmetrics",
}
ARG_COMMANDS = ("subscribedclients:", "tcpsubscribedclients:", "kick:", "kicktoken:", "tcpkick:", "tcpkicktoken:")


#: The first part a control secret asks for (PROTOCOL.md 9).
STRAY_AUTH = "auth "

#: ``except`` ids one JSON message may carry, unless ``--max-except`` says.
DEFAULT_MAX_EXCEPT = 256
#: Addresses one JSON message's ``to`` may list, unless ``--max-targets``
#: says: each costs a parse and a lookup while every stream waits.
DEFAULT_MAX_TARGETS = 4096
#: The longest reconnection delay a message may give: 2**31 - 1 ms (24.8
#: days), what a browser's 32-bit timers hold; a longer one is no delay a
#: publisher means, and a number of thousands of digits costs to format.
MAX_RETRY_MS = 2 ** 31 - 1
RETRY_RULE = f'"retry" must be a whole number of milliseconds, at most {MAX_RETRY_MS}'


def interpret(part: bytes, max_token_length: int, max_message_bytes: int,
              max_except: int = DEFAULT_MAX_EXCEPT,
              max_targets: int = DEFAULT_MAX_TARGETS) -> Union[Command, Message, Invalid]:
    text = part.decode("utf-8", "surrogateescape")
    if text.startswith("{"):
        return _interpret_json(text, max_token_length, max_message_bytes, max_except, max_targets)
    if text.startswith(STRAY_AUTH):
        # The gate takes a good first ``auth`` where a secret is configured;
        # any other one (a second one, the Unix socket, the FIFO, a daemon
        # started without the secret) still holds a secret: never shown in
        # the log, never taken for a message to a token "auth ..." when the
        # secret holds a '='.
        return Invalid("an 'auth' part where none is expected (not shown: it holds a secret)")
    token, eq, data = text.partition("=")
    if eq and not token.lstrip().startswith(ARG_COMMANDS):
        # TOKEN=MESSAGE, by far the most common part: no command has a '='
        # before its argument.
        return _legacy_message(token, data, max_token_length, max_message_bytes)
    word = text.strip()
    if word in SIMPLE_COMMANDS:
        return Command(word)
    for prefix in ARG_COMMANDS:
        if word.startswith(prefix):
            return Command(prefix[:-1], word[len(prefix):])
    return Invalid(f"unknown command or message without '=': {_show(text)}")


def _legacy_message(token: str, data: str, max_token_length: int, max_message_bytes: int) -> Union[Message, Invalid]:
    # Characters never outnumber UTF-8 bytes: encode only when it may matter.
    if len(data) * 4 > max_message_bytes and len(data.encode("utf-8", "surrogateescape")) > max_message_bytes:
        return Invalid(f"message over {max_message_bytes} bytes")
    try:
        target = parse_target(token, max_token_length)
    except RoutingError as exc:
        return Invalid(f"bad address {_show(token)}: {exc}")
    return Message([target], data)


def _whole_number(digits: str) -> int:
    """A JSON integer, refused when longer than any field can use: Python's
    own refusal (above 4,300 digits) names an interpreter setting."""
    if len(digits) > 20:
        raise ValueError(f"a number of {len(digits)} digits")
    return int(digits)


_JSON = json.JSONDecoder(parse_int=_whole_number)


def _interpret_json(text: str, max_token_length: int, max_message_bytes: int,
                    max_except: int, max_targets: int) -> Union[Message, Invalid]:
    try:
        obj = _JSON.decode(text)
    except ValueError as exc:
        return Invalid(f"not valid JSON: {exc}", is_json=True)
    except RecursionError:
        # Arrays or objects nested thousands deep (closed or not): the
        # parser gives up at the interpreter's depth limit, and the
        # publisher still gets its answer.  No valid message nests past 2.
        return Invalid("not valid JSON: nested too deeply", is_json=True)
    if not isinstance(obj, dict):
        return Invalid("JSON message must be an object", is_json=True)
    ack = obj.get("ack") is True

    def bad(reason: str) -> Invalid:
        return Invalid(reason, is_json=True, ack=ack)

    unknown = set(obj) - {"to", "data", "event", "except", "retry", "ack"}
    if unknown:
        return bad(f"unknown field(s): {', '.join(_show(name) for name in sorted(unknown))}")
    to = obj.get("to")
    to_list = [to] if isinstance(to, str) else to
    if not to_list or not isinstance(to_list, list) or not all(isinstance(t, str) for t in to_list):
        return bad('"to" must be a token or a non-empty list of tokens')
    if max_targets and len(to_list) > max_targets:
        return bad(f'"to" holds {len(to_list)} addresses, more than {max_targets} (--max-targets)')
    data = obj.get("data")
    if not isinstance(data, str):
        return bad('"data" must be a string')
    event = obj.get("event")
    if not all(map(_is_unicode, [data, *to_list, event if isinstance(event, str) else ""])):
        return bad('a string is not Unicode text (bytes that are not UTF-8, or a lone surrogate such as \\ud800)')
    if len(data.encode("utf-8")) > max_message_bytes:
        return bad(f'"data" over {max_message_bytes} bytes')
    if event is not None and (not isinstance(event, str) or not event or re.search(r"[\r\n]", event)):
        return bad('"event" must be a one-line non-empty string')
    retry = obj.get("retry")
    if retry is not None and (isinstance(retry, bool) or not isinstance(retry, int)
                              or not 0 <= retry <= MAX_RETRY_MS):
        return bad(RETRY_RULE)
    excepts = obj.get("except", [])
    if isinstance(excepts, str):
        excepts = [excepts]
    if not isinstance(excepts, list) or not all(isinstance(e, str) and e and _is_unicode(e) for e in excepts):
        return bad('"except" must be an id or a list of ids')
    # Held with the event for resuming clients: bounded in number and size.
    if len(excepts) > max_except:
        return bad(f'"except" holds {len(excepts)} ids, more than {max_except} (--max-except)')
    if any(len(e) > max_token_length for e in excepts):
        return bad(f'an "except" id is longer than {max_token_length} characters')
    targets = []
    try:
        for t in to_list:
            targets.append(parse_target(t, max_token_length))
    except RoutingError as exc:
        return bad(f"bad address: {exc}")
    if excepts:
        # One set for every address that excludes nothing else: a thousand
        # addresses must not hold a thousand copies of it.
        shared = frozenset(excepts)
        targets = [dataclasses.replace(t, except_ids=t.except_ids | shared if t.except_ids else shared)
                   for t in targets]
    # Merged once, where the message is made: the grant check, the history,
    # the cluster's entry and the fan-out all see each address once.
    return Message(distinct_targets(targets), data, event, retry, ack, is_json=True)


def _is_unicode(text: str) -> bool:
    """JSON can carry lone surrogates ("\\ud800"), which are not text and
    cannot be sent as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _show(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


# -- carrying it out -------------------------------------------------------


#: Refused parts logged per writer (connection, FIFO) and window; the rest
#: are counted (``ControlHandler._refused``).
REFUSALS_PER_WINDOW = 20
REFUSAL_WINDOW = 10.0


class ControlHandler:
    """Runs parts against the daemon.  ``handle`` returns the reply bytes for
    a TCP writer (None when there is nothing to say); on the FIFO, ``tcp*``
    commands and acknowledgements have nobody to answer and are logged."""

    def __init__(self, hub, ids: sse.EventIds, log, settings, runtime, status: Callable[[], dict],
                 client_list: Callable[[], list], history, client_table: Callable[[], list],
                 metrics_text: Callable[[], str], kick: Optional[Callable[[str, str], int]] = None):
        self.hub = hub
        self.ids = ids
        self.log = log
        self.settings = settings
        self.runtime = runtime
        self.status = status
        self.client_list = client_list
        self.history = history            # history.History: what resuming clients get
        self.client_table = client_table  # tcpclientlist's rows
        self.metrics_text = metrics_text  # tcpmetrics' text
        self.kick = kick                  # kick(kind "id"|"token", value) -> streams closed
        self.cluster = None               # cluster.Cluster under --redis: messages go through Redis
        self._refusals: dict = {}  # channel -> [window start, lines written, lines held back]

    def _refused(self, channel: str, text: str) -> None:
        """Log a refused part, at most REFUSALS_PER_WINDOW lines per writer
        and window: a write of junk (``x;x;x;...``: a part every two bytes)
        must not turn into a log sixteen times its size.  The lines held
        back are counted in one line when the writer's next window opens."""
        now = time.monotonic()
        entry = self._refusals.get(channel)
        if entry is None or now - entry[0] >= REFUSAL_WINDOW:
            if entry is not None and entry[2]:
                self.log.error(f"{channel}: {entry[2]} more refused part(s) not logged in {REFUSAL_WINDOW:g} s")
            if len(self._refusals) >= 256 and entry is None:
                self._refusals.clear()  # many writers: forget old windows, never grow
            entry = self._refusals[channel] = [now, 0, 0]
        if entry[1] < REFUSALS_PER_WINDOW:
            entry[1] += 1
            self.log.error(f"{channel}: {text}")
            if entry[1] == REFUSALS_PER_WINDOW:
                self.log.error(f"{channel}: more refused parts in the next {REFUSAL_WINDOW:g} s are only counted")
        else:
            entry[2] += 1

    def writer_gone(self, channel: str) -> None:
        """A writer closed: say how many of its refused parts went unlogged."""
        entry = self._refusals.pop(channel, None)
        if entry is not None and entry[2]:
            self.log.error(f"{channel}: {entry[2]} more refused part(s) not logged")

    def handle(self, item, channel: str, can_reply: bool, later=None) -> Optional[bytes]:
        """``later``: where answers that come after this call go (an object
        with ``expect_answer()`` and ``late_answer(bytes)``; a cluster's acknowledgements)."""
        if isinstance(item, Oversize):
            reason = f"part of {item.size} bytes over the limit of {self.settings.max_part_bytes}"
            self._refused(channel, f"{reason}, dropped")
            # A JSON publisher may be waiting for its acknowledgement: like
            # any malformed object, it gets an answer with the reason.
            if item.json and can_reply:
                return _json_line({"ok": False, "error": reason})
            return None
        parsed = interpret(item, self.settings.max_token_length, self.settings.max_message_bytes,
                           self.settings.max_except, self.settings.max_targets)
        if isinstance(parsed, Command):
            return self._command(parsed, channel, can_reply)
        if isinstance(parsed, Message):
            return self.publish(parsed, channel, can_reply, later)
        self._refused(channel, f"{parsed.reason}; ignored")
        if parsed.is_json and can_reply:
            return _json_line({"ok": False, "error": parsed.reason})
        return None

    def publish(self, msg: Message, channel: str, can_reply: bool, later=None) -> Optional[bytes]:
        """The one entry for an accepted message, whichever channel took it
        in (control port, FIFO, Unix socket, an HTTP publisher): on one
        node it is delivered now; on a cluster it goes to Redis and is
        delivered when read back.  ``channel`` names the publisher in logs.

        The acknowledgement (``msg.ack`` and ``can_reply``): on one node the
        return value; on a cluster it comes later, through ``later``
        (``expect_answer()`` is called now, ``late_answer(bytes)`` once the
        message was read back or refused), and the return value is None
        unless the message is refused at once (``{"ok": false, ...}``, Redis
        away and the spool full).  A publisher that must answer every
        message (HTTP) sets ``ack`` and passes a ``later``."""
        if self.cluster is not None:
            return self.cluster.publish(msg, later, channel, can_reply)
        return self._message(msg, channel, can_reply)

    def _message(self, msg: Message, channel: str, can_reply: bool) -> Optional[bytes]:
        event_id, key = self.ids.next_id()
        data = sse.encode_event(event_id, msg.data, msg.event, msg.retry)
        delivered = self.hub.publish(msg.targets, data)
        self.history.record(key, event_id, msg.targets, data)
        if self.log.debugging:
            to = ",".join(t.text() for t in msg.targets)
            self.log.debug(f"{channel}: message {event_id} to {to!r}: {delivered} recipient(s)")
        if msg.ack and can_reply:
            return _json_line({"ok": True, "id": event_id, "delivered": delivered})
        return None

    def publish_acked(self, msg: Message, channel: str, later) -> Optional[bytes]:
        """An HTTP publish (PROTOCOL.md 9): the same path as a control
        channel's message (id, fan-out, history, counters, the cluster),
        always acknowledged: the acknowledgement is returned on one node,
        and goes to ``later`` on a cluster (see ``publish``)."""
        return self.publish(dataclasses.replace(msg, ack=True), channel, True, later)

    def _command(self, cmd: Command, channel: str, can_reply: bool) -> Optional[bytes]:
        log, hub, runtime = self.log, self.hub, self.runtime
        name = cmd.name
        if name == "status":
            log.block(self.status_lines())
        elif name == "clientlist":
            log.block(self.client_list())
        elif name == "numberofclients":
            log.out(f"Number of clients: {len(hub.clients)}")
        elif name == "subscribedclients":
            log.out(f"Number of clients subscribed to {cmd.arg}: {hub.subscribed_count(cmd.arg)}")
        elif name.startswith("loglevel_"):
            level = {"loglevel_quiet": 0, "loglevel_normal": 1, "loglevel_debug": 2}[name]
            log.out(f"Set loglevel to {level}.")
            log.level = level
        elif name == "reinit_enable":
            runtime.reinit = True
            log.out("Reinit enabled.")
        elif name == "reinit_disable":
            runtime.reinit = False
            log.out("Reinit disabled.")
        elif name in ("kick", "kicktoken"):
            self._kick(name, cmd.arg, channel)
        else:
            return self._tcp_command(cmd, channel, can_reply)
        return None

    def _tcp_command(self, cmd: Command, channel: str, can_reply: bool) -> Optional[bytes]:
        if cmd.name == "tcpstatus":
            info = self.status()
            reply = {k: info[k] for k in (
                "version", "runningtime", "mode", "loglevel",
                "allconncli", "sseconncli", "maxconncli", "msgproccnt", "msgsendcnt")}
            reply.update(info.get("extra", {}))
        elif cmd.name == "tcpclientlist":
            reply = {"clients": self.client_table()}
        elif cmd.name == "tcpmetrics":
            reply = None  # plain text, not JSON
        elif cmd.name in ("tcpkick", "tcpkicktoken"):
            if not can_reply:
                self.log.info(f"{channel}: {cmd.name} replies only on the TCP control port; ignored")
                return None
            reply = {"kicked": self._kick(cmd.name[3:], cmd.arg, channel)}
        elif cmd.name == "tcpnumberofclients":
            reply = {"numberofclients": len(self.hub.clients)}
            if self.cluster is not None:
                reply["clusternumberofclients"] = self.cluster.status()["clusterclients"]
        else:  # tcpsubscribedclients
            reply = {"subscribedclients": self.hub.subscribed_count(cmd.arg), "subscribedfor": cmd.arg}
        if not can_reply:
            self.log.info(f"{channel}: {cmd.name} replies only on the TCP control port; ignored")
            return None
        if reply is None:
            return self.metrics_text().encode("utf-8")
        return _json_line(reply)

    def _kick(self, name: str, arg: str, channel: str) -> int:
        """Revocation: close the streams opened with ``id=arg`` (kick) or
        subscribed to the token ``arg`` (kicktoken)."""
        if not arg or self.kick is None:
            return 0
        kicked = self.kick("id" if name == "kick" else "token", arg)
        self.log.info(f"{channel}: {name}:{arg[:80]!r} closed {kicked} stream(s)")
        return kicked

    def status_lines(self) -> list:
        from .logs import status_block

        return status_block(self.status())


def _json_line(obj: dict) -> bytes:
    """hasses' spacing (``"key": value,"key": ...``), always valid JSON:
    bytes of a token that were not UTF-8 come back as U+FFFD."""
    line = json.dumps(obj, separators=(",", ": "), ensure_ascii=False) + "\n"
    try:
        return line.encode("utf-8")
    except UnicodeEncodeError:  # surrogates standing for such bytes
        return line.encode("utf-8", "surrogateescape").decode("utf-8", "replace").encode("utf-8")
