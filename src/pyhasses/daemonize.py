"""Leaving the terminal and root behind.

Owns: detaching with python-daemon's ``DaemonContext`` (keeping the
descriptors opened before it) and the privilege drop to ``-user``, group and
supplementary groups included.  Must not touch: sockets' contents, the
reactor (it is built after this, in the detached process).
"""

from __future__ import annotations

import os
import pwd

from .service import StartError


def drop_privileges(user: str) -> None:
    """Become ``user``: supplementary groups, then group, then user, in that
    order (after setuid there is no right left to change groups)."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise StartError(f'Error unknown user/Cannot setuid to user: "{user}"') from None
    if os.getuid() == entry.pw_uid:
        return
    try:
        os.initgroups(user, entry.pw_gid)
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
    except PermissionError as exc:
        raise StartError(f"cannot change to user {user}: {exc.strerror}") from None


def detach(settings, preserve):
    """Daemonise; returns the open DaemonContext (close it at exit)."""
    import daemon

    preserve = [p for p in preserve if p is not None]
    kwargs = dict(
        files_preserve=preserve,
        working_directory="/",
        umask=0o022,
        detach_process=True,
        prevent_core=False,
        signal_map={},  # the reactor installs its own handlers
    )
    if settings.user:
        try:
            entry = pwd.getpwnam(settings.user)
        except KeyError:
            raise StartError(f'Error unknown user/Cannot setuid to user: "{settings.user}"') from None
        kwargs.update(uid=entry.pw_uid, gid=entry.pw_gid, initgroups=True)
    context = daemon.DaemonContext(**kwargs)
    try:
        context.open()
    except Exception as exc:
        raise StartError(f"cannot enter daemon mode: {exc}") from None
    return context
