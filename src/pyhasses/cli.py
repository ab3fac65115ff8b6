"""Command line: hasses' single-dash ``-flag=value`` options, GNU long options,
help and version, and the exit codes.

Owns: turning argv into a validated ``Settings``; what ``-h`` and ``-v`` print;
exit status 2 for usage errors and 1 for an unknown switch or user (as hasses).
Must not touch: sockets, logging handlers.  ``service.run`` does the rest.
"""

from __future__ import annotations

import dataclasses
import grp
import os
import pwd
import sys
from typing import Callable, Optional

from . import __version__, config, fifo
from .settings import (
    Endpoint,
    Settings,
    SettingsError,
    expand_hosts,
    parse_count,
    parse_endpoint,
    parse_host,
    parse_policy,
    parse_seconds,
    parse_seconds_or_off,
    parse_size,
    validate,
)

EXIT_USAGE = 2
EXIT_FAILURE = 1


class UsageError(Exception):
    """Bad command line; ``status`` is the exit code, the text the reason."""

    def __init__(self, text: str, status: int = EXIT_USAGE):
        super().__init__(text)
        self.status = status


@dataclasses.dataclass(frozen=True)
class Option:
    legacy: tuple          # hasses spellings, e.g. ("-p",)
    long: str              # GNU spelling, e.g. "--port"
    dest: str              # key in the raw option dict
    metavar: Optional[str]  # None: a switch without value
    help: str
    convert: Callable = str
    const: object = True   # the value a switch stores


def _octal(text: str) -> int:
    try:
        return int(text, 8)
    except ValueError:
        raise SettingsError(f"not an octal file mode: {text!r}") from None


def _group(text: str) -> int:
    try:
        return fifo.parse_group(text)
    except KeyError:
        raise SettingsError(f"no such group: {text!r}") from None


def _loopback_endpoint(text: str) -> Endpoint:
    """``[ADDR:]PORT`` for a port that listens on loopback unless told."""
    return parse_endpoint(text, default_hosts=expand_hosts(["localhost"]))


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise SettingsError(f"not a whole number: {text!r}") from None


