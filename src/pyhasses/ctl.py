"""``pyhasses-ctl``: publish to and question a running pyhasses from a shell.

    pyhasses-ctl send room1 'hello'
    pyhasses-ctl send --event chat --ack room1 'line one
    line two'
    pyhasses-ctl status | metrics | count [TOKEN] | clients
    pyhasses-ctl --fifo /run/pyhasses/fifo send room1 hello

Owns: the command line and what it prints; exit status 0 on success, 1 when
the daemon answered an error, 2 for a usage error, 3 when no daemon could be
reached.  Must not touch: the wire format, which ``publish.py`` owns.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional

from . import __version__
from .hub import RoutingError, parse_target
from .publish import (DEFAULT_HOST, DEFAULT_PORT, DEFAULT_TIMEOUT, Control, DaemonError,
                      NotReachable, PublishError)

EXIT_OK = 0
EXIT_DAEMON_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_REACHABLE = 3
DEFAULT_MAX_TOKEN_LENGTH = 128  # the daemon's default --max-token-length
EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a tool killed by SIGPIPE

LOG_ONLY = "a FIFO has no reply channel: the daemon writes the answer to its log"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyhasses-ctl",
        description="Publish to a running pyhasses and ask it questions, over its TCP "
                    "control port (default) or its FIFO.",
        epilog="Exit status: 0 done, 1 the daemon answered an error, 2 usage error, "
               "3 no daemon reachable.",
    )
    parser.add_argument("--version", action="version", version=f"pyhasses-ctl {__version__}")
    _channel_options(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    send = commands.add_parser("send", help="send MESSAGE to the subscribers of TOKEN",
                               description="Send MESSAGE to the subscribers of TOKEN "
                                           "(TOKEN, PREFIX* or * for everyone).")
    send.add_argument("token", metavar="TOKEN")
    send.add_argument("message", metavar="MESSAGE", help="the message; - reads it from standard input")
    send.add_argument("--event", metavar="NAME", help="SSE event name (browsers: addEventListener(NAME))")
    send.add_argument("--except", dest="except_ids", metavar="ID", action="append", default=[],
                      help="skip the client that connected with id=ID (may be repeated)")
    send.add_argument("--retry", metavar="MS", type=int, help="tell browsers to reconnect after MS milliseconds")
    send.add_argument("--json", dest="json_form", action="store_true",
                      help="use the JSON form (chosen anyway when the message needs it)")
    send.add_argument("--ack", action="store_true",
                      help="wait for the acknowledgement and print how many clients got the message")
    _channel_options(send)

    for name, text in (("status", "print the daemon's status and counters"),
                       ("metrics", "print the counters and process figures in the Prometheus text format"),
                       ("clients", "list the connected clients"),
                       ("count", "print the number of clients, or of those subscribed to TOKEN")):
        sub = commands.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        if name == "count":
            sub.add_argument("token", metavar="TOKEN", nargs="?")
        if name == "clients":
            sub.add_argument("--json", dest="json_out", action="store_true",
                             help="print the daemon's JSON document instead of a table")
        _channel_options(sub)
    return parser


def _channel_options(parser: argparse.ArgumentParser, defaults: bool = False) -> None:
    """Where the daemon is; accepted before and after the command name."""

    def default(value):
        return value if defaults else argparse.SUPPRESS

    # The examples' variables, so one setting serves them and this tool.
    parser.add_argument("--host", default=default(os.environ.get("PYHASSES_HOST") or DEFAULT_HOST),
                        help=f"control port address (default $PYHASSES_HOST, else {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=default(os.environ.get("PYHASSES_PORT") or DEFAULT_PORT),
                        help=f"control port, the daemon's -cp (default $PYHASSES_PORT, else {DEFAULT_PORT})")
    parser.add_argument("--fifo", metavar="PATH", default=default(os.environ.get("PYHASSES_FIFO") or None),
                        help="write to the daemon's FIFO (its -fifo) instead of the TCP port (default $PYHASSES_FIFO)")
    parser.add_argument("--max-token-length", metavar="N", type=int,
                        default=default(os.environ.get("PYHASSES_MAX_TOKEN_LENGTH") or DEFAULT_MAX_TOKEN_LENGTH),
                        help="the daemon's --max-token-length: longer tokens and ids are refused here"
                             f" (default $PYHASSES_MAX_TOKEN_LENGTH, else {DEFAULT_MAX_TOKEN_LENGTH})")
    parser.add_argument("--sep", metavar="C", default=default(";"),
                        help="the daemon's -sep delimiter (default ;)")
    parser.add_argument("--timeout", metavar="SECONDS", type=float, default=default(DEFAULT_TIMEOUT),
                        help=f"give up after this long (default {DEFAULT_TIMEOUT:g})")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "send" and args.ack and args.fifo:
        parser.error("--ack needs the TCP control port (a FIFO has no reply channel)")
    if len(args.sep) != 1:
        parser.error("--sep takes one character")
    control = Control(args.host, args.port, args.fifo, args.timeout, args.sep)
    try:
        status = COMMANDS[args.command](control, args)
        sys.stdout.flush()  # here, so that a reader gone early is caught below
        return status
    except BrokenPipeError:
        # The reader stopped early (``| head``): end quietly, as a shell tool does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except NotReachable as exc:
        return _fail(exc, EXIT_NOT_REACHABLE)
    except DaemonError as exc:
        return _fail(exc, EXIT_DAEMON_ERROR)
    except PublishError as exc:
        return _fail(exc, EXIT_USAGE)


def _fail(exc: Exception, status: int) -> int:
    print(f"pyhasses-ctl: {exc}", file=sys.stderr)
    return status


def cmd_send(control: Control, args) -> int:
    _check_lengths(args.token, args.except_ids, args.max_token_length)
    message = sys.stdin.read() if args.message == "-" else args.message
    if args.message == "-" and message.endswith("\n"):
        message = message[:-1]  # the line end that echo and here-documents add
    reply = control.publish(args.token, message, event=args.event, except_ids=args.except_ids,
                            retry=args.retry, ack=args.ack, json_form=args.json_form)
    if reply is not None:
        print(f"delivered: {reply.get('delivered')}")
        print(f"id: {reply.get('id')}")
    return EXIT_OK


def cmd_status(control: Control, args) -> int:
    if control.fifo:
        return _to_log(control, "status")
    for key, value in control.status().items():
        print(f"{key}: {value}")
    return EXIT_OK


def _check_lengths(token: str, except_ids, limit: int) -> None:
    """What the daemon would drop with only a log line (over the FIFO, or a
    legacy part) is refused here, with the reason."""
    try:
        parse_target(token, limit)
    except RoutingError as exc:
        raise PublishError(f"bad token {token!r}: {exc} (the daemon would refuse it)") from None
    for uniq in except_ids:
        if len(uniq) > limit:
            raise PublishError(f"excluded id longer than {limit} characters (the daemon would refuse it)")


def cmd_metrics(control: Control, args) -> int:
    if control.fifo:
        raise PublishError("metrics replies only on the TCP control port")
    text = control.exchange(b"tcpmetrics\n").decode("utf-8", "replace")
    if not text.strip():
        raise DaemonError(f"no reply to tcpmetrics from the {control.where}")
    sys.stdout.write(text)
    return EXIT_OK


def cmd_count(control: Control, args) -> int:
    token: Optional[str] = args.token
    if control.fifo:
        return _to_log(control, "numberofclients" if token is None else f"subscribedclients:{token}")
    print(control.count(token))
    return EXIT_OK


def cmd_clients(control: Control, args) -> int:
    if control.fifo:
        return _to_log(control, "clientlist")
    listing = control.clients()
    if listing is None:
        # A daemon without tcpclientlist (hasses, older pyhasses) only logs it.
        control.tell("clientlist")
        return _note("this daemon has no tcpclientlist: it wrote the client list to its log")
    table = None if args.json_out else client_table(listing)
    print(table if table is not None else json.dumps(listing, indent=2, ensure_ascii=False))
    return EXIT_OK


CLIENT_COLUMNS = ("peer", "id", "state", "subscriptions", "messages", "queued", "tls", "agent")


def client_table(listing) -> Optional[str]:
    """One line per client, or None for a document of another shape
    (then it is printed as it came)."""
    clients = listing.get("clients") if isinstance(listing, dict) else None
    if not isinstance(clients, list) or not all(isinstance(c, dict) for c in clients):
        return None
    rows = [CLIENT_COLUMNS]
    for c in clients:
        rows.append(tuple(_cell(c.get(key)) for key in CLIENT_COLUMNS))
    widths = [max(len(row[i]) for row in rows) for i in range(len(CLIENT_COLUMNS) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def _cell(value) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    return str(value).replace("\n", " ")


def _to_log(control: Control, command: str) -> int:
    """Over the FIFO a question cannot be answered: the daemon logs it."""
    control.tell(command)
    return _note(LOG_ONLY)


def _note(text: str) -> int:
    print(f"pyhasses-ctl: {text}", file=sys.stderr)
    return EXIT_OK


COMMANDS = {"send": cmd_send, "status": cmd_status, "metrics": cmd_metrics, "count": cmd_count, "clients": cmd_clients}

if __name__ == "__main__":
    sys.exit(main())
