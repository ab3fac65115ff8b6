"""Publishing to a running pyhasses from Python, in one call.

    from pyhasses.publish import publish
    publish("room1", "hello")                          # TCP 127.0.0.1:8085
    publish("room1", "a;b\\nc", event="chat", ack=True)  # -> {"ok": True, "id": ..., "delivered": 3}
    publish("room1", "hello", fifo="/run/pyhasses/fifo")

    publish("room1", "hi", socket_path="/run/pyhasses/control.sock")
    publish("room1", "hi", secret_file="/etc/pyhasses/control.secret")
    publish("room1", "hi", secret=read_secret())      # $PYHASSES_CONTROL_SECRET

    token = mint_token("/etc/pyhasses/subscriber.key", subscribe=["user42"], ttl=3600)
    HttpPublisher("https://sse.example.com/publish", token).publish("room1", "hi")

``Control`` does the same for several calls and also asks the daemon's
questions (``status``, ``count``, ``clients``, ``kick``); ``pyhasses-ctl`` is
a thin command line over it.

Owns: writing one control part (PROTOCOL.md 5 and 5a) to the TCP control port,
the Unix control socket or the FIFO (with the ``auth SECRET`` first part of
PROTOCOL.md 9 when given a secret), reading the daemon's reply, publishing
over HTTP with a token, minting tokens, and turning every way of failing into
``NotReachable`` (nobody listens) or ``DaemonError`` (the daemon said no).
Must not touch: the daemon's own modules beyond the token syntax of
``hub.parse_target`` and the token code of ``auth``; this runs inside web
backends, not in the daemon.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import select
import socket
import stat
import time
from typing import Iterable, Optional, Union
from urllib.parse import urlencode, urlsplit

from .hub import RoutingError, parse_target

DEFAULT_HOST = "127.0.0.1"
#: The control port of README's start command (hasses has no default).
DEFAULT_PORT = 8085
DEFAULT_TIMEOUT = 5.0
#: Where a backend may keep the control secret instead of a file.
SECRET_ENV = "PYHASSES_CONTROL_SECRET"
#: Addresses are checked here for syntax only: the daemon knows its own
#: length limit (at least 128) and answers a JSON message that passes it.
_ANY_LENGTH = 1 << 30


class PublishError(Exception):
    """Publishing or asking failed; the text says why, in one line."""


class NotReachable(PublishError):
    """No daemon answered: nothing listens on the port, or reads the FIFO."""


class DaemonError(PublishError):
    """The daemon answered with an error; ``reply`` is what it said."""

    def __init__(self, text: str, reply: Optional[dict] = None):
        super().__init__(text)
        self.reply = reply


# -- building a part ---------------------------------------------------------


def message_part(token: str, data: str, *, event: Optional[str] = None,
                 except_ids: Union[str, Iterable[str]] = (), retry: Optional[int] = None,
                 ack: bool = False, json_form: bool = False, separator: str = ";") -> bytes:
    """The bytes of one message part, ending in a line end.

    The legacy ``TOKEN=MESSAGE`` form is used when it can carry the message
    unchanged; the JSON form when asked for, or when the message has an
    event name, a retry time, an acknowledgement, several excluded ids, a
    line break or the separator (which the legacy form would cut)."""
    excepts = [except_ids] if isinstance(except_ids, str) else list(except_ids)
    _check_address(token, excepts)
    address = _legacy_address(token, excepts)
    legacy_ok = (
        not json_form and event is None and retry is None and not ack and address is not None
        and not _breaks_legacy(address, separator + "=") and not _breaks_legacy(data, separator)
        and not address.startswith(("{", "subscribedclients:", "tcpsubscribedclients:"))
    )
    if legacy_ok:
        return f"{address}={data}\n".encode("utf-8", "surrogateescape")
    obj: dict = {"to": token, "data": data}
    if event is not None:
        obj["event"] = event
    if excepts:
        obj["except"] = excepts if len(excepts) > 1 else excepts[0]
    if retry is not None:
        obj["retry"] = retry
    if ack:
        obj["ack"] = True
    # ensure_ascii keeps the line free of raw line separators of any kind.
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode("ascii")


def _legacy_address(token: str, excepts: list) -> Optional[str]:
    """``TOKEN`` or ``TOKEN-UNIQ``; None when the legacy syntax cannot say it."""
    if not excepts:
        return token
    if len(excepts) == 1 and "-" not in token and "*" not in excepts[0]:
        return f"{token}-{excepts[0]}"
    return None


def _breaks_legacy(text: str, forbidden: str) -> bool:
    """A line end or one of ``forbidden`` would end or cut a legacy part;
    the daemon would read what follows as another part."""
    return any(c in text for c in forbidden + "\r\n")


def _check_address(token: str, excepts: list) -> None:
    """Refuse here what the daemon would drop with only a log line."""
    try:
        parse_target(token, _ANY_LENGTH)
    except RoutingError as exc:
        raise PublishError(f"bad token {token!r}: {exc}") from None
    if any(not isinstance(e, str) or not e for e in excepts):
        raise PublishError("an excluded id must be a non-empty string")


# -- talking to the daemon ---------------------------------------------------


class Control:
    """The daemon's control channel: the TCP port (``host``, ``port``) or,
    when ``fifo`` is given, the FIFO.  Each call uses its own connection."""

    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 fifo: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT, separator: str = ";",
                 socket_path: Optional[str] = None, secret: Optional[Union[str, bytes]] = None,
                 secret_file: Optional[str] = None):
        if secret is None and secret_file:
            secret = read_secret(secret_file)
        self.host = host
        self.port = port
        self.fifo = fifo
        self.timeout = timeout
        self.separator = separator
        self.socket_path = socket_path  # the daemon's --control-socket, instead of the TCP port
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        self.secret = secret            # sent as "auth SECRET" first on the TCP port

    @property
    def where(self) -> str:
        if self.fifo:
            return f"FIFO {self.fifo}"
        if self.socket_path:
            return f"control socket {self.socket_path}"
        return f"control port [{self.host}]:{self.port}" if ":" in self.host else f"control port {self.host}:{self.port}"

    def publish(self, token: str, data: str, *, event: Optional[str] = None,
                except_ids: Union[str, Iterable[str]] = (), retry: Optional[int] = None,
                ack: bool = False, json_form: bool = False) -> Optional[dict]:
        """Send one message.  With ``ack`` (TCP only) wait for the daemon's
        acknowledgement and return it: ``{"ok": True, "id": "...", "delivered": N}``."""
        if ack and self.fifo:
            raise PublishError("an acknowledgement needs the TCP control port; a FIFO has no reply channel")
        part = message_part(token, data, event=event, except_ids=except_ids, retry=retry,
                            ack=ack, json_form=json_form, separator=self.separator)
        if self.fifo:
            write_fifo(self.fifo, part, self.timeout)
            return None
        replies = self._replies(self.exchange(part))
        for reply in replies:
            if reply.get("ok") is False:
                raise DaemonError(f"the daemon refused the message: {reply.get('error', reply)}", reply)
        if ack:
            if not replies:
                raise DaemonError("the daemon sent no acknowledgement (is it pyhasses, not hasses?)")
            return replies[-1]
        return None

    def ask(self, command: str) -> Optional[dict]:
        """A ``tcp*`` question: its JSON reply, or None when the daemon said
        nothing (it does not know the command)."""
        replies = self._replies(self.exchange(f"{command}\n".encode()))
        return replies[-1] if replies else None

    def tell(self, command: str) -> None:
        """A command whose answer goes to the daemon's log."""
        part = f"{command}\n".encode()
        if self.fifo:
            write_fifo(self.fifo, part, self.timeout)
        else:
            self.exchange(part)

    def status(self) -> dict:
        return self._must("tcpstatus")

    def count(self, token: Optional[str] = None) -> int:
        if token is None:
            return int(self._must("tcpnumberofclients")["numberofclients"])
        return int(self._must(f"tcpsubscribedclients:{token}")["subscribedclients"])

    def kick(self, uniq_id: str) -> int:
        """Close every stream opened with ``id=uniq_id``; how many."""
        return int(self._must(f"tcpkick:{uniq_id}")["kicked"])

    def kick_token(self, token: str) -> int:
        """Close every stream subscribed to ``token``; how many."""
        return int(self._must(f"tcpkicktoken:{token}")["kicked"])

    def clients(self) -> Optional[Union[dict, list]]:
        """The daemon's client list, or None when it only writes one to its log."""
        return self.ask("tcpclientlist")

    def _must(self, command: str) -> dict:
        if self.fifo:
            raise PublishError(f"{command} replies only on the TCP control port")
        reply = self.ask(command)
        if reply is None:
            raise DaemonError(f"no reply to {command} from the {self.where}")
        return reply

    def exchange(self, part: bytes) -> bytes:
        """Send on a new TCP connection, half-close, and read what the
        daemon says until it closes (it answers, then closes, once our
        input ended)."""
        deadline = time.monotonic() + self.timeout
        try:
            sock = self._connect()
        except OSError as exc:
            hint = ""
            if exc.errno == errno.ECONNREFUSED:
                hint = " (is pyhasses running with --control-socket?)" if self.socket_path else \
                    f" (is pyhasses running with -cp={self.port}?)"
            raise NotReachable(f"cannot connect to the {self.where}: {_reason(exc)}{hint}") from None
        if self.secret is not None and not self.socket_path:
            part = b"auth " + self.secret + b"\n" + part
        with sock:
            try:
                sock.sendall(part)
                sock.shutdown(socket.SHUT_WR)
                return _read_to_close(sock, deadline)
            except socket.timeout:
                raise NotReachable(f"the {self.where} did not finish answering within {self.timeout:g} s") from None
            except OSError as exc:
                raise NotReachable(f"the {self.where} dropped the connection: {_reason(exc)}") from None

    def _connect(self) -> socket.socket:
        if not self.socket_path:
            return socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        return sock

    def _replies(self, raw: bytes) -> list:
        out = []
        for line in raw.decode("utf-8", "replace").splitlines():
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                raise DaemonError(f"unexpected reply from the {self.where}: {line[:200]!r}") from None
        return out


