"""Log output and the texts written to it.

Owns: where lines go (stdout in the foreground, the ``-l`` file in daemon
mode), the ``YYYY-MM-DD HH:MM:SS pyhasses: `` prefix, the three levels of
hasses (0 errors and command output, 1 connects and closes, 2 debug), the
reopen on SIGHUP, and the ``status`` / ``clientlist`` blocks in the seed
README's format.  Must not touch: the reactor.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import time
from typing import Optional

from .hub import subscriptions

QUIET, NORMAL, DEBUG = 0, 1, 2
_TO_LOGGING = {QUIET: logging.WARNING, NORMAL: logging.INFO, DEBUG: logging.DEBUG}


class ReopeningFileHandler(logging.handlers.WatchedFileHandler):
    """The ``-l`` file, reopened when logrotate moved it, without ever
    raising.  After the drop to ``-user`` the daemon may be unable to create
    the new file (hasses' usual set-up: a log in root's /var/log): then lines
    go on to the old file, which says why once, instead of every log call
    raising into the connection that made it."""

    _failure = ""

    def reopenIfNeeded(self) -> None:
        try:
            st = os.stat(self.baseFilename)
        except OSError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != (self.dev, self.ino):
            self.reopen()

    def reopen(self, note: bool = True) -> Optional[str]:
        """Returns None, or why the file could not be reopened (written to
        the old file too when ``note``; once per reason either way)."""
        try:
            stream = self._open()
        except OSError as exc:
            reason = f"cannot reopen log file {self.baseFilename}: {exc.strerror}; still writing to the old file"
            if note:
                self._note_failure(reason)
            else:
                self._failure = reason  # the caller says it; the next log line must not again
            return reason
        old, self.stream = self.stream, stream
        self._statstream()
        self._failure = ""
        if old is not None:
            old.close()
        return None

    def _note_failure(self, text: str) -> None:
        if text == self._failure or self.stream is None:
            return
        self._failure = text
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        try:
            self.stream.write(f"{stamp} pyhasses: {text}\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass


class ReopenFailed(Exception):
    """The log file could not be reopened; the text says why."""


class OneLineFormatter(logging.Formatter):
    """Every record is one line of UTF-8 whatever a peer or a publisher put
    in it (a token, an agent, a JSON field name): control characters,
    surrogates and bytes that were not UTF-8 are written as escapes, so no
    line can be forged and none is lost to an encoding error."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if text.isprintable():
            return text
        return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


class Log:
    """hasses' ``toLog(level, ...)``, on top of ``logging``."""

    def __init__(self, level: int = NORMAL, name: str = "pyhasses"):
        self._logger = logging.getLogger(name)
        self._logger.propagate = False
        self._handler = None
        self.level = level

    @property
    def level(self) -> int:
        return self._level

    @level.setter
    def level(self, value: int) -> None:
        self._level = value
        # Plain attributes: the hot paths ask before building a line.
        self.informing = value >= NORMAL
        self.debugging = value >= DEBUG
        self._logger.setLevel(_TO_LOGGING[value])

    def to_stream(self, stream=None) -> None:
        self._use(logging.StreamHandler(stream or sys.stdout))

    def to_file(self, path: str) -> None:
        """Opens (creates) the file now: an unwritable log fails at start."""
        self._use(ReopeningFileHandler(path, encoding="utf-8"))

    def _use(self, handler: logging.Handler) -> None:
        handler.setFormatter(OneLineFormatter("%(asctime)s pyhasses: %(message)s", "%Y-%m-%d %H:%M:%S"))
        if self._handler is not None:
            self._logger.removeHandler(self._handler)
            self._handler.close()
        self._handler = handler
        self._logger.addHandler(handler)

    def reopen(self) -> bool:
        """After logrotate moved the file: write to a new one at the same
        path.  False when logging to stdout (nothing to reopen); raises
        ReopenFailed when the file cannot be opened (after the drop to
        ``-user``, in a directory only root may write), and lines then go
        on to the old file."""
        handler = self._handler
        if not isinstance(handler, ReopeningFileHandler):
            return False
        handler.acquire()
        try:
            failure = handler.reopen(note=False)
        finally:
            handler.release()
        if failure:
            raise ReopenFailed(failure)
        return True

    def stream_fileno(self):
        stream = getattr(self._handler, "stream", None)
        return stream.fileno() if stream is not None and hasattr(stream, "fileno") else None

    def close(self) -> None:
        if self._handler is not None:
            self._handler.flush()

    # hasses' levels
    def error(self, msg: str) -> None:
        self._logger.error(msg)

    def out(self, msg: str) -> None:
        """Command output: shown at every level, as hasses' level 0."""
        self._logger.warning(msg)

    def info(self, msg: str) -> None:
        self._logger.info(msg)

    def debug(self, msg: str) -> None:
        self._logger.debug(msg)

    def block(self, lines) -> None:
        for line in lines:
            self.out(line)


def duration(seconds: float) -> str:
    """hasses' ``diffsec_to_str``: ``HH:MM:SS`` or ``Nday HH:MM:SS``."""
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    hms = f"{h:02d}:{m:02d}:{s:02d}"
    return f"{d}day {hms}" if d else hms


def status_block(info: dict) -> list:
    """The ``status`` command's text; ``info`` comes from the service."""
    lines = [
        "------- status of pyhasses -------",
        f"Version: {info['version']}",
        f"Python: {info['python']}",
        f"Pid: {info['pid']}",
        f"Uid: {info['uid']} ({info['user'] or 'not set'})",
        f"Running time: {info['runningtime']}",
        f"Mode: {info['mode']}",
    ]
    lines += info.get("mode_details", [])
    lines += [
        f"Loglevel: {info['loglevel']}",
        f"Reinit allowed: {'yes' if info['reinit'] else 'no'}",
        f"CORS-base url: {info['cors']}",
        f"Count of connected clients: {info['allconncli']}",
        f"Current registred SSE clients: {info['sseconncli']}",
        f"Maximum number of connections: {info['maxconncli']}",
        f"Total client handshaked: {info['handshakes']}",
        f"Total reinit connection: {info['reinits']}",
        f"Total message processed: {info['msgproccnt']}",
        f"Total message sent: {info['msgsendcnt']}",
        "------------- end --------------",
    ]
    return lines


def client_list_block(clients, now: float = None) -> list:
    """The ``clientlist`` command's text, one entry per open SSE connection."""
    now = time.time() if now is None else now
    lines = ["------- requested client list -------", "List of clients:"]
    for n, c in enumerate(clients, 1):
        tls = c.tls_info()
        lines.append(
            f"#{n} - <{c.fd}> info: {c.peer} S:{c.state_name} Err: 0 Messages: {c.messages} "
            f"Reinit: {c.reinit_count} SSL:{'Yes' if tls else 'No'}"
        )
        handshaked = duration(now - c.handshaked_at) if c.handshaked_at else "-"
        lines.append(
            f"  Connection time: {duration(now - c.connected_at)}  Handshaked time: {handshaked} UniqId:{c.uniq_id}"
        )
        if c.agent:
            lines.append(f"  Agent: {c.agent}")
        if tls:
            lines.append(f"  {tls}")
        lines.append(f"  Subscribes: {','.join(subscriptions(c))}")
    lines.append("---------------- end ----------------")
    return lines
