"""The one frozen settings object, its defaults and its validation.

Owns: what every option means once parsed, its default, and the one-line
reason given when a value is unusable.  Must not touch: descriptors, sockets,
logging handlers.  ``cli.py`` turns argv into the raw values this module
checks; everything downstream reads a ``Settings``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from typing import Optional

#: Control port listens here unless told otherwise (PROTOCOL.md 5): hasses
#: accepted publishers from every interface with no authentication.
LOOPBACK = ("127.0.0.1", "::1")

MIB = 1024 * 1024


class SettingsError(ValueError):
    """A value the daemon cannot start with; its text is the one-line reason."""


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """A TCP port with the addresses to bind; no address means every one."""

    port: int
    hosts: tuple = ()

    def describe(self) -> str:
        if not self.hosts:
            return f"*:{self.port}"
        return ", ".join(
            f"[{h}]:{self.port}" if ":" in h else f"{h}:{self.port}" for h in self.hosts
        )


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the daemon was told at start.  Run-time changes (log level,
    re-init) live in the objects that own them, not here."""

    sse: Endpoint
    match_url: str
    control: Optional[Endpoint] = None
    fifo: Optional[str] = None
    fifo_mode: Optional[int] = None   # None: fifo.DEFAULT_MODE, and an existing FIFO keeps its own
    fifo_group: Optional[int] = None  # gid
    separator: str = ";"
    loglevel: int = 1
    logfile: str = "/var/log/pyhasses.log"
    pidfile: Optional[str] = None
    ssl: bool = False
    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    cors_base: str = "*"
    reinit: bool = False
    user: Optional[str] = None
    nodaemon: bool = False
    # Limits and timers (PROTOCOL.md 3-5); all have long options.
    handshake_timeout: float = 20.0
    stream_lifetime: float = 3600.0
    max_head_bytes: int = 32 * 1024
    max_queue_bytes: int = 4 * MIB
    max_message_bytes: int = MIB
    max_token_length: int = 128
    idle_flush: float = 0.5
    max_except: int = 256             # ids in one JSON message's "except" (issue 15)
    max_targets: int = 4096           # addresses in one JSON message's "to"

    # -- TLS (issue 3) --
    key_passphrase_file: Optional[str] = None  # first line: the private key's passphrase

    # -- service: daemon mode, config file (issue 4) --

    # -- delivery: history, heartbeats, caps (issue 5) --
    history_count: int = 10000        # events held for resuming clients; 0: none
    history_bytes: int = 16 * MIB     # and no more bytes than this
    history_age: float = 3600.0       # nor older than this
    heartbeat: float = 15.0           # comment on idle streams every N s; 0: off
    retry: int = 3000                 # base of the retry hint, ms; 0: none
    max_clients: int = 0              # open SSE connections before 503; 0: no cap
    drain: float = 0.0                # spread closing streams over this on SIGTERM
    slow_client_policy: str = "disconnect"  # or "drop"
    metrics: Optional[Endpoint] = None  # GET /metrics port

    # -- security: access control (issue 12, PROTOCOL.md 9) --
    subscriber_key: Optional[str] = None     # key file: streams need a JWT
    auth_cookie: str = "pyhassesAuthorization"
    publisher_key: Optional[str] = None      # key file: POST publish_url with a JWT
    publish_url: str = "/publish"
    control_socket: Optional[str] = None     # Unix-domain control socket
    control_socket_group: Optional[str] = None
    control_secret_file: Optional[str] = None  # TCP control: "auth SECRET" first
    max_subscriptions: int = 64              # tokens in one stream's subscribe=
    max_control_clients: int = 256           # open control connections (TCP and Unix)
    control_idle_timeout: float = 300.0      # close a silent control connection; 0: never
    # -- cluster on Redis (issue 13) --
    redis: Optional[str] = None       # URL of the Redis that joins the nodes; None: one node alone
    redis_prefix: str = "pyhasses"    # key names start with this and a colon
    redis_spool: int = 10000          # publishes kept while Redis is away; past it refused
    reuse_port: bool = False          # SO_REUSEPORT on the SSE port: several nodes on one host

    # -- end of fields --

    @property
    def max_part_bytes(self) -> int:
        """A control part holds a token, an ``=`` or JSON around the message;
        JSON escaping can double it, so the part limit leaves room for that."""
        return 2 * self.max_message_bytes + 64 * 1024


def parse_port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise SettingsError(f"not a port number: {text!r}") from None
    if not 0 < port < 65536:
        raise SettingsError(f"port out of range 1-65535: {port}")
    return port


def parse_host(text: str) -> str:
    host = text.strip("[]")
    if host in ("*", ""):
        return ""
    if host == "localhost":
        return "localhost"
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        raise SettingsError(f"not an IP address: {text!r}") from None


def parse_endpoint(text: str, default_hosts: tuple = ()) -> Endpoint:
    """``8080``, ``127.0.0.1:8080``, ``[::1]:8080`` or ``*:8080``."""
    if text.isdigit():
        return Endpoint(parse_port(text), default_hosts)
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise SettingsError(f"expected PORT or ADDRESS:PORT, got {text!r}")
    return Endpoint(parse_port(port), expand_hosts([parse_host(host)]))


def expand_hosts(hosts) -> tuple:
    """``localhost`` means both loopbacks; the empty host means every address."""
    out = []
    for host in hosts:
        if host == "":
            return ()
        out.extend(LOOPBACK if host == "localhost" else [host])
    return tuple(dict.fromkeys(out))