OPTIONS = (
    # hasses' own flags (PROTOCOL.md 1)
    Option(("-p",), "--port", "port", "[ADDR:]PORT", "SSE listening port (required); dual-stack unless an address is given",
           parse_endpoint),
    Option(("-murl",), "--match-url", "match_url", "PATH", "URL path SSE clients request (required)"),
    Option(("-cp",), "--control-port", "control", "[ADDR:]PORT", "TCP control port (loopback unless an address is given)",
           _loopback_endpoint),
    Option(("-fifo",), "--fifo", "fifo", "PATH", "control FIFO, created if missing"),
    Option(("-sep", "-F"), "--separator", "separator", "C",
           "message delimiter on the control channels: its first character (default ;)", lambda t: t[:1]),
    Option(("-q",), "--quiet", "loglevel", None, "log level 0: errors and command output", const=0),
    Option(("-debug",), "--debug", "loglevel", None, "log level 2: debug", const=2),
    Option(("-l",), "--log-file", "logfile", "PATH", "log file in daemon mode (default /var/log/pyhasses.log)"),
    Option(("-pidfile",), "--pidfile", "pidfile", "PATH", "pid file, removed on exit"),
    Option(("-ssl",), "--ssl", "ssl", None, "serve HTTPS"),
    Option(("-cert-file",), "--cert-file", "cert_file", "PEM", "TLS certificate (with -ssl)", os.path.abspath),
    Option(("-privatekey-file",), "--privatekey-file", "key_file", "PEM", "TLS private key (with -ssl)",
           os.path.abspath),
    Option(("-cors-base",), "--cors-base", "cors_base", "URL", "value of Access-Control-Allow-Origin (default *)"),
    Option(("-ra",), "--reinit", "reinit", None, "allow re-initialisation of an established stream"),
    Option(("-user",), "--user", "user", "NAME", "drop privileges to NAME after opening ports and files"),
    Option(("-nodaemon",), "--nodaemon", "nodaemon", None, "stay in the foreground, log to stdout"),
    # pyhasses settings
    Option((), "--bind", "bind", "ADDR", "address for the SSE port (default: every IPv4 and IPv6 address)",
           parse_host),
    Option((), "--control-bind", "control_bind", "ADDR",
           "address for the control port (default localhost: 127.0.0.1 and ::1; * for every address)",
           parse_host),
    Option((), "--fifo-mode", "fifo_mode", "OCTAL",
           "mode of the FIFO (default 0660 for one it creates; given, it is also set on an existing one)", _octal),
    Option((), "--fifo-group", "fifo_group", "GROUP",
           "group of the FIFO, so its members may publish (default: the run user's group)", _group),
    Option((), "--handshake-timeout", "handshake_timeout", "SECONDS",
           "close a connection that has not completed its handshake (default 20)",
           parse_seconds),
    Option((), "--stream-lifetime", "stream_lifetime", "SECONDS",
           "close an established stream about this long (+-10 %) after its handshake (default 3600)",
           parse_seconds),
    Option((), "--max-head-bytes", "max_head_bytes", "SIZE", "largest request head (default 32K)",
           parse_size),
    Option((), "--max-queue-bytes", "max_queue_bytes", "SIZE",
           "bytes queued for one client before it is closed as too slow (default 4M)",
           parse_size),
    Option((), "--max-message-bytes", "max_message_bytes", "SIZE", "largest message (default 1M)",
           parse_size),
    Option((), "--max-token-length", "max_token_length", "N", "longest token, subscribed or addressed (default 128)", _int),
    Option((), "--max-except", "max_except", "N",
           "ids one JSON message may list in \"except\" (default 256); more: refused", parse_count),
    Option((), "--max-targets", "max_targets", "N",
           "addresses one JSON message may list in \"to\" (default 4096); more: refused; 0: no limit", parse_count),
    Option((), "--idle-flush", "idle_flush", "SECONDS",
           "take an unterminated control part as complete after this idle time (default 0.5)",
           parse_seconds),

    # -- TLS (issue 3) --
    Option((), "--key-passphrase-file", "key_passphrase_file", "PATH",
           "file whose first line is the passphrase of an encrypted -privatekey-file", os.path.abspath),

    # -- service: daemon mode, config file (issue 4) --
    Option(("-config",), "--config", "config", "FILE",
           "read options from FILE, one per line as in hasses.conf; the command line wins"),

    # -- delivery: history, heartbeats, caps (issue 5) --
    Option((), "--history-count", "history_count", "N",
           "events held for clients that resume with Last-Event-ID (default 10000; 0: none)",
           parse_count),
    Option((), "--history-bytes", "history_bytes", "SIZE", "memory the held events may take (default 16M)",
           parse_size),
    Option((), "--history-age", "history_age", "SECONDS", "hold events no longer than this (default 3600)",
           parse_seconds),
    Option((), "--heartbeat", "heartbeat", "SECONDS",
           "send a comment on idle streams this often (default 15; 0: off)",
           parse_seconds_or_off),
    Option((), "--retry", "retry", "MS",
           "base of the retry hint sent to each stream, with jitter up to as much again (default 3000; 0: none)",
           parse_count),
    Option((), "--max-clients", "max_clients", "N",
           "open SSE connections allowed; above it 503 with Retry-After (default 0: no cap)",
           parse_count),
    Option((), "--drain", "drain", "SECONDS",
           "on SIGTERM, close streams spread over this period (default 0: all at once)",
           parse_seconds_or_off),
    Option((), "--slow-client-policy", "slow_client_policy", "disconnect|drop",
           "a client whose write queue is full: close it (default), or drop its oldest queued events"
           " and send it a reset event",
           parse_policy),
    Option((), "--metrics-port", "metrics", "[ADDR:]PORT",
           "serve GET /metrics (Prometheus text) on this port (loopback unless an address is given)",
           _loopback_endpoint),

    # -- security: access control (issue 12) --
    Option((), "--subscriber-key", "subscriber_key", "FILE",
           "streams need a JWT signed with this key (PEM public key: ES256/RS256; else an HS256 secret)",
           os.path.abspath),
    Option((), "--auth-cookie", "auth_cookie", "NAME",
           "cookie that carries a stream's JWT (default pyhassesAuthorization)"),
    Option((), "--publisher-key", "publisher_key", "FILE",
           "accept POST to --publish-url with a JWT signed with this key (same forms as --subscriber-key)",
           os.path.abspath),
    Option((), "--publish-url", "publish_url", "PATH", "URL path of HTTP publishing on the SSE port (default /publish)"),
    Option((), "--control-socket", "control_socket", "PATH",
           "Unix-domain control socket, mode 0660, same protocol as the control port"),
    Option((), "--control-socket-group", "control_socket_group", "NAME", "group of the control socket"),
    Option((), "--control-secret-file", "control_secret_file", "FILE",
           "TCP control connections must first send 'auth SECRET' (the file's content)", os.path.abspath),
    Option((), "--max-subscriptions", "max_subscriptions", "N",
           "tokens one stream may subscribe to; more is 400 (default 64; 0: no cap)", parse_count),
    Option((), "--max-control-clients", "max_control_clients", "N",
           "open control connections allowed at once on the TCP port, and as many on the Unix socket (default 256)", parse_count),
    Option((), "--control-idle-timeout", "control_idle_timeout", "SECONDS",
           "close a control connection silent this long (default 300; 0: never)", parse_seconds_or_off),
    # -- cluster on Redis (issue 13) --
    Option((), "--redis", "redis", "URL",
           "join a cluster through Redis: redis://[user:password@]host:port/db or unix:///path"),
    Option((), "--redis-prefix", "redis_prefix", "WORD", "prefix of the Redis keys (default pyhasses)"),
    Option((), "--redis-spool", "redis_spool", "N",
           "publishes kept in order while Redis is away; past it they are refused (default 10000)",
           parse_count),
    Option((), "--reuse-port", "reuse_port", None,
           "share the SSE port with other nodes on this host (SO_REUSEPORT)"),

    # -- end of options --
)

