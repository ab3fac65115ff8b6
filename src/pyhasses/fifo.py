"""The control FIFO on disk: creating it, opening it safely, its owner and mode.

Owns: making the FIFO (mode and group as configured), opening it read-write
without following a symlink, the checks made on the open descriptor (a FIFO,
owned by root or the run user, not world-writable unless asked for), the
ownership and mode changes (always through the descriptor, never the path,
so a user who can write the FIFO's directory cannot get a root-owned chown
of another file), and the start-up lines saying who can write to it.
Also whether the FIFO open is still the one at its path (``is_still_at``).
Must not touch: what is read from it (control_channels.FifoReader frames that).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass
from typing import List, Optional

#: A FIFO the daemon creates, when --fifo-mode does not say otherwise.
DEFAULT_MODE = 0o660
#: What hasses made its FIFO: every local user could publish.
HASSES_MODE = 0o666


class FifoError(Exception):
    """The FIFO cannot be used; the text says why and, where it can, how to fix it."""


@dataclass(frozen=True)
class FifoPolicy:
    """Who should own the FIFO and how it may be reached."""

    mode: int = DEFAULT_MODE
    mode_given: bool = False           # --fifo-mode was on the command line or in the config file
    group: Optional[int] = None        # --fifo-group's gid
    run_uid: int = 0                   # the user the daemon serves as (-user, else its own)
    run_gid: int = 0


def policy_for(mode: Optional[int], group: Optional[int], user: Optional[str]) -> FifoPolicy:
    """The policy from the settings: ``mode`` None means the default."""
    if user:
        entry = pwd.getpwnam(user)
        run_uid, run_gid = entry.pw_uid, entry.pw_gid
    else:
        run_uid, run_gid = os.geteuid(), os.getegid()
    return FifoPolicy(mode=DEFAULT_MODE if mode is None else mode, mode_given=mode is not None,
                      group=group, run_uid=run_uid, run_gid=run_gid)


def open_fifo(path: str, policy: FifoPolicy) -> int:
    """Create the FIFO if missing and open it read-write (writers closing
    never end it), non-blocking.  Raises FifoError with a one-line reason."""
    created = _create(path, policy.mode)
    if not created:
        _refuse_what_is_not_a_fifo(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        raise FifoError(_open_failure(path, exc)) from None
    try:
        _check_and_set(fd, path, policy, created)
    except BaseException:
        os.close(fd)
        raise
    return fd


def is_still_at(fd: int, path: str) -> bool:
    """Is the FIFO open on ``fd`` still the one at ``path``?  Not when the
    path was removed (a writer's next ``>`` would make a plain file there)
    or now names something else."""
    try:
        at_path = os.lstat(path)
    except OSError:
        return False
    opened = os.fstat(fd)
    return (at_path.st_dev, at_path.st_ino) == (opened.st_dev, opened.st_ino)


def _create(path: str, mode: int) -> bool:
    """True when the FIFO was made now.  Whatever else is at the path
    (a symlink, dangling or not, a file) is left for the open to refuse."""
    # The FIFO appears with the mode asked, never first with the umask's
    # (a publisher may look at it the moment it exists).
    old_umask = os.umask(0)
    try:
        os.mkfifo(path, mode)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        raise FifoError(f"cannot create FIFO {path}: {exc.strerror}") from None
    finally:
        os.umask(old_umask)


def _refuse_what_is_not_a_fifo(path: str) -> None:
    """Before opening: a device or a file at the path is never opened at
    all (opening a device may do something); the descriptor is checked
    again after the open, for what is swapped in meanwhile."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise FifoError(f"cannot open FIFO {path}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise FifoError(_open_failure(path, None))
    if not stat.S_ISFIFO(st.st_mode):
        raise FifoError(_not_a_fifo(path, st.st_mode))


def _not_a_fifo(path: str, mode: int) -> str:
    return f"-fifo={path} exists and is not a FIFO ({_kind(mode)}); remove it or choose another path"


def _open_failure(path: str, exc: Optional[OSError]) -> str:
    if os.path.islink(path):
        target = os.readlink(path)
        dangling = "" if os.path.exists(path) else ", which does not exist"
        return (f"-fifo={path} is a symbolic link (to {target}{dangling}); the FIFO is not opened through"
                f" a link: give the real path, or remove the link and let pyhasses create the FIFO")
    return f"cannot open FIFO {path}: {exc.strerror}"


def _check_and_set(fd: int, path: str, policy: FifoPolicy, created: bool) -> None:
    """What is open is what we meant: checked on the descriptor, so nothing
    swapped in at the path since can change the answer."""
    st = os.fstat(fd)
    if not stat.S_ISFIFO(st.st_mode):
        raise FifoError(_not_a_fifo(path, st.st_mode))
    if created:
        # Made by us: it belongs to the user the daemon serves as.
        gid = policy.group if policy.group is not None else policy.run_gid
        _fchown(fd, path, policy.run_uid, gid)
        _fchmod(fd, path, policy.mode)
        return
    if st.st_uid not in (0, policy.run_uid):
        raise FifoError(f"FIFO {path} belongs to {_user_name(st.st_uid)}, not to root or the user pyhasses runs"
                        f" as; anyone who owns it can change who may publish: remove it and let pyhasses"
                        f" create it, or chown root {path}")
    if policy.group is not None and st.st_gid != policy.group:
        _fchown(fd, path, -1, policy.group)
    if policy.mode_given and stat.S_IMODE(st.st_mode) != policy.mode:
        _fchmod(fd, path, policy.mode)
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    if mode & stat.S_IWOTH and not (policy.mode_given and policy.mode & stat.S_IWOTH):
        raise FifoError(f"FIFO {path} is world-writable (mode {mode:04o}): any local user could publish;"
                        f" run chmod o-w {path} and add the publishers to its group (--fifo-group GROUP),"
                        f" or give --fifo-mode {mode:04o} to accept that")


def _fchown(fd: int, path: str, uid: int, gid: int) -> None:
    try:
        os.fchown(fd, uid, gid)
    except OSError as exc:
        raise FifoError(f"cannot give FIFO {path} to {_user_name(uid)}:{_group_name(gid)}: {exc.strerror}") from None


def _fchmod(fd: int, path: str, mode: int) -> None:
    try:
        os.fchmod(fd, mode)
    except OSError as exc:
        raise FifoError(f"cannot set the mode of FIFO {path} to {mode:04o}: {exc.strerror}") from None


def describe(fd: int, path: str) -> List[str]:
    """The start-up log lines: the FIFO's owner, group and mode, who can
    write to it, and, when the mode shuts out users that hasses' 0666 let
    in, the option that lets them back."""
    st = os.fstat(fd)
    mode = stat.S_IMODE(st.st_mode)
    owner, group = _user_name(st.st_uid), _group_name(st.st_gid)
    writers = ["root"]
    if mode & stat.S_IWUSR and st.st_uid != 0:
        writers.append(f"user {owner}")
    if mode & stat.S_IWGRP:
        writers.append(f"group {group}")
    if mode & stat.S_IWOTH:
        writers = ["every local user"]
    lines = [f"FIFO {path}: owner {owner}, group {group}, mode {mode:04o}; can write: {', '.join(writers)}"]
    if not mode & stat.S_IWOTH:
        lines.append(f"FIFO {path}: other users cannot write to it (hasses made it 0666): add them to group"
                     f" {group}, or name their group with --fifo-group GROUP, or --fifo-mode 0666 for everyone")
    return lines


def parse_group(text: str) -> int:
    """A group name or number, as --fifo-group takes it."""
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        pass
    if text.isdigit():
        return int(text)
    raise KeyError(text)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a FIFO"


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
