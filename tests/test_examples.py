"""The snippets in examples/ work as README.rst says, against the real daemon:
the curl line shows a stream, and the PHP and Python publishers deliver."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import time

import pytest

from support import ROOT, free_port

EXAMPLES = ROOT / "examples"
PHP = shutil.which("php")
needs_php = pytest.mark.skipif(PHP is None, reason="php-cli is not installed (run scripts/deps.d/clients.sh)")


def run_example(cmd, env_extra, timeout=20):
    """Run an example as a user would: its own process, no pyhasses on the path."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(env_extra)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=str(EXAMPLES))


TEXT = "from an example; with x=1\nand a second line, ünïcode"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_line_shows_the_stream(daemon):
    url = f"http://127.0.0.1:{daemon.port}{daemon.murl}?subscribe=room1"
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}  # the stream is local
    curl = subprocess.Popen([str(EXAMPLES / "stream-with-curl.sh")], env={**env, "PYHASSES_STREAM": url},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        daemon.wait_clients(1)
        daemon.control("room1=seen by curl\n")
        out = b""
        deadline = time.monotonic() + 10
        while b"data: seen by curl\n" not in out and time.monotonic() < deadline:
            if select.select([curl.stdout], [], [], 0.2)[0]:
                out += os.read(curl.stdout.fileno(), 65536)
        lines = out.decode().splitlines()
        assert "data: seen by curl" in lines, out
        assert any(line.startswith("id: ") for line in lines)
    finally:
        curl.kill()
        curl.wait(5)
        curl.stdout.close()
        curl.stderr.close()


def test_python_example_publishes(daemon):
    client = daemon.sse("room1")
    r = run_example([sys.executable, "publish.py", "room1", TEXT], {"PYHASSES_PORT": str(daemon.cport)})
    assert r.returncode == 0, r.stderr
    assert r.stdout == "delivered to 1 client(s)\n"
    assert client.read_event()["data"] == TEXT


def test_python_example_fails_clearly_without_daemon():
    port = free_port()
    r = run_example([sys.executable, "publish.py", "room1", "x"], {"PYHASSES_PORT": str(port)})
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr == f"publish.py: cannot reach pyhasses on 127.0.0.1:{port}: Connection refused\n"


@needs_php
def test_php_example_publishes_over_tcp(daemon):
    client = daemon.sse("room1")
    r = run_example([PHP, "publish.php", "room1", TEXT], {"PYHASSES_PORT": str(daemon.cport)})
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout == "delivered to 1 client(s)\n"
    assert client.read_event()["data"] == TEXT


@needs_php
def test_php_example_publishes_through_the_fifo(daemon):
    client = daemon.sse("room1")
    r = run_example([PHP, "publish.php", "room1", TEXT], {"PYHASSES_FIFO": daemon.fifo})
    assert r.returncode == 0, r.stdout + r.stderr
    assert client.read_event()["data"] == TEXT


@needs_php
def test_php_example_reports_refusal_and_absence(daemon):
    r = run_example([PHP, "publish.php", "t" * 300, "x"], {"PYHASSES_PORT": str(daemon.cport)})
    assert r.returncode != 0 and "pyhasses refused the message" in r.stdout + r.stderr
    r = run_example([PHP, "publish.php", "room1", "x"], {"PYHASSES_PORT": str(free_port())})
    assert r.returncode == 1 and r.stdout == ""
    assert "cannot connect" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_line_says_why_when_nothing_listens():
    port = free_port()
    r = run_example([str(EXAMPLES / "stream-with-curl.sh")],
                    {"PYHASSES_STREAM": f"http://127.0.0.1:{port}/sse?subscribe=room1"})
    assert r.returncode != 0 and "Failed to connect" in r.stderr, r.stderr