HELP_SWITCHES = {"-h", "-help", "--help"}
VERSION_SWITCHES = {"-v", "-V", "-version", "--version"}

COMMANDS_HELP = """\
Commands on the control port or FIFO (parts end at the delimiter or a line end):
  "status"                     print status/statistics to the log
  "tcpstatus"                  reply with status/statistics as JSON (TCP only)
  "clientlist"                 list clients to the log
  "numberofclients"            print the number of clients to the log
  "tcpnumberofclients"         reply {"numberofclients": N} (TCP only)
  "subscribedclients:<sub>"    print the number of clients subscribed to <sub>
  "tcpsubscribedclients:<sub>" reply {"subscribedclients": N, "subscribedfor": "<sub>"}
  "tcpclientlist"              reply with every client as one JSON document (TCP only)
  "tcpmetrics"                 reply with the counters in the Prometheus text format (TCP only)
  "loglevel_quiet" | "loglevel_normal" | "loglevel_debug"   set the log level
  "reinit_enable" | "reinit_disable"   allow or refuse re-initialised streams
  "kick:<id>" | "kicktoken:<token>"    close the streams opened with id=<id> / subscribed to <token>
  "tcpkick:<id>" | "tcpkicktoken:<token>"   the same, replying {"kicked": N} (TCP only)
  "auth <secret>"              first part on the control port under --control-secret-file
  "<token>=<message>"          send to the subscribers of <token>
  "<prefix>*=<message>"        send to subscriptions starting with <prefix>
  "<token>-<id>=<message>"     send to <token> except the client connected with id=<id>
  "*=<message>"                send to every client
  {"to": "<token>", "data": "...", "event": "...", "except": "<id>", "retry": MS, "ack": true}
                               JSON form: the delimiter does not split it
"""


def help_text() -> str:
    lines = [
        f"pyhasses {__version__}: Server-Sent Events notification daemon (hasses 1.30 compatible)",
        "Usage: pyhasses -p=PORT -murl=PATH [-cp=PORT] [-fifo=PATH] [options]",
        "",
        "Options (hasses spelling and GNU spelling are equivalent):",
    ]
    for opt in OPTIONS:
        names = [f"{n}={opt.metavar}" if opt.metavar else n for n in opt.legacy]
        names.append(f"{opt.long} {opt.metavar}" if opt.metavar else opt.long)
        lines.append(f"  {', '.join(names)}")
        lines.append(f"      {opt.help}")
    lines += [
        "  -h, -help, --help             this help",
        "  -v, -V, -version, --version   print the version",
        "",
        COMMANDS_HELP,
    ]
    return "\n".join(lines)


_BY_NAME = {}
for _opt in OPTIONS:
    for _name in (*_opt.legacy, _opt.long):
        _BY_NAME[_name] = _opt


