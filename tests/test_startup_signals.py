"""A stop asked for while the daemon is still starting (systemd, a script
that starts and stops at once) is a clean stop: exit 0, no traceback."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pytest

from support import free_port, pyhasses_env


def start_and_signal_at_once(signum) -> subprocess.CompletedProcess:
    """Signal the daemon the moment its control port accepts a connection:
    the earliest an outside observer can know it is there."""
    port, cport = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pyhasses", "-nodaemon", f"-p={port}", f"-cp={cport}", "-murl=/sse"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=pyhasses_env())
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", cport), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"daemon did not start: {proc.communicate(timeout=5)[0]!r}")
            time.sleep(0.001)
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=10)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out.decode(errors="replace"))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_stop_during_start_up_is_clean(signum):
    for _ in range(6):  # the window is short: look several times
        r = start_and_signal_at_once(signum)
        assert r.returncode == 0, r.stdout
        assert "Traceback" not in r.stdout
        assert "Exiting" in r.stdout
