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
import sys
import time
from typing import Optional

from .service import StartError

#: How long the command waits for the detached daemon to say it serves.
#: Start-up takes well under a second; past this the command stops waiting
#: and says where to look rather than hang a boot script.
READY_TIMEOUT = 30.0


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
    return context, StartReport(write_fd)


def _wait_for_report(read_fd: int, child: int, logfile: str) -> int:
    """The waiting command: read the daemon's one-line report."""
    data = b""
    deadline = time.monotonic() + READY_TIMEOUT
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([read_fd], [], [], remaining)[0]:
            _say(f"pyhasses: the daemon has not reported serving after {READY_TIMEOUT:.0f} s; see {logfile}")
            return 1
        chunk = os.read(read_fd, 4096)
        if not chunk:
            break
        data += chunk
    _reap(child)
    line = data.decode("utf-8", "replace").strip()
    if line == "ready":
        return 0
    if line.startswith("error "):
        _say(f"pyhasses: {line[6:]}")
    else:
        _say(f"pyhasses: the daemon ended during start; see {logfile}")
    return 1


def _reap(child: int) -> None:
    try:
        os.waitpid(child, 0)
    except ChildProcessError:
        pass


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()
