"""The command line (PROTOCOL.md 1; issue 2 point 8)."""

import pytest

from pyhasses import __version__
from pyhasses.cli import OPTIONS, UsageError, build_settings, parse_args
from support import run_module


def run(*args, timeout=10):
    return run_module("pyhasses", *args, timeout=timeout)


def test_version():
    for flag in ("-v", "-V", "-version", "--version"):
        r = run(flag)
        assert r.returncode == 0 and r.stdout.strip() == f"pyhasses {__version__}"


def test_help_lists_flags_and_commands():
    r = run("-h")
    assert r.returncode == 0
    for text in ("-p=", "-murl=", "-cp=", "-fifo=", "-sep=", "-q", "-debug", "-l=", "-pidfile=", "-ssl",
                 "-cert-file=", "-privatekey-file=", "-cors-base=", "-ra", "-user=", "-nodaemon",
                 "tcpstatus", "clientlist", "subscribedclients:<sub>", "reinit_enable", "loglevel_debug"):
        assert text in r.stdout, text
    for opt in OPTIONS:
        assert opt.long in r.stdout


def test_unknown_switch_exits_1():
    r = run("-p=8080", "-murl=/sse", "-cp=8085", "-bogus")
    assert r.returncode == 1 and '"-bogus"' in r.stderr
    assert "did you mean" not in r.stderr


@pytest.mark.parametrize("arg, suggested", [
    ("-port=8080", "did you mean -p=8080?"),
    ("--p=8080", "did you mean -p=8080?"),
    ("-nodeamon", "did you mean -nodaemon?"),
    ("-murll=/sse", "did you mean -murl=/sse?"),
    ("--fifo-grup=www-data", "did you mean --fifo-group www-data?"),
    ("-control-port=8085", "did you mean -cp=8085?"),
])
def test_unknown_switch_close_to_a_known_one_suggests_it(arg, suggested):
    r = run("-murl=/sse", "-cp=8085", arg)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and suggested in r.stderr, r.stderr


def test_no_arguments_points_to_help():
    r = run()
    assert r.returncode == 2 and r.stdout == ""
    assert "pyhasses -h" in r.stderr and "Usage:" in r.stderr


def test_log_file_with_nodaemon_gets_one_notice(tmp_path):
    log = tmp_path / "ignored.log"
    # -cp=0 is refused after the notice: the notice comes before any start.
    r = run("-nodaemon", f"-l={log}", "-p=8080", "-murl=/sse", "-cp=8085", "-sep==")
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert lines[0] == f"pyhasses: -l={log} is ignored with -nodaemon: the log goes to stdout", lines
    assert len(lines) == 2 and not log.exists()


@pytest.mark.parametrize("args,reason", [
    (("-murl=/sse", "-cp=8085"), "missing -p"),
    (("-p=8080", "-cp=8085"), "missing -murl"),
    (("-p=8080", "-murl=/sse"), "-cp=PORT and/or -fifo=PATH"),
    (("-p=0", "-murl=/sse", "-cp=1"), "port out of range"),
    (("-p=x", "-murl=/sse", "-cp=1"), "expected PORT or ADDRESS:PORT"),
    (("-p=8080", "-murl=/sse", "-fifo=relative/fifo"), "absolute path"),
    (("-p=8080", "-murl=/sse", "-cp=1", "-pidfile=p.pid"), "absolute path"),
    (("-p=8080", "-murl=/sse", "-cp=1", "-ssl"), "-cert-file"),
    (("-p=8080", "-murl=/sse", "-cp=1", "--max-token-length", "10"), "at least 128"),
    (("-p=8080", "-murl=/sse", "-cp=1", "--port"), "needs a value"),
    (("-p=8080", "-murl=/sse", "-fifo=/tmp/f", "--control-bind", "0.0.0.0"), "--control-bind needs a control port"),
])
def test_usage_errors_exit_2_with_one_line(args, reason):
    r = run(*args)
    assert r.returncode == 2
    assert reason in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_unknown_user_exits_1():
    r = run("-p=8080", "-murl=/sse", "-cp=8085", "-user=no_such_user_xyz")
    assert r.returncode == 1 and "no_such_user_xyz" in r.stderr


def test_legacy_and_long_spellings_agree():
    legacy = build_settings(parse_args(["-p=8080", "-murl=/sse", "-cp=8085", "-fifo=/tmp/f", "-sep=|", "-q",
                                        "-l=/tmp/l", "-pidfile=/tmp/p", "-cors-base=http://a", "-ra", "-nodaemon"]))
    long = build_settings(parse_args(["--port", "8080", "--match-url=/sse", "--control-port", "8085",
                                      "--fifo", "/tmp/f", "--separator", "|", "--quiet", "--log-file", "/tmp/l",
                                      "--pidfile", "/tmp/p", "--cors-base", "http://a", "--reinit", "--nodaemon"]))
    assert legacy == long
    assert legacy.sse.hosts == () and legacy.control.hosts == ("127.0.0.1", "::1")
    assert (legacy.separator, legacy.loglevel, legacy.reinit) == ("|", 0, True)


def test_hasses_delimiter_spelling():
    assert build_settings(parse_args(["-p=1", "-murl=/s", "-cp=2", "-F=#"])).separator == "#"


def test_bind_addresses():
    s = build_settings(parse_args(["-p=[::1]:8080", "-murl=/s", "-cp=0.0.0.0:8085"]))
    assert s.sse.hosts == ("::1",) and s.control.hosts == ("0.0.0.0",)
    s = build_settings(parse_args(["-p=8080", "--bind", "127.0.0.1", "-murl=/s", "-cp=8085", "--control-bind", "*"]))
    assert s.sse.hosts == ("127.0.0.1",) and s.control.hosts == ()


def test_control_port_every_address_as_readme_says():
    # README: "-cp=*:8085 ... restores that" (hasses listened everywhere);
    # a bare port stays loopback.
    s = build_settings(parse_args(["-p=8080", "-murl=/s", "-cp=*:8085"]))
    assert s.control.hosts == ()
    s = build_settings(parse_args(["-p=8080", "-murl=/s", "-cp=8085"]))
    assert s.control.hosts == ("127.0.0.1", "::1")


def test_switch_with_value_refused():
    with pytest.raises(UsageError):
        parse_args(["-ra=1"])


@pytest.mark.parametrize("flag,connect_line,debug_line", [
    ("-q", False, False), (None, True, False), ("-debug", True, True)])
def test_foreground_log_levels_on_stdout(daemon_factory, flag, connect_line, debug_line):
    d = daemon_factory(*([flag] if flag else []))
    c = d.sse("lvl")
    d.control("lvl=x\n")
    c.read_event()
    c.close()
    d.stop()
    out = d.log()
    assert ("Connect from 127.0.0.1" in out) == connect_line
    assert ("SSE connection OK" in out) == debug_line
    assert "pyhasses: " in out


def test_separator_takes_first_character():
    assert build_settings(parse_args(["-p=1", "-murl=/s", "-cp=2", "-sep=|;"])).separator == "|"