def _read_to_close(sock: socket.socket, deadline: float) -> bytes:
    data = bytearray()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout()
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return bytes(data)
        if not chunk:
            return bytes(data)
        data += chunk


def write_fifo(path: str, part: bytes, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Write ``part`` to the daemon's FIFO in one write where the pipe allows
    (up to PIPE_BUF bytes are never mixed with another writer's).  Never
    blocks past ``timeout``: a FIFO nobody reads is an error, not a hang."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise NotReachable(f"no daemon is reading the FIFO {path}") from None
        raise NotReachable(f"cannot open the FIFO {path}: {_reason(exc)}") from None
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            raise PublishError(f"{path} is not a FIFO")
        _write_all(fd, memoryview(part), time.monotonic() + timeout, path)
    finally:
        os.close(fd)


def _write_all(fd: int, view: memoryview, deadline: float, path: str) -> None:
    while view:
        try:
            view = view[os.write(fd, view):]
            continue
        except BlockingIOError:
            pass
        except BrokenPipeError:
            raise NotReachable(f"the daemon stopped reading the FIFO {path}") from None
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([], [fd], [], remaining)[1]:
            raise NotReachable(f"the FIFO {path} stayed full for too long: is the daemon stuck?")


def _reason(exc: OSError) -> str:
    if isinstance(exc, socket.timeout):
        return "timed out"
    return exc.strerror or str(exc)


def read_secret(path: Optional[str] = None) -> Optional[bytes]:
    """The control secret: the file's content without its trailing line
    end, else the environment variable PYHASSES_CONTROL_SECRET, else None."""
    if path:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise PublishError(f"cannot read the secret file {path}: {_reason(exc)}") from None
        # The daemon's rule: one trailing line end (LF or CRLF) is not part of it.
        data = data[:-1] if data.endswith(b"\n") else data
        return data[:-1] if data.endswith(b"\r") else data
    value = os.environ.get(SECRET_ENV)
    return value.encode("utf-8") if value else None


# -- tokens and HTTP publishing (PROTOCOL.md 9) ----------------------------------


def mint_token(key_file: str, subscribe: Iterable[str] = (), publish: Iterable[str] = (),
               ttl: Optional[float] = 3600) -> str:
    """A JWT granting ``subscribe`` and ``publish`` for ``ttl`` seconds (None:
    no expiry), signed with ``key_file``: an HS256 secret, or the PEM
    private key whose public half the daemon holds (ES256, RS256)."""
    from . import auth

    try:
        key = auth.load_key(key_file, private=True)
        return auth.mint(key, subscribe, publish, ttl)
    except auth.KeyFileError as exc:
        raise PublishError(str(exc)) from None


class HttpPublisher:
    """Publishing over HTTP with a token (``--publisher-key`` on the daemon):
    ``POST`` to its publish URL, one connection kept alive for many calls.
    For backends on other hosts, where the control port is not reachable."""

    def __init__(self, url: str, token: str, timeout: float = DEFAULT_TIMEOUT, context=None):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PublishError(f"not an http(s) URL: {url!r}")
        self.url = url
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.token = token
        if parts.scheme == "https":
            self._conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout, context=context)
        else:
            self._conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)

    def publish(self, token: Union[str, Iterable[str]], data: str, *, event: Optional[str] = None,
                except_ids: Union[str, Iterable[str]] = (), retry: Optional[int] = None) -> dict:
        """Send one message; returns the acknowledgement
        ``{"ok": True, "id": "...", "delivered": N}``."""
        fields = [("to", t) for t in ([token] if isinstance(token, str) else token)]
        fields.append(("data", data))
        if event is not None:
            fields.append(("event", event))
        fields += [("except", e) for e in ([except_ids] if isinstance(except_ids, str) else except_ids)]
        if retry is not None:
            fields.append(("retry", str(retry)))
        body = urlencode(fields).encode("ascii")
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/x-www-form-urlencoded",
                   "Connection": "keep-alive"}
        for attempt in (1, 2):
            try:
                self._conn.request("POST", self.path, body, headers)
                response = self._conn.getresponse()
                text = response.read().decode("utf-8", "replace")
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self._conn.close()  # the server ended a kept-alive connection: once more, afresh
                if attempt == 2:
                    raise NotReachable(f"{self.url}: {exc}") from None
            except OSError as exc:
                self._conn.close()
                raise NotReachable(f"cannot publish to {self.url}: {_reason(exc)}") from None
        if response.status != 200:
            raise DaemonError(f"{self.url} answered {response.status}: {text.strip()[:200]}")
        try:
            return json.loads(text)
        except ValueError:
            raise DaemonError(f"unexpected reply from {self.url}: {text[:200]!r}") from None

    def close(self) -> None:
        self._conn.close()


# -- the one-call helpers ------------------------------------------------------


def publish(token: str, data: str, *, event: Optional[str] = None,
            except_ids: Union[str, Iterable[str]] = (), retry: Optional[int] = None,
            ack: bool = False, json_form: bool = False,
            host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, fifo: Optional[str] = None,
            timeout: float = DEFAULT_TIMEOUT, separator: str = ";", socket_path: Optional[str] = None,
            secret: Optional[Union[str, bytes]] = None, secret_file: Optional[str] = None) -> Optional[dict]:
    """Send ``data`` to the subscribers of ``token`` (``PREFIX*`` and ``*``
    work too).  Returns the acknowledgement when ``ack`` is true, else None;
    raises ``NotReachable`` or ``DaemonError``."""
    control = Control(host, port, fifo, timeout, separator, socket_path=socket_path, secret=secret,
                      secret_file=secret_file)
    return control.publish(token, data, event=event, except_ids=except_ids, retry=retry,
                           ack=ack, json_form=json_form)
