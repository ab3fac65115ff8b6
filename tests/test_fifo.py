"""The FIFO on disk, over real processes: the hasses migrant's writer in
another group, and what is refused at the path (symlinks, files, FIFOs that
others could take over)."""

import grp
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from support import NO_SYSTEM_CHANGE, Daemon, free_port, pyhasses_env

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="changing a FIFO's owner needs root")


def start(*args, timeout=10):
    """``pyhasses -nodaemon ARGS`` expected to fail at start."""
    return subprocess.run([sys.executable, "-m", "pyhasses", "-nodaemon", f"-p=127.0.0.1:{free_port()}", "-murl=/sse",
                           *args],
                          capture_output=True, text=True, env=pyhasses_env(), timeout=timeout)


def refused(r, *words):
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert "Error:" not in r.stdout  # said once, on stderr


@pytest.fixture
def shared_dir():
    """A directory other users may pass through (tmp_path's parents are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="pyhasses-fifo-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def publisher_group():
    """A group of its own for the test's publisher, removed afterwards."""
    if NO_SYSTEM_CHANGE:
        pytest.skip("PYHASSES_TEST_NO_SYSTEM is set: no group is added")
    if shutil.which("groupadd") is None:
        pytest.skip("groupadd is missing")
    name = f"pyhtest{os.getpid() % 100000}"
    subprocess.run(["groupadd", "--system", name], check=True, timeout=30)
    try:
        yield grp.getgrnam(name)
    finally:
        subprocess.run(["groupdel", name], timeout=30)


def write_as(user, groups, path, text):
    """A separate process, neither root nor the daemon's user, writes the FIFO."""
    return subprocess.run(["sh", "-c", f"printf '%s\\n' \"$1\" > {path}", "sh", text],
                          user=user.pw_uid, group=user.pw_gid, extra_groups=groups,
                          capture_output=True, text=True, timeout=10)


@needs_root
def test_migrant_writer_in_the_named_group_publishes(shared_dir, publisher_group):
    nobody = pwd.getpwnam("nobody")
    d = Daemon(shared_dir, "--fifo-group", publisher_group.gr_name, fifo=True)
    try:
        fifo = Path(d.fifo)
        st = fifo.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, publisher_group.gr_gid, 0o660)
        d.wait_log(rf"FIFO {fifo}: owner root, group {publisher_group.gr_name}, mode 0660; "
                   rf"can write: root, group {publisher_group.gr_name}")
        d.wait_log(r"hasses made it 0666\): .*--fifo-group GROUP.*--fifo-mode 0666")
        c = d.sse("room1")
        outsider = write_as(nobody, [], fifo, "room1=from outside the group")
        assert outsider.returncode != 0 and "Permission denied" in outsider.stderr
        member = write_as(nobody, [publisher_group.gr_gid], fifo, "room1=from the www-data stand-in")
        assert member.returncode == 0, member.stderr
        assert c.read_event()["data"] == "from the www-data stand-in"
    finally:
        d.stop()


@needs_root
def test_fifo_group_and_mode_from_the_config_file_apply_to_an_existing_fifo(shared_dir, publisher_group):
    fifo = shared_dir / "fifo"
    os.mkfifo(fifo, 0o600)
    conf = shared_dir / "pyhasses.conf"
    conf.write_text(f"--fifo-group {publisher_group.gr_name}\n--fifo-mode=0620\n")
    d = Daemon(shared_dir, f"-config={conf}", fifo=True)
    try:
        st = fifo.stat()
        assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (publisher_group.gr_gid, 0o620)
        c = d.sse("room1")
        member = write_as(pwd.getpwnam("nobody"), [publisher_group.gr_gid], fifo, "room1=into an old FIFO")
        assert member.returncode == 0, member.stderr
        assert c.read_event()["data"] == "into an old FIFO"
    finally:
        d.stop()


