"""The image's entry point (pyhasses.container) without a container: the
command line it composes from the PYHASSES_* variables, its refusal to open
the control port beyond loopback without a secret, and its health check,
the last two against real processes on loopback.  tests/test_container.py
runs the same entry point inside the image."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys

import pytest

from pyhasses import container
from support import ROOT, SseClient, free_port, pyhasses_env, wait_until

DAEMON_TEXT = "\n".join(p.read_text() for p in sorted((ROOT / "src" / "pyhasses").glob("*.py"))
                        if p.name != "container.py")


def test_the_defaults_make_a_foreground_daemon_with_a_loopback_control_port():
    assert container.command_line({}, [], None, None) == [
        "pyhasses", "-nodaemon", "-p=8080", "-murl=/sse", "-cp=8085", "--metrics-port=9108", "--drain=5"]


def test_with_a_secret_the_control_port_listens_on_every_address_and_needs_it():
    argv = container.command_line({}, [], "/run/secrets/s", None)
    assert argv[4:7] == ["-cp=*:8085", "--control-secret-file", "/run/secrets/s"]
    addressed = container.command_line({"PYHASSES_CONTROL_PORT": "10.0.0.5:9000"}, [], "/s", None)
    assert "-cp=10.0.0.5:9000" in addressed


def test_variables_then_pyhasses_opts_then_the_arguments_of_podman_run():
    environ = {"PYHASSES_SSE_PORT": "127.0.0.1:80", "PYHASSES_URL": "/events", "PYHASSES_CONTROL_PORT": "",
               "PYHASSES_METRICS_PORT": "", "PYHASSES_DRAIN": "0", "PYHASSES_FIFO": "/run/pyhasses/fifo",
               "PYHASSES_OPTS": "--cors-base 'https://a.example' -ra"}
    argv = container.command_line(environ, ["--drain", "3"], None, "/keys/publisher")
    assert argv == ["pyhasses", "-nodaemon", "-p=127.0.0.1:80", "-murl=/events",
                    "--publisher-key", "/keys/publisher", "--drain=0", "-fifo=/run/pyhasses/fifo",
                    "--cors-base", "https://a.example", "-ra", "--drain", "3"]


@pytest.mark.parametrize("args", [
    ["-cp=*:8085"],
    ["--control-port", "0.0.0.0:8085"],
    ["-cp=8085", "--control-bind=10.1.2.3"],
    ["-cp=[::]:8085"],
])
def test_a_control_port_beyond_loopback_without_a_secret_is_refused(args):
    reason = container.exposure_refusal(["pyhasses", "-p=8080", "-murl=/sse", *args])
    assert reason and "refusing to open the control port" in reason
    assert "--control-secret-file" in reason and "--publisher-key" in reason


@pytest.mark.parametrize("args", [
    ["-cp=8085"],
    ["-cp=127.0.0.2:8085"],
    ["-cp=[::1]:8085"],
    ["-cp=localhost:8085"],
    ["-fifo=/run/pyhasses/fifo"],
    ["-cp=*:8085", "--control-secret-file", "/run/secrets/s"],  # the daemon checks the file
    ["-cp=*:8085", "--no-such-option"],  # pyhasses itself refuses this one, with its own message
])
def test_loopback_a_secret_or_no_control_port_starts(args):
    assert container.exposure_refusal(["pyhasses", "-p=8080", "-murl=/sse", *args]) is None


def test_a_config_file_cannot_open_the_control_port_without_a_secret(tmp_path):
    conf = tmp_path / "pyhasses.conf"
    conf.write_text("# as hasses.conf\n-cp=*:8085\n")
    assert container.exposure_refusal(["pyhasses", "-p=8080", "-murl=/sse", f"-config={conf}"])


def test_the_secret_given_by_a_variable_is_written_to_a_private_file():
    path = container._secret_from_variable({"PYHASSES_CONTROL_SECRET": "s3cret"})
    try:
        assert open(path).read() == "s3cret"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        os.unlink(path)
    assert container._secret_from_variable({}) is None


def test_a_credential_file_named_by_a_variable_must_exist(tmp_path):
    with pytest.raises(container.Refusal, match="no such file"):
        container.credential_file({"PYHASSES_CONTROL_SECRET_FILE": str(tmp_path / "absent")},
                                  "PYHASSES_CONTROL_SECRET_FILE", "/nonexistent")
    assert container.credential_file({}, "PYHASSES_CONTROL_SECRET_FILE", str(tmp_path / "absent")) is None
    (tmp_path / "mounted").write_text("x")
    assert container.credential_file({}, "V", str(tmp_path / "mounted")) == str(tmp_path / "mounted")


def entry_point(*args, env=None, **kw):
    environ = {**pyhasses_env(), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "pyhasses.container", *args], env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_the_entry_point_exits_2_and_opens_nothing_when_it_refuses():
    port = free_port()
    proc = entry_point(f"-cp=*:{port}", env={"PYHASSES_SSE_PORT": str(free_port())})
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 2, out + err
    assert err.startswith("pyhasses-container: refusing to open the control port on *:")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_the_entry_point_becomes_the_daemon(tmp_path):
    sse, control, metrics = free_port(), free_port(), free_port()
    proc = entry_point(env={"PYHASSES_SSE_PORT": str(sse), "PYHASSES_CONTROL_PORT": str(control),
                            "PYHASSES_METRICS_PORT": str(metrics), "PYHASSES_DRAIN": "0"}, cwd=str(tmp_path))
    try:
        def listening():
            assert proc.poll() is None, proc.communicate()
            try:
                socket.create_connection(("127.0.0.1", control), timeout=0.2).close()
                return True
            except OSError:
                return False

        wait_until(listening, 20, what="the daemon to listen")
        client = SseClient("127.0.0.1", sse)
        client.request("GET /sse?subscribe=room1 HTTP/1.1\r\nConnection: keep-alive\r\n\r\n")
        client.read_handshake()
        with socket.create_connection(("127.0.0.1", control), timeout=5) as s:
            s.sendall(b"room1=through the entry point\n")
        assert client.read_event()["data"] == "through the entry point"
        client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, out + err
    assert out.startswith(f"pyhasses-container: pyhasses -nodaemon -p={sse} ")
    assert "Exiting" in out  # the daemon's log, on the same stdout: exec kept the pid and the streams


@pytest.fixture
def web_server(tmp_path):
    """Python's http.server on loopback, serving tmp_path."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                             "-d", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def up():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return False

    try:
        wait_until(up, 20, what="http.server")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_health_check_wants_200_from_healthz(web_server, tmp_path, capsys):
    environ = {"PYHASSES_METRICS_PORT": str(web_server)}
    assert container.healthcheck(environ) == 1  # 404: no /healthz yet
    (tmp_path / "healthz").write_text('{"ok": true}\n')
    assert container.healthcheck(environ) == 0
    assert container.healthcheck({"PYHASSES_METRICS_PORT": f"*:{web_server}"}) == 0
    assert container.healthcheck({"PYHASSES_METRICS_PORT": str(free_port())}) == 1  # nothing listens
    assert container.healthcheck({"PYHASSES_METRICS_PORT": ""}) == 1
    assert "PYHASSES_METRICS_PORT is empty" in capsys.readouterr().err


@pytest.mark.skipif("/healthz" not in DAEMON_TEXT,
                    reason="this tree's pyhasses serves no /healthz on the metrics port yet (issue 14)")
def test_the_health_check_passes_against_the_daemon(daemon_factory):
    metrics = free_port()
    daemon_factory(f"--metrics-port={metrics}")
    assert container.healthcheck({"PYHASSES_METRICS_PORT": str(metrics)}) == 0
