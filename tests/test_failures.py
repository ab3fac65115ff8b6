"""Failures leave a trace, and a vanished peer is only a vanished peer: the
real connection code over real socket pairs, with errors injected at the one
place that calls recv, send and accept (a socket subclass)."""

import errno
import os
import socket
import subprocess
import sys

import pytest

from inprocess import world  # noqa: F401 (a fixture)
from pyhasses import delivery, errors
from pyhasses.listeners import Listener
from pyhasses.reactor import READABLE
from support import free_port, pyhasses_env, wait_until

PEER_GONE = [errno.ECONNRESET, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.EHOSTDOWN,
             errno.ETIMEDOUT]
ACCEPT_AGAIN = [errno.ENETDOWN, errno.EPROTO, errno.ENOPROTOOPT, errno.EHOSTDOWN, errno.ENONET,
                errno.EHOSTUNREACH, errno.EOPNOTSUPP, errno.ENETUNREACH]


@pytest.mark.parametrize("code", PEER_GONE, ids=[errno.errorcode[c] for c in PEER_GONE])
def test_a_vanished_peer_on_recv_is_a_quiet_close(world, code):
    w = world()
    client, browser = w.stream()
    client.sock.fail_recv = code
    browser.sendall(b"x")
    w.until(lambda: client.closed, "close")
    assert f"Closed connection <{client.fd}> peer0: connection " in w.text()
    assert "internal error" not in w.text() and "Traceback" not in w.text()
    assert client not in w.daemon.hub.clients


@pytest.mark.parametrize("code", PEER_GONE, ids=[errno.errorcode[c] for c in PEER_GONE])
def test_a_vanished_peer_on_send_is_a_quiet_close(world, code):
    w = world()
    client, browser = w.stream()
    client.sock.fail_send = code
    client.deliver(b"5\r\nhello\r\n")
    w.until(lambda: client.closed, "close")
    assert f"connection lost while sending ({errno.errorcode[code]})" in w.text()
    assert "internal error" not in w.text() and "Traceback" not in w.text()


class FaultyListener(socket.socket):
    """A listening socket whose first accept() fails with ``fault``."""

    fault = None

    def _accept(self):
        fault, self.fault = self.fault, None
        if fault is not None:
            raise OSError(fault, os.strerror(fault))
        return super()._accept()


@pytest.mark.parametrize("code", ACCEPT_AGAIN, ids=[errno.errorcode[c] for c in ACCEPT_AGAIN])
def test_accept_goes_on_after_a_pending_network_error(world, code):
    w = world()
    sock = FaultyListener(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    made = []
    listener = Listener(w.daemon.wiring, sock, lambda conn, peer: made.append(conn), "test port")
    with socket.create_connection(sock.getsockname(), timeout=5):
        sock.fault = code
        wait_until(lambda: listener.on_events(READABLE) or made, timeout=5, what="the connection behind the error")
    assert len(made) == 1 and sock.fault is None
    assert w.text() == ""
    for conn in made:
        conn.close()
    sock.close()


def test_an_unknown_accept_error_is_still_an_error(world):
    w = world()
    sock = FaultyListener(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.fault = errno.EINVAL
    listener = Listener(w.daemon.wiring, sock, lambda conn, peer: None, "test port")
    with pytest.raises(OSError):
        listener.on_events(READABLE)
    sock.close()


def test_one_failing_stream_does_not_stop_the_heartbeat_sweep(world):
    w = world()
    broken, _ = w.stream()
    healthy, browser = w.stream()
    broken.sock.fail_send = RuntimeError("a bug met while sending")
    delivery.Heartbeat(w.reactor, w.daemon.hub, 60)._sweep()
    assert browser.recv(100) == delivery.HEARTBEAT
    assert broken.closed and not healthy.closed
    text = w.text()
    assert "internal error RuntimeError('a bug met while sending'); closing it" in text
    assert "Traceback (most recent call last):" in text and "a bug met while sending" in text


def test_one_bug_hit_by_every_stream_writes_few_tracebacks(world):
    w = world()
    clients = [w.stream() for _ in range(12)]
    for client, _ in clients:
        client.sock.fail_send = RuntimeError("same bug")
    delivery.Heartbeat(w.reactor, w.daemon.hub, 60)._sweep()
    text = w.text()
    assert all(client.closed for client, _ in clients)
    assert text.count("internal error RuntimeError('same bug'); closing it") == errors.TRACEBACKS_PER_WINDOW
    assert text.count("Traceback (most recent call last):") == errors.TRACEBACKS_PER_WINDOW


def test_error_report_counts_what_it_left_out_once_the_window_ends():
    lines, now = [], [0.0]
    report = errors.ErrorReport(lines.append, clock=lambda: now[0])

    def fail(tag):
        try:
            raise ValueError(tag)
        except ValueError as exc:
            report(f"failed {tag}", exc)

    for i in range(10):
        fail(i)
    assert [line for line in lines if line.startswith("failed")] == ["failed 0", "failed 1", "failed 2"]
    now[0] = errors.WINDOW + 1
    fail("later")
    assert any("happened 7 more time(s)" in line for line in lines)
    assert lines[-1].strip() == "ValueError: later"


def test_an_exception_escaping_the_loop_is_logged_and_the_daemon_exits_1(tmp_path):
    """In daemon mode, where stderr goes nowhere: the log says why, with the
    traceback, and the process ends with status 1 (its pid file removed)."""
    logfile, pidfile = tmp_path / "log", tmp_path / "pid"
    code = (
        "import sys, pyhasses.reactor as r\n"
        "def boom(self):\n"
        "    raise RuntimeError('the loop itself broke')\n"
        "r.Reactor.run_once = boom\n"
        "from pyhasses.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, f"-p=127.0.0.1:{free_port()}", "-murl=/sse",
                           f"-cp={free_port()}", f"-l={logfile}", f"-pidfile={pidfile}"],
                          capture_output=True, text=True, env=pyhasses_env(), cwd=str(tmp_path), timeout=30)
    assert done.returncode == 0, done.stderr  # it served, then broke
    wait_until(lambda: logfile.exists() and "RuntimeError: the loop itself broke" in logfile.read_text(), timeout=10,
               what="the traceback's last line")
    text = logfile.read_text()
    assert "the event loop stopped on an internal error RuntimeError('the loop itself broke')" in text
    assert "Traceback (most recent call last):" in text
    wait_until(lambda: not pidfile.exists(), timeout=10, what="the pid file removed")


def test_an_exception_escaping_the_loop_exits_1_in_the_foreground(tmp_path):
    code = (
        "import sys, pyhasses.reactor as r\n"
        "def boom(self):\n"
        "    raise RuntimeError('the loop itself broke')\n"
        "r.Reactor.run_once = boom\n"
        "from pyhasses.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, "-nodaemon", f"-p=127.0.0.1:{free_port()}", "-murl=/sse",
                           f"-cp={free_port()}"],
                          capture_output=True, text=True, env=pyhasses_env(), cwd=str(tmp_path), timeout=30)
    assert done.returncode == 1
    assert "the event loop stopped on an internal error" in done.stdout
    assert "RuntimeError: the loop itself broke" in done.stdout