def test_dangling_symlink_is_one_line_and_exit_1(tmp_path):
    link = tmp_path / "fifo"
    link.symlink_to(tmp_path / "nowhere")
    refused(start(f"-fifo={link}"), "symbolic link", "does not exist")
    assert not (tmp_path / "nowhere").exists()


def test_symlink_to_a_real_fifo_is_refused(tmp_path):
    os.mkfifo(tmp_path / "real", 0o600)
    (tmp_path / "fifo").symlink_to(tmp_path / "real")
    refused(start(f"-fifo={tmp_path / 'fifo'}"), "symbolic link", "give the real path")


@needs_root
def test_symlink_to_a_file_gets_no_chown_or_chmod(tmp_path):
    target = tmp_path / "shadow"
    target.write_text("secret\n")
    target.chmod(0o600)
    (tmp_path / "fifo").symlink_to(target)
    refused(start(f"-fifo={tmp_path / 'fifo'}", "--fifo-group", "nogroup", "--fifo-mode", "0666"), "symbolic link")
    st = target.stat()
    assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0o600)


def test_regular_file_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "fifo"
    path.write_text("not a pipe\n")
    refused(start(f"-fifo={path}", "--fifo-mode", "0666"), "not a FIFO", "a regular file")
    assert path.read_text() == "not a pipe\n"
    assert stat.S_IMODE(path.stat().st_mode) != 0o666


def test_world_writable_fifo_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "fifo"
    os.mkfifo(path)
    path.chmod(0o666)
    refused(start(f"-fifo={path}"), "world-writable", f"chmod o-w {path}", "--fifo-mode 0666")


def test_world_writable_fifo_is_kept_when_asked_for(daemon_factory, tmp_path):
    path = tmp_path / "fifo"
    os.mkfifo(path)
    path.chmod(0o666)
    d = daemon_factory("--fifo-mode", "0666", fifo=True)
    d.wait_log(r"mode 0666; can write: every local user")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666


@needs_root
def test_fifo_of_another_user_is_refused(tmp_path):
    path = tmp_path / "fifo"
    os.mkfifo(path, 0o600)
    os.chown(path, pwd.getpwnam("nobody").pw_uid, 0)
    refused(start(f"-fifo={path}"), "belongs to nobody", "remove it")


def test_unknown_fifo_group_is_a_usage_error(tmp_path):
    r = start(f"-fifo={tmp_path / 'fifo'}", "--fifo-group", "no-such-group-here")
    assert r.returncode == 2 and "no such group" in r.stderr
    assert not (tmp_path / "fifo").exists()


def test_a_removed_fifo_is_made_again_and_publishers_reach_the_streams(daemon_factory):
    """Removed while running, the FIFO was read no more and never said so:
    a writer's next ``echo ... >`` made a plain file and its message was lost."""
    from support import wait_until

    d = daemon_factory(fifo=True)
    client = d.sse("room1")
    os.unlink(d.fifo)
    d.wait_log(r"FIFO .* was removed or replaced; made again and opened", timeout=6)
    wait_until(lambda: stat.S_ISFIFO(os.lstat(d.fifo).st_mode), 2, what="the FIFO at its path")
    d.publish_fifo("room1=after-removal\n")
    assert client.read_event()["data"] == "after-removal"


def test_a_fifo_replaced_by_a_file_is_said_once_and_the_daemon_serves_on(daemon_factory):
    d = daemon_factory(fifo=True)
    client = d.sse("room1")
    os.unlink(d.fifo)
    Path(d.fifo).write_text("not a fifo\n")
    d.wait_log(r"FIFO .* was removed or replaced and cannot be made again: .*not a FIFO", timeout=6)
    d.control("room1=still-served\n")
    assert client.read_event()["data"] == "still-served"
    os.unlink(d.fifo)  # taken away: the daemon makes its FIFO again
    d.wait_log(r"made again and opened", timeout=6)
    assert len(re.findall(r"cannot be made again", d.log())) == 1
    d.publish_fifo("room1=back\n")
    assert client.read_event()["data"] == "back"
