"""-config=FILE: hasses.conf's form, the command line winning, and bad lines
named by file and line."""

from __future__ import annotations

import socket

import pytest

from pyhasses.cli import build_settings, parse_args, with_config_file
from pyhasses.settings import Endpoint
from support import ROOT, Daemon, free_port, run_module

#: hasses 1.30's example hasses.conf, as shipped (comments included).
HASSES_CONF = """\
# Hasses config file
# One option per line: the same flags as on the command line.

# Port of the SSE listener
-p=8080
# Communication (control) port
-cp=8085
# The url the clients have to request
-murl=/sse-event
# The FIFO to read the messages from
-fifo=/var/run/hasses/SSE_EVENT
# Log file
-l=/var/log/hasses.log
# Pid file
-pidfile=/var/run/hasses/hasses.pid
# Allow reinit
-ra
#-user=hyper
# -debug
#-ssl
"""


def settings_for(*argv):
    return build_settings(with_config_file(parse_args(list(argv))))


def run_cli(*argv, timeout=20):
    return run_module("pyhasses", *argv, timeout=timeout)


def test_hasses_example_config_reads_unchanged(tmp_path):
    conf = tmp_path / "hasses.conf"
    conf.write_text(HASSES_CONF)
    s = settings_for(f"-config={conf}")
    assert s.sse == Endpoint(8080)
    assert s.control == Endpoint(8085, ("127.0.0.1", "::1"))
    assert s.match_url == "/sse-event"
    assert s.fifo == "/var/run/hasses/SSE_EVENT"
    assert s.logfile == "/var/log/hasses.log"
    assert s.pidfile == "/var/run/hasses/hasses.pid"
    assert s.reinit is True
    assert s.user is None and s.loglevel == 1 and s.ssl is False  # commented out


def test_gnu_spelling_of_the_config_option(tmp_path):
    conf = tmp_path / "c.conf"
    conf.write_text(HASSES_CONF)
    assert settings_for("--config", str(conf)) == settings_for(f"-config={conf}")


def test_command_line_wins_whatever_the_order(tmp_path):
    conf = tmp_path / "c.conf"
    conf.write_text("-p=8080\n-murl=/from-file\n-cp=8085\n-q\n")
    for argv in ([f"-config={conf}", "-p=9090", "-debug"], ["-p=9090", "-debug", f"-config={conf}"]):
        s = settings_for(*argv)
        assert s.sse.port == 9090
        assert s.loglevel == 2
        assert s.match_url == "/from-file"


def test_whitespace_comments_long_options_and_crlf(tmp_path):
    conf = tmp_path / "c.conf"
    conf.write_bytes(b"   -p=8080   \r\n\t\r\n  # indented comment\r\n--match-url /spaced\r\n"
                     b"--control-port=8085\r\n-cors-base=https://example.org\r\n\n")
    s = settings_for(f"-config={conf}")
    assert s.sse.port == 8080 and s.control.port == 8085
    assert s.match_url == "/spaced"
    assert s.cors_base == "https://example.org"


@pytest.mark.parametrize("line, reason", [
    ("-p=eighty", "-p: expected PORT or ADDRESS:PORT, got 'eighty'"),
    ("-p", "-p needs a value"),
    ("-ra=yes", "-ra takes no value"),
    ("-config=/etc/other.conf", "a config file cannot name another one"),
    ("-h", "help and version switches belong on the command line"),
])
def test_bad_line_is_named_by_file_and_line_exit_2(tmp_path, line, reason):
    conf = tmp_path / "bad.conf"
    conf.write_text(f"# first\n-p=8080\n\n{line}\n-murl=/sse\n")
    done = run_cli(f"-config={conf}", "-cp=8085")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"pyhasses: {conf}:4: ")
    assert reason in done.stderr
    assert done.stderr.count("\n") == 1


@pytest.mark.parametrize("line", ["-nosuch=1", "p=8080", "-port=8080"])
def test_unknown_switch_in_the_file_exits_as_on_the_command_line(tmp_path, line):
    conf = tmp_path / "bad.conf"
    conf.write_text(f"-murl=/sse\n{line}\n")
    from_file = run_cli(f"-config={conf}", "-cp=8085", "-p=8080")
    from_args = run_cli(line, "-murl=/sse", "-cp=8085", "-p=8080")
    assert from_file.returncode == from_args.returncode == 1, (from_file.stderr, from_args.stderr)
    assert from_file.stderr.startswith(f"pyhasses: {conf}:2: unknown switch")
    assert from_file.stderr.count("\n") == 1


def test_missing_config_file_exit_2(tmp_path):
    done = run_cli(f"-config={tmp_path / 'missing.conf'}")
    assert done.returncode == 2
    assert done.stderr == f"pyhasses: cannot read config file {tmp_path / 'missing.conf'}: No such file or directory\n"


def test_config_missing_a_required_option_exit_2(tmp_path):
    conf = tmp_path / "c.conf"
    conf.write_text("-p=8080\n-cp=8085\n")
    done = run_cli(f"-config={conf}")
    assert done.returncode == 2
    assert "missing -murl" in done.stderr


def test_daemon_serves_from_a_config_file(tmp_path):
    """The hasses example with its paths and ports changed, as an operator
    moving to pyhasses would; one option overridden on the command line."""
    port, cport = free_port(), free_port()
    text = (HASSES_CONF.replace("-p=8080", "-p=1")
            .replace("-cp=8085", f"-cp={cport}")
            .replace("/var/run/hasses/SSE_EVENT", str(tmp_path / "fifo"))
            .replace("/var/log/hasses.log", str(tmp_path / "log"))
            .replace("/var/run/hasses/hasses.pid", str(tmp_path / "pid")))
    conf = tmp_path / "hasses.conf"
    conf.write_text(text)
    d = Daemon(tmp_path, fifo=True, args=["-nodaemon", f"-config={conf}", f"-p=127.0.0.1:{port}"], start=False)
    d.port, d.cport, d.fifo, d.murl = port, cport, str(tmp_path / "fifo"), "/sse-event"
    d.start()
    try:
        client = d.sse("room1")
        d.publish_fifo("room1=configured\n")
        assert client.read_event()["data"] == "configured"
        assert (tmp_path / "pid").read_text().strip() == str(d.pid)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", 1), timeout=1).close()
    finally:
        assert d.stop() == 0


def test_the_packaged_config_is_a_working_config():
    """conf/pyhasses.conf, installed as /etc/pyhasses/pyhasses.conf."""
    conf = ROOT / "conf" / "pyhasses.conf"
    if not conf.exists():
        pytest.skip(f"{conf} is not part of this tree")
    s = settings_for(f"-config={conf}", "-nodaemon")
    assert s.sse == Endpoint(8080) and s.match_url == "/sse"
    assert s.fifo == "/run/pyhasses/fifo" and s.pidfile == "/run/pyhasses/pyhasses.pid"
    assert s.logfile == "/var/log/pyhasses/pyhasses.log"
    # The control port on loopback, where pyhasses-ctl looks by default.
    assert s.user is None and s.control == Endpoint(8085, ("127.0.0.1", "::1")) and not s.ssl
    # Every commented-out option in it is one pyhasses knows.
    for line in conf.read_text().splitlines():
        if line.startswith("#-"):
            parse_args([line[1:]])
