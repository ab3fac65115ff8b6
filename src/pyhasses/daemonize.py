"""Leaving the terminal and root behind.

Owns: detaching with python-daemon's ``DaemonContext`` (keeping the
descriptors opened before it), the privilege drop to ``-user`` (group and
supplementary groups included), and the start report: the command the
operator typed waits until the detached daemon serves, so that its exit
status (0 serving, 1 not) and any reason reach the terminal.  Must not touch:
sockets' contents, the reactor (it is built after this, in the detached
process).
"""

from __future__ import annotations

import os
import pwd
import select
import signal
import sys
import time
from typing import Optional

from .errors import StartError

#: How long the command waits for the detached daemon to say it serves.
#: Start-up takes well under a second; past this the command stops waiting
#: and says where to look rather than hang a boot script.
READY_TIMEOUT = 30.0
#: Interrupted before the daemon said its pid: how long to wait for it, so
#: that the daemon being started can still be told to stop.
PID_WAIT = 2.0
#: What the operator may stop the waiting command with.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """The operator stopped the command while it waited (Ctrl-C, SIGTERM)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def drop_privileges(user: str) -> None:
    """Become ``user``: supplementary groups, then group, then user, in that
    order (after setuid there is no right left to change groups)."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise StartError(f'Error unknown user/Cannot setuid to user: "{user}"') from None
    if os.getuid() == entry.pw_uid and os.getgid() == entry.pw_gid:
        return
    try:
        os.initgroups(user, entry.pw_gid)
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
    except PermissionError as exc:
        raise StartError(f"cannot change to user {user}: {exc.strerror}") from None
    os.environ["HOME"] = entry.pw_dir
    os.environ["USER"] = os.environ["LOGNAME"] = user


class StartReport:
    """The detached daemon's end of the pipe to the waiting command."""

    def __init__(self, fd: int):
        self.fd: Optional[int] = fd

    def started(self) -> None:
        """The detached daemon's pid, so that the command can stop it."""
        if self.fd is not None:
            try:
                os.write(self.fd, b"pid %d\n" % os.getpid())
            except OSError:
                pass

    def ready(self) -> None:
        self._send("ready")

    def failed(self, reason: str) -> None:
        self._send("error " + reason)

    def _send(self, text: str) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, (text.replace("\n", " ") + "\n").encode("utf-8", "replace"))
        except OSError:
            pass  # the command is gone (killed): nobody left to tell
        finally:
            os.close(self.fd)
            self.fd = None


def detach(preserve, logfile: str):
    """Daemonise.  In the detached daemon, returns ``(context, report)``:
    the open DaemonContext (close it at exit) and the StartReport to call
    once serving.  In the command the operator started, never returns: it
    waits for the report and exits 0 (serving) or 1 (with the reason on
    stderr)."""
    import daemon

    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        os.close(write_fd)
        os._exit(_wait_for_report(read_fd, pid, logfile))
    os.close(read_fd)
    context = daemon.DaemonContext(
        files_preserve=[p for p in preserve if p is not None] + [write_fd],
        working_directory="/",
        umask=0o022,
        detach_process=True,
        prevent_core=False,
        signal_map={},  # the reactor installs its own handlers
    )
    try:
        context.open()
    except Exception as exc:
        os.write(write_fd, f"error cannot enter daemon mode: {exc}\n".encode())
        os._exit(1)
    report = StartReport(write_fd)
    report.started()
    return context, report


def _wait_for_report(read_fd: int, child: int, logfile: str) -> int:
    """The waiting command: read the daemon's report ("pid N", then "ready"
    or "error REASON").  Ctrl-C or SIGTERM here is obeyed at once: the
    daemon being started is told to stop (SIGTERM, which it handles as
    soon as it serves) and the command ends with status 1."""
    lines = _ReportLines(read_fd)
    for signum in STOP_SIGNALS:
        signal.signal(signum, _interrupt)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # held since the start (service.run)
    try:
        line = lines.final(time.monotonic() + READY_TIMEOUT)
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # the answer is in: finish saying it
    except Interrupted as stop:
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # a second Ctrl-C must not cut this short
        return _stop_starting_daemon(stop.signum, lines, logfile)
    if line is None:
        _say(f"pyhasses: the daemon has not reported serving after {READY_TIMEOUT:.0f} s; see {logfile}")
        return 1
    _reap(child)
    if line == "ready":
        return 0
    if line.startswith("error "):
        _say(f"pyhasses: {line[6:]}")
    else:
        _say(f"pyhasses: the daemon ended during start; see {logfile}")
    return 1


def _interrupt(signum, frame) -> None:
    raise Interrupted(signum)


def _stop_starting_daemon(signum: int, lines: "_ReportLines", logfile: str) -> int:
    name = signal.Signals(signum).name
    if lines.pid is None:
        try:
            lines.wait_pid(time.monotonic() + PID_WAIT)  # its pid comes right after detaching
        except Interrupted:
            pass
    if lines.pid is None:
        _say(f"pyhasses: start interrupted by {name}; the daemon did not say its pid, see {logfile}")
        return 1
    try:
        os.kill(lines.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    _say(f"pyhasses: start interrupted by {name}; told the daemon (pid {lines.pid}) to stop")
    return 1


class _ReportLines:
    """The lines the daemon writes to the start pipe; ``pid`` once said."""

    def __init__(self, fd: int):
        self.fd = fd
        self.pid = None
        self._buf = b""
        self._eof = False

    def final(self, deadline: float):
        """The line that ends the report ("ready", "error ...", or "" when
        the daemon closed the pipe without one); None at the deadline."""
        while True:
            line = self._next(deadline)
            if line is None or not self._is_pid(line):
                return line

    def wait_pid(self, deadline: float) -> None:
        while self.pid is None:
            line = self._next(deadline)
            if line is None or (line != "" and not self._is_pid(line)) or (line == "" and self._eof):
                return

    def _is_pid(self, line: str) -> bool:
        if line.startswith("pid ") and line[4:].isdigit():
            self.pid = int(line[4:])
            return True
        return False

    def _next(self, deadline: float):
        while b"\n" not in self._buf:
            if self._eof:
                return ""
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.fd], [], [], remaining)[0]:
                return None
            chunk = os.read(self.fd, 4096)
            self._eof = not chunk
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\n", 1)
        return raw.decode("utf-8", "replace").strip()


def _reap(child: int) -> None:
    try:
        os.waitpid(child, 0)
    except ChildProcessError:
        pass


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()