def parse_size(text: str) -> int:
    """Bytes, with an optional K, M or G suffix (powers of 1024)."""
    units = {"k": 1024, "m": MIB, "g": 1024 * MIB}
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    scale = units.get(t[-1:], 1)
    if scale != 1:
        t = t[:-1]
    try:
        value = int(float(t) * scale)
    except ValueError:
        raise SettingsError(f"not a size: {text!r}") from None
    if value <= 0:
        raise SettingsError(f"must be positive: {text!r}")
    return value


def parse_seconds(text: str, zero_is_off: bool = False) -> float:
    """A finite number of seconds; positive, or 0 too where 0 turns a
    feature off."""
    try:
        value = float(text)
    except ValueError:
        raise SettingsError(f"not a number of seconds: {text!r}") from None
    if value != value or value == float("inf"):
        raise SettingsError(f"not a number of seconds: {text!r}")
    if value < 0 or (value == 0 and not zero_is_off):
        raise SettingsError(f"must be {'0 or ' if zero_is_off else ''}a positive number: {text!r}")
    return value


def validate(s: Settings) -> Settings:
    """Raise SettingsError with the first problem found, else return ``s``."""
    if not s.match_url:
        raise SettingsError("missing -murl=PATH (the URL path SSE clients request)")
    if not s.match_url.startswith("/"):
        raise SettingsError(f"-murl must start with '/': {s.match_url!r}")
    if s.control is None and not s.fifo and not s.control_socket:
        raise SettingsError("need a control channel: -cp=PORT and/or -fifo=PATH (or --control-socket=PATH)")
    for flag, path in (("-fifo", s.fifo), ("-l", s.logfile), ("-pidfile", s.pidfile),
                       ("--control-socket", s.control_socket)):
        if path and not os.path.isabs(path):
            raise SettingsError(f"{flag} needs an absolute path: {path!r}")
    if s.fifo_mode is not None and not 0 <= s.fifo_mode <= 0o777:
        raise SettingsError(f"--fifo-mode must be permission bits, 0000 to 0777: {s.fifo_mode:o}")
    if len(s.separator) != 1 or s.separator in "\r\n={":
        raise SettingsError(f"-sep must be one character other than CR, LF, '=' and '{{': {s.separator!r}")
    if s.ssl and not (s.cert_file and s.key_file):
        raise SettingsError("-ssl needs -cert-file=PEM and -privatekey-file=PEM")
    if s.max_message_bytes < MIB:
        raise SettingsError("--max-message-bytes must be at least 1M")
    if s.max_token_length < 128:
        raise SettingsError("--max-token-length must be at least 128")
    if s.max_queue_bytes < 64 * 1024:
        raise SettingsError("--max-queue-bytes must be at least 64K")
    if s.idle_flush > 5:
        raise SettingsError("--idle-flush must be at most 5 seconds")
    if s.max_head_bytes < 1024:
        raise SettingsError("--max-head-bytes must be at least 1K")
    validate_delivery(s)
    validate_security(s)
    validate_cluster(s)
    return s


def validate_security(s: Settings) -> None:
    if s.publisher_key:
        if not s.publish_url.startswith("/"):
            raise SettingsError(f"--publish-url must start with '/': {s.publish_url!r}")
        if s.publish_url == s.match_url:
            raise SettingsError("--publish-url must differ from -murl")
    if not s.auth_cookie or any(c in s.auth_cookie for c in ' ;,="\t'):
        raise SettingsError(f"--auth-cookie must be a cookie name: {s.auth_cookie!r}")
    if s.control_socket_group and not s.control_socket:
        raise SettingsError("--control-socket-group needs --control-socket=PATH")
    if s.control_secret_file and s.control is None:
        raise SettingsError("--control-secret-file needs a control port: -cp=PORT")
    if s.max_control_clients < 1:
        raise SettingsError("--max-control-clients must be at least 1")


def parse_count(text: str) -> int:
    """A whole number, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise SettingsError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise SettingsError(f"must be 0 or more: {text!r}")
    return value


def parse_seconds_or_off(text: str) -> float:
    """Seconds, where 0 turns the feature off."""
    return parse_seconds(text, zero_is_off=True)


SLOW_CLIENT_POLICIES = ("disconnect", "drop")


def parse_policy(text: str) -> str:
    if text not in SLOW_CLIENT_POLICIES:
        raise SettingsError(f"must be one of {', '.join(SLOW_CLIENT_POLICIES)}: {text!r}")
    return text


def validate_delivery(s: Settings) -> None:
    if 0 < s.heartbeat < 0.1:
        raise SettingsError("--heartbeat must be 0 (off) or at least 0.1 seconds")
    if s.history_age <= 0:
        raise SettingsError("--history-age must be positive")
    if s.retry > 24 * 3600 * 1000:
        raise SettingsError("--retry must be at most a day (86400000 ms)")


def validate_cluster(s: Settings) -> None:
    """The URL itself is checked at start (``resp.parse_url``), where a bad
    one exits 1 as a refused login does."""
    if not s.redis_prefix or any(c.isspace() for c in s.redis_prefix):
        raise SettingsError(f"--redis-prefix must be a non-empty word: {s.redis_prefix!r}")
    if s.redis_spool < 1:
        raise SettingsError("--redis-spool must be at least 1")