def _suggestion(name: str, eq: str, value: str) -> str:
    """``; did you mean -p=8080?`` for a switch close to a known one: a GNU
    name with one dash (``-port``), a hasses name with two, or a typo."""
    import difflib

    opt = _BY_NAME.get("-" + name) or _BY_NAME.get(name.lstrip("-") and "-" + name.lstrip("-"))
    if opt is None:
        close = difflib.get_close_matches(name, list(_BY_NAME), n=1, cutoff=0.75)
        opt = _BY_NAME[close[0]] if close else None
    if opt is None:
        return ""
    if opt.legacy:
        spelled = f"{opt.legacy[0]}={value}" if opt.metavar else opt.legacy[0]
    else:
        spelled = f"{opt.long} {value}" if opt.metavar and eq else opt.long
    return f"; did you mean {spelled}?"


def parse_args(argv) -> dict:
    """argv (without the program name) to a dict of converted values.
    Raises UsageError; returns {"help": True} or {"version": True} early."""
    raw: dict = {}
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg in HELP_SWITCHES:
            return {"help": True}
        if arg in VERSION_SWITCHES:
            return {"version": True}
        name, eq, value = arg.partition("=")
        opt = _BY_NAME.get(name)
        if opt is None or not arg.startswith("-"):
            raise UsageError(f'unknown switch: "{arg}"{_suggestion(name, eq, value)} (see -h)', EXIT_FAILURE)
        if opt.metavar is None:
            if eq:
                raise UsageError(f"{name} takes no value")
            raw[opt.dest] = opt.const
            continue
        if not eq:
            # GNU style "--port 8080"; hasses style always has "=".
            if not name.startswith("--") or i >= len(args):
                raise UsageError(f"{name} needs a value: {name}={opt.metavar}")
            value = args[i]
            i += 1
        try:
            raw[opt.dest] = opt.convert(value)
        except SettingsError as exc:
            raise UsageError(f"{name}: {exc}") from None
    return raw


def build_settings(raw: dict) -> Settings:
    """Apply the defaults that depend on other options, then validate."""
    if "port" not in raw:
        raise SettingsError("missing -p=PORT (the SSE listening port)")
    sse: Endpoint = raw.pop("port")
    raw.setdefault("match_url", "")
    if "bind" in raw:
        sse = Endpoint(sse.port, expand_hosts([raw.pop("bind")]))
    control = raw.pop("control", None)
    control_bind = raw.pop("control_bind", None)
    if control_bind is not None:
        if control is None:
            raise SettingsError("--control-bind needs a control port: -cp=PORT")
        control = Endpoint(control.port, expand_hosts([control_bind]))
    user = raw.get("user")
    if user is not None:
        try:
            pwd.getpwnam(user)
        except KeyError:
            raise UsageError(f'Error unknown user/Cannot setuid to user: "{user}"', EXIT_FAILURE) from None
    group = raw.get("control_socket_group")
    if group is not None:
        try:
            grp.getgrnam(group)
        except KeyError:
            raise UsageError(f"--control-socket-group: unknown group {group!r}") from None
    return validate(Settings(sse=sse, control=control, **raw))


def with_config_file(raw: dict) -> dict:
    """The options of ``-config=FILE`` under those of the command line."""
    if "config" not in raw:
        return raw
    raw = dict(raw)
    return {**config.load(raw.pop("config"), parse_args, UsageError), **raw}


def _notice_ignored_log_file(given: dict, merged: dict) -> None:
    """-l typed with -nodaemon is a mistake worth a line; -l in a config
    file shared by both modes (the packaged one) is not."""
    if merged.get("nodaemon"):
        print(f"pyhasses: -l={given['logfile']} is ignored with -nodaemon: the log goes to stdout",
              file=sys.stderr)


def main(argv=None) -> int:
    from . import service

    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("Usage: pyhasses -p=PORT -murl=PATH [-cp=PORT] [-fifo=PATH] [options]\n"
              "pyhasses: no options given; pyhasses -h lists them all", file=sys.stderr)
        return EXIT_USAGE
    try:
        raw = parse_args(argv)
        if raw.get("help"):
            print(help_text())
            return 0
        if raw.get("version"):
            print(f"pyhasses {__version__}")
            return 0
        if "logfile" in raw:
            _notice_ignored_log_file(raw, with_config_file(raw))
        settings = build_settings(with_config_file(raw))
    except config.ConfigError as exc:
        print(f"pyhasses: {exc}", file=sys.stderr)
        return exc.status
    except UsageError as exc:
        print(f"pyhasses: {exc}", file=sys.stderr)
        return exc.status
    except SettingsError as exc:
        print(f"pyhasses: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return service.run(settings)
