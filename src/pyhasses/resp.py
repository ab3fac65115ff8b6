"""The Redis protocol without I/O: the address in ``--redis``, commands as
RESP bytes, and replies matched to the commands that asked for them.

Owns: the ``redis://`` and ``unix://`` URL syntax, RESP2 encoding of
commands, the order of outstanding commands and the parsing of replies
(``hiredis.Reader``, kept to the API of Debian 12's hiredis 1.0.1: ``feed``,
``gets``, ``False`` for "need more", an error reply as a ``ReplyError``
object, a protocol fault as an exception).  Must not touch: sockets,
descriptors, timers; ``redislink`` moves the bytes.
"""

from __future__ import annotations

import collections
import dataclasses
import urllib.parse
from typing import Callable, Optional

import hiredis

#: Error replies from Redis arrive as objects of this class.
ReplyError = hiredis.ReplyError


class UrlError(ValueError):
    """``--redis`` cannot be used; the text says why."""


@dataclasses.dataclass(frozen=True)
class RedisAddress:
    """Where Redis is and how to log in: TCP ``host``/``port`` or a Unix
    socket ``path``; ``db`` is selected after connecting."""

    host: Optional[str] = None
    port: int = 6379
    path: Optional[str] = None
    db: int = 0
    user: Optional[str] = None
    password: Optional[str] = None

    def describe(self) -> str:
        """For logs: never the password."""
        where = f"unix://{self.path}" if self.path else f"redis://{_host_text(self.host)}:{self.port}"
        return f"{where}/{self.db}" if self.db else where

    def login_commands(self) -> list:
        """What a new connection sends before anything else."""
        commands = []
        if self.password is not None:
            commands.append(("AUTH", self.user, self.password) if self.user else ("AUTH", self.password))
        if self.db:
            commands.append(("SELECT", str(self.db)))
        return commands


def _host_text(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def parse_url(url: str) -> RedisAddress:
    """``redis://[user:password@]host[:port][/db]`` or ``unix:///path[?db=N]``
    (also ``redis+unix:`` / ``unix:`` with ``user:password@``)."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlError(f"--redis {url!r}: {exc}") from None
    user = urllib.parse.unquote(parts.username) if parts.username else None
    password = urllib.parse.unquote(parts.password) if parts.password is not None else None
    if password is None and user:
        password, user = user, None  # redis://secret@host: the password alone
    query = urllib.parse.parse_qs(parts.query)
    if parts.scheme in ("unix", "redis+unix"):
        # unix://run/redis.sock reads as host "run", path "/redis.sock":
        # a host here means a path that was meant relative, not /redis.sock.
        if parts.hostname or not parts.path.startswith("/"):
            raise UrlError(f"--redis {url!r}: a Unix socket needs an absolute path (unix:///run/redis.sock)")
        return RedisAddress(path=parts.path, db=_db(query.get("db", ["0"])[0], url), user=user, password=password)
    if parts.scheme != "redis":
        raise UrlError(f"--redis {url!r}: the scheme must be redis:// or unix:// (rediss:// is not supported)")
    if not parts.hostname:
        raise UrlError(f"--redis {url!r}: no host (redis://host:port/db)")
    db_text = parts.path.strip("/") or query.get("db", ["0"])[0]
    return RedisAddress(host=parts.hostname, port=port or 6379, db=_db(db_text, url), user=user, password=password)


def _db(text: str, url: str) -> int:
    if not text.isdigit():
        raise UrlError(f"--redis {url!r}: the database must be a number, not {text!r}")
    return int(text)


def encode(*args) -> bytes:
    """One command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode("utf-8", "surrogateescape")
        elif isinstance(arg, int):
            arg = b"%d" % arg
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


class ProtocolFault(Exception):
    """The bytes from Redis were not RESP, or answered nothing we asked."""


class Conversation:
    """One connection's commands and replies, in order.  ``ask`` returns the
    bytes to send and remembers who wants the answer; ``feed`` takes bytes
    received and returns ``(callback, reply)`` pairs for the caller to run
    (a reply may be a ``ReplyError``)."""

    def __init__(self):
        self._reader = hiredis.Reader()
        self._waiting: collections.deque = collections.deque()

    @property
    def outstanding(self) -> int:
        return len(self._waiting)

    def ask(self, callback: Optional[Callable], *args) -> bytes:
        self._waiting.append(callback)
        return encode(*args)

    def feed(self, data: bytes) -> list:
        reader = self._reader
        try:
            reader.feed(data)
        except Exception as exc:
            raise ProtocolFault(f"cannot read the reply: {exc}") from None
        out = []
        while True:
            try:
                reply = reader.gets()
            except Exception as exc:  # hiredis.ProtocolError
                raise ProtocolFault(f"not RESP: {exc}") from None
            if reply is False:
                return out
            if not self._waiting:
                raise ProtocolFault(f"a reply nobody asked for: {reply!r:.80}")
            out.append((self._waiting.popleft(), reply))

    def abandon(self) -> list:
        """The connection is gone: the callbacks that will never hear."""
        waiting = list(self._waiting)
        self._waiting.clear()
        return waiting
