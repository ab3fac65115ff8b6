"""Daemon mode as an operator starts it: the real command, detaching, the pid
file, the log file, signals, and the drop to -user."""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from support import control_exchange, free_port, pyhasses_env, wait_until

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d pyhasses: ")


def process_gone(pid: int) -> bool:
    """Dead or a zombie nobody reaped (the daemon's parent is init)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return "State:\tZ" in status


class DaemonRun:
    """``pyhasses`` without -nodaemon, in a directory of its own.  The command
    returns once the daemon serves; the daemon is found by its pid file."""

    def __init__(self, workdir: Path, *extra, pidfile=True):
        self.dir = Path(workdir)
        self.port = free_port()
        self.cport = free_port()
        self.logfile = self.dir / "pyhasses.log"
        self.pidfile = self.dir / "pyhasses.pid"
        self.args = [f"-p=127.0.0.1:{self.port}", f"-cp={self.cport}", "-murl=/sse", f"-l={self.logfile}"]
        if pidfile:
            self.args.append(f"-pidfile={self.pidfile}")
        self.args += list(extra)
        self.pid = None

    def start(self, timeout=20.0) -> subprocess.CompletedProcess:
        """Runs the command to its end; stdout/stderr reach EOF only when no
        process still holds them, so a daemon keeping the terminal hangs here."""
        done = subprocess.run([sys.executable, "-m", "pyhasses", *self.args], capture_output=True, text=True,
                              env=pyhasses_env(), cwd=str(self.dir), timeout=timeout)
        if done.returncode == 0 and self.pidfile.exists():
            self.pid = int(self.pidfile.read_text())
        return done

    def log(self) -> str:
        return self.logfile.read_text() if self.logfile.exists() else ""

    def wait_log(self, pattern, timeout=5.0):
        return wait_until(lambda: re.search(pattern, self.log()), timeout, what=f"log line {pattern!r}")

    def control(self, text: str) -> bytes:
        return control_exchange(self.cport, text)

    def stop(self, timeout=10.0) -> None:
        if self.pid is None or process_gone(self.pid):
            return
        os.kill(self.pid, signal.SIGTERM)
        wait_until(lambda: process_gone(self.pid), timeout, what=f"daemon {self.pid} to end on SIGTERM")


@pytest.fixture
def daemon_run(tmp_path):
    runs = []

    def make(*extra, workdir=None, **kw):
        run = DaemonRun(workdir or tmp_path, *extra, **kw)
        runs.append(run)
        return run

    yield make
    for run in runs:
        if run.pid is not None and not process_gone(run.pid):
            os.kill(run.pid, signal.SIGKILL)


def sse_get(port: int, subscribe: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(f"GET /sse?subscribe={subscribe} HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n".encode())
    return sock


def recv_until(sock: socket.socket, needle: bytes, timeout=5.0) -> bytes:
    deadline = time.monotonic() + timeout
    data = b""
    while needle not in data:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    assert needle in data, data
    return data


def test_daemon_detaches_lets_go_of_the_terminal_and_serves(daemon_run):
    run = daemon_run()
    done = run.start()
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""
    pid = run.pid
    assert pid and pid != os.getpid()
    assert not process_gone(pid)
    # A new session, no controlling terminal, standard streams on /dev/null.
    assert os.getsid(pid) != os.getsid(0)
    assert Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[4] == "0"  # tty_nr
    for fd in (0, 1, 2):
        assert os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/null"
    assert Path(f"/proc/{pid}/cwd").resolve() == Path("/")

    client = sse_get(run.port, "room1")
    recv_until(client, b"\r\n\r\n")
    run.control("room1=from the test\n")
    assert b"data: from the test\n" in recv_until(client, b"from the test")
    client.close()

    text = run.wait_log(r"Connect from 127\.0\.0\.1")
    assert f"Pid: {pid}" in run.log()
    lines = text.string.splitlines()
    assert len(lines) >= 3
    assert all(LOG_LINE.match(line) for line in lines), lines


def test_sigterm_ends_the_daemon_and_removes_the_pid_file(daemon_run):
    run = daemon_run()
    assert run.start().returncode == 0
    os.kill(run.pid, signal.SIGTERM)
    wait_until(lambda: process_gone(run.pid), 10, what="the daemon to end")
    assert not run.pidfile.exists()
    assert "Received INT/TERM signal, Exiting..." in run.log()


def test_sighup_after_logrotate_renamed_the_log_makes_a_new_one(daemon_run):
    run = daemon_run()
    assert run.start().returncode == 0
    rotated = run.logfile.with_name("pyhasses.log.1")
    run.logfile.rename(rotated)
    os.kill(run.pid, signal.SIGHUP)
    wait_until(run.logfile.exists, 5, what="a new log file")
    run.control("status\n")
    run.wait_log(r"pyhasses: ------- status of pyhasses -------")
    assert "status of pyhasses" not in rotated.read_text()
    assert "=== daemon starting ===" in rotated.read_text()
    assert all(LOG_LINE.match(line) for line in run.log().splitlines())
    run.stop()


def test_loglevel_commands_change_what_the_daemon_logs(daemon_run):
    run = daemon_run()
    assert run.start().returncode == 0
    run.control("loglevel_quiet\n")
    run.wait_log(r"Set loglevel to 0")
    sse_get(run.port, "quiet").close()
    run.control("loglevel_debug\n")
    run.wait_log(r"Set loglevel to 2")
    assert "Connect from" not in run.log()
    sse_get(run.port, "loud").close()
    run.wait_log(r"Connect from 127\.0\.0\.1")
    run.control("numberofclients\n")
    run.wait_log(r"Communication connect from")  # a debug line
    run.stop()


def test_pid_file_naming_a_live_process_refuses_to_start(daemon_run):
    run = daemon_run()
    run.pidfile.write_text(f"{os.getpid()}\n")  # this test process is alive
    done = run.start()
    assert done.returncode == 1
    assert f"names a running process ({os.getpid()})" in done.stderr
    assert run.pidfile.read_text() == f"{os.getpid()}\n"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", run.port), timeout=1).close()


def test_stale_pid_file_is_replaced(daemon_run):
    gone = subprocess.Popen(["true"])
    gone.wait(5)
    run = daemon_run()
    run.pidfile.write_text(f"{gone.pid}\n")
    done = run.start()
    assert done.returncode == 0, done.stderr
    assert run.pid != gone.pid and not process_gone(run.pid)
    run.stop()


def test_a_pid_file_naming_another_users_process_counts_as_running(user_dir):
    # kill(pid, 0) on another user's process fails with EPERM: it is alive.
    # Asked by an unprivileged user in a forked child (root may signal anyone).
    from pyhasses import service

    _, entry = user_dir
    child = os.fork()
    if child == 0:
        code = 3
        try:
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            code = 0 if service._alive(1) else 1
        except BaseException:
            code = 2
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0  # 2: it raised, 1: it said gone


@pytest.mark.parametrize("where", ["missing directory", "a directory"])
def test_unwritable_log_file_is_reported_on_stderr_before_detaching(daemon_run, tmp_path, where):
    path = tmp_path / "no-such-dir" / "x.log" if where == "missing directory" else tmp_path
    run = daemon_run()
    run.args = [a for a in run.args if not a.startswith("-l=")] + [f"-l={path}"]
    done = run.start()
    assert done.returncode == 1
    assert done.stderr.startswith(f"pyhasses: cannot open log file {path}: ")
    assert not run.pidfile.exists()


def test_a_failure_after_detaching_still_reaches_stderr(daemon_run, tmp_path):
    (tmp_path / "plain-file").write_text("")
    run = daemon_run(f"-pidfile={tmp_path / 'plain-file' / 'pid'}", pidfile=False)
    done = run.start()
    assert done.returncode == 1
    assert "cannot write pid file" in done.stderr
    assert "Error: cannot write pid file" in run.log()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", run.port), timeout=1).close()


def test_unknown_user_exits_1_with_hasses_message(daemon_run):
    run = daemon_run("-user=no-such-user-pyhasses")
    done = run.start()
    assert done.returncode == 1
    assert 'unknown user/Cannot setuid to user: "no-such-user-pyhasses"' in done.stderr
    assert not run.logfile.exists() or "serving" not in run.log()


def unprivileged_user():
    """``nobody``, else ``pyhasses`` (the package's system user), if present."""
    for name in ("nobody", "pyhasses"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        if entry.pw_uid != 0:
            return entry
    return None


def free_privileged_port() -> int:
    for port in range(1023, 900, -1):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    pytest.skip("no free port below 1024 on 127.0.0.1")


@pytest.fixture
def user_dir():
    """A directory the unprivileged user may write (tmp_path's parents are 0700)."""
    if os.geteuid() != 0:
        pytest.skip(f"dropping to -user needs root; running as uid {os.geteuid()}")
    entry = unprivileged_user()
    if entry is None:
        pytest.skip("no unprivileged user (nobody or pyhasses) on this system")
    path = Path(tempfile.mkdtemp(prefix="pyhasses-user-"))
    os.chown(path, entry.pw_uid, entry.pw_gid)
    yield path, entry
    shutil.rmtree(path, ignore_errors=True)


def test_user_drop_after_binding_a_privileged_port(daemon_run, user_dir):
    workdir, entry = user_dir
    run = daemon_run(f"-user={entry.pw_name}", f"-fifo={workdir / 'fifo'}", workdir=workdir)
    run.port = free_privileged_port()
    run.args[0] = f"-p=127.0.0.1:{run.port}"
    done = run.start()
    assert done.returncode == 0, done.stderr + run.log()
    status = Path(f"/proc/{run.pid}/status").read_text()
    uids = re.search(r"^Uid:\s+(.*)$", status, re.M).group(1).split()
    gids = re.search(r"^Gid:\s+(.*)$", status, re.M).group(1).split()
    groups = set(map(int, re.search(r"^Groups:\s*(.*)$", status, re.M).group(1).split()))
    assert set(map(int, uids)) == {entry.pw_uid}
    assert set(map(int, gids)) == {entry.pw_gid}
    assert groups == set(os.getgrouplist(entry.pw_name, entry.pw_gid))
    assert 0 not in groups and grp.getgrgid(0).gr_name not in {g.gr_name for g in grp.getgrall()
                                                               if g.gr_gid in groups}
    assert run.pidfile.stat().st_uid == entry.pw_uid
    fifo = workdir / "fifo"
    assert (fifo.stat().st_uid, fifo.stat().st_gid) == (entry.pw_uid, entry.pw_gid)

    client = sse_get(run.port, "room1")
    recv_until(client, b"\r\n\r\n")
    run.control("room1=as nobody\n")
    recv_until(client, b"data: as nobody\n")
    # A publisher running as the same user (PHP as www-data) writes the FIFO.
    subprocess.run(["sh", "-c", f"echo room1=through the fifo > {fifo}"], user=entry.pw_uid,
                   group=entry.pw_gid, extra_groups=[], check=True, timeout=10)
    recv_until(client, b"data: through the fifo\n")
    client.close()

    # The log was opened as root; after rotation the new one is the user's.
    run.logfile.rename(workdir / "pyhasses.log.1")
    os.kill(run.pid, signal.SIGHUP)
    wait_until(run.logfile.exists, 5, what="a new log file")
    assert run.logfile.stat().st_uid == entry.pw_uid
    run.stop()
    assert not run.pidfile.exists()


def test_user_drop_in_the_foreground(tmp_path, user_dir):
    workdir, entry = user_dir
    port, cport = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pyhasses", "-nodaemon", f"-p=127.0.0.1:{port}",
                             f"-cp={cport}", "-murl=/sse", f"-user={entry.pw_name}",
                             f"-pidfile={workdir / 'fg.pid'}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=pyhasses_env(), cwd=str(workdir))
    try:
        wait_until(lambda: (workdir / "fg.pid").exists(), 10, what="the pid file")
        assert int((workdir / "fg.pid").read_text()) == proc.pid
        status = Path(f"/proc/{proc.pid}/status").read_text()
        assert re.search(r"^Uid:\s+(\d+)", status, re.M).group(1) == str(entry.pw_uid)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0, out
    assert not (workdir / "fg.pid").exists()


def test_log_the_user_cannot_reopen_keeps_the_daemon_serving(daemon_run, user_dir, tmp_path):
    """-user=www-data with the log in root's /var/log is hasses' common set-up:
    after logrotate the dropped user cannot create the new file.  The lines go
    on to the old file, which says why, and nothing else changes."""
    workdir, entry = user_dir
    logdir = Path(tempfile.mkdtemp(prefix="pyhasses-rootlog-"))
    try:
        os.chmod(logdir, 0o755)  # root's, like /var/log
        run = daemon_run(f"-user={entry.pw_name}", workdir=workdir)
        run.args = [a for a in run.args if not a.startswith("-l=")] + [f"-l={logdir / 'pyhasses.log'}"]
        run.logfile = logdir / "pyhasses.log"
        done = run.start()
        assert done.returncode == 0, done.stderr
        rotated = logdir / "pyhasses.log.1"
        run.logfile.rename(rotated)
        os.kill(run.pid, signal.SIGHUP)
        # Only then a client: a line logged before the signal is read would
        # note the failure itself, and the SIGHUP would rightly say it again.
        wait_until(lambda: "not reopened" in rotated.read_text(), 5, what="the SIGHUP's line")
        client = sse_get(run.port, "room1")
        recv_until(client, b"\r\n\r\n")
        run.control("room1=still here\n")
        recv_until(client, b"data: still here\n")
        client.close()
        wait_until(lambda: "Connect from" in rotated.read_text(), 5, what="lines in the old file")
        text = rotated.read_text()
        # The SIGHUP says it failed, once, and never that it worked.
        assert "SIGHUP: log file not reopened: cannot reopen log file" in text
        assert text.count("cannot reopen log file") == 1, text
        assert "SIGHUP: log file reopened" not in text
        assert not process_gone(run.pid)
        run.stop()
    finally:
        shutil.rmtree(logdir, ignore_errors=True)


def test_tls_in_daemon_mode_and_one_sighup_for_log_and_certificate(daemon_run, tmp_path):
    """The TLS context is built before detaching; one SIGHUP reopens the log
    and reloads the pair, and the open stream lives on."""
    from tls_support import TlsSseClient, ssl_args, write_pair

    cert, key = write_pair(tmp_path / "tls", common_name="localhost")
    run = daemon_run(*ssl_args(cert, key))
    done = run.start()
    assert done.returncode == 0, done.stderr + run.log()
    client = TlsSseClient("127.0.0.1", run.port, cert)
    client.request("GET /sse?subscribe=room1 HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n")
    client.read_handshake()

    new_cert, _ = write_pair(tmp_path / "tls")  # a new pair at the same paths
    run.logfile.rename(run.logfile.with_name("pyhasses.log.1"))
    os.kill(run.pid, signal.SIGHUP)
    run.wait_log(r"SIGHUP: certificate reloaded")
    assert all(LOG_LINE.match(line) for line in run.log().splitlines())

    run.control("room1=after the reload\n")
    assert client.read_event()["data"] == "after the reload"
    fresh = TlsSseClient("127.0.0.1", run.port, new_cert)  # verifies against the new certificate only
    fresh.request("GET /sse?subscribe=room1 HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n")
    fresh.read_handshake()
    client.close()
    fresh.close()
    run.stop()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_while_the_command_waits_is_obeyed_at_once(tmp_path, signum):
    """The daemon is slow to serve (held 5 s before its loop starts); the
    operator's Ctrl-C (or SIGTERM) ends the waiting command at once, and the
    daemon it started is told to stop, and does once it can."""
    run = DaemonRun(tmp_path)
    code = (
        "import sys, time, pyhasses.service as s\n"
        "serve = s.Daemon.serve\n"
        "def slow(self, *a, **k):\n"
        "    time.sleep(5)\n"
        "    return serve(self, *a, **k)\n"
        "s.Daemon.serve = slow\n"
        "from pyhasses.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    command = subprocess.Popen([sys.executable, "-c", code, *run.args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=pyhasses_env(), cwd=str(tmp_path))
    try:
        wait_until(lambda: run.pidfile.exists() and run.pidfile.read_text().strip(), timeout=10,
                   what="the daemon's pid file")
        daemon_pid = int(run.pidfile.read_text())
        assert command.poll() is None  # still waiting for the report
        sent = time.monotonic()
        command.send_signal(signum)
        _, err = command.communicate(timeout=10)
        assert time.monotonic() - sent < 2.5, "the command kept waiting"
        assert command.returncode == 1
        assert f"start interrupted by {signal.Signals(signum).name}" in err
        assert f"told the daemon (pid {daemon_pid}) to stop" in err
        wait_until(lambda: process_gone(daemon_pid), timeout=15, what="the daemon to stop")
        assert not run.pidfile.exists()
        assert "Received INT/TERM signal" in run.log()
    finally:
        if command.poll() is None:
            command.kill()
            command.wait(5)
        if run.pidfile.exists():
            pid = int(run.pidfile.read_text() or 0)
            if pid and not process_gone(pid):
                os.kill(pid, signal.SIGKILL)
