"""pyhasses-ctl and pyhasses.publish against the real daemon: what a
publisher types, what subscribers receive, what the tool prints, and how it
fails when there is no daemon or the daemon says no."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pyhasses import publish as pub
from support import free_port, pyhasses_env, run_module


def ctl(*args, stdin=None, timeout=20):
    """Run ``pyhasses-ctl`` as a publisher would: a separate process."""
    return run_module("pyhasses.ctl", *args, input=stdin, timeout=timeout)


def tcp(daemon):
    return ["--port", str(daemon.cport)]


# -- the message part, bytes only ----------------------------------------------


def test_plain_message_uses_the_legacy_form():
    assert pub.message_part("room1", "hello = world") == b"room1=hello = world\n"


def test_single_exception_uses_the_legacy_form():
    assert pub.message_part("room1", "hi", except_ids=["u7"]) == b"room1-u7=hi\n"


@pytest.mark.parametrize("kw, data", [
    ({"event": "chat"}, "x"),
    ({"retry": 500}, "x"),
    ({"ack": True}, "x"),
    ({"json_form": True}, "x"),
    ({"except_ids": ["a", "b"]}, "x"),
    ({}, "a;b"),
    ({}, "line one\nline two"),
])
def test_json_form_when_asked_or_needed(kw, data):
    part = pub.message_part("room1", data, **kw)
    assert part.endswith(b"\n") and part.count(b"\n") == 1
    obj = json.loads(part)
    assert obj["to"] == "room1" and obj["data"] == data


def test_bad_token_is_refused_before_sending():
    with pytest.raises(pub.PublishError, match="bad token"):
        pub.message_part("a-*", "x")


# -- sending ---------------------------------------------------------------------


def test_send_reaches_subscribers(daemon):
    client = daemon.sse("room1")
    other = daemon.sse("room2")
    r = ctl(*tcp(daemon), "send", "room1", "hello, wörld")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert client.read_event()["data"] == "hello, wörld"
    other.expect_nothing()


def test_send_event_multiline_with_separator_and_equals(daemon):
    client = daemon.sse("room1")
    text = "line one; x=1\nline two"
    r = ctl(*tcp(daemon), "send", "--event", "chat", "room1", text)
    assert r.returncode == 0, r.stderr
    event = client.read_event()
    assert event["event"] == "chat"
    assert event["data"] == text


def test_send_ack_prints_how_many_clients_got_it(daemon):
    clients = [daemon.sse("room1"), daemon.sse("room1"), daemon.sse("room1x")]
    r = ctl(*tcp(daemon), "send", "--ack", "room1", "counted")
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(": ", 1) for line in r.stdout.splitlines())
    assert lines["delivered"] == "2"
    for c in clients[:2]:
        assert c.read_event()["id"] == lines["id"]
    clients[2].expect_nothing()


def test_send_except_skips_that_client(daemon):
    me = daemon.sse("room1", uniq="me")
    you = daemon.sse("room1", uniq="you")
    r = ctl(*tcp(daemon), "send", "--except", "me", "room1", "not for me")
    assert r.returncode == 0, r.stderr
    assert you.read_event()["data"] == "not for me"
    me.expect_nothing()


def test_send_json_form_and_retry(daemon):
    client = daemon.sse("room1")
    r = ctl(*tcp(daemon), "send", "--json", "--retry", "1500", "room1", '{"a": [1, 2]}')
    assert r.returncode == 0, r.stderr
    event = client.read_event()
    assert (event["data"], event["retry"]) == ('{"a": [1, 2]}', "1500")


def test_send_reads_message_from_stdin(daemon):
    client = daemon.sse("room1")
    r = ctl(*tcp(daemon), "send", "room1", "-", stdin="from a pipe\nsecond line\n")
    assert r.returncode == 0, r.stderr
    assert client.read_event()["data"] == "from a pipe\nsecond line"


def test_send_over_ipv6_loopback(daemon):
    """The control port listens on ::1 too by default."""
    client = daemon.sse("room1")
    r = ctl("--host", "::1", *tcp(daemon), "send", "--ack", "room1", "over IPv6")
    assert r.returncode == 0, r.stderr
    assert "delivered: 1" in r.stdout
    assert client.read_event()["data"] == "over IPv6"

def test_send_over_fifo(daemon):
    client = daemon.sse("room1")
    r = ctl("--fifo", daemon.fifo, "send", "--event", "note", "room1", "via the fifo; with a separator")
    assert r.returncode == 0, r.stderr
    event = client.read_event()
    assert (event["event"], event["data"]) == ("note", "via the fifo; with a separator")


def test_daemon_error_answer_exits_1(daemon):
    # Told the daemon allows longer tokens than it does, the tool sends; the daemon refuses.
    r = ctl(*tcp(daemon), "--max-token-length", "400", "send", "--ack", "t" * 300, "too long an address")
    assert r.returncode == 1
    assert "refused" in r.stderr and "longer than" in r.stderr


def test_bad_token_exits_2_without_sending(daemon):
    r = ctl(*tcp(daemon), "send", "a-*", "x")
    assert r.returncode == 2 and "bad token" in r.stderr
    assert daemon.control_json("tcpstatus")["msgproccnt"] == 0


def test_ack_over_fifo_is_a_usage_error(daemon):
    r = ctl("--fifo", daemon.fifo, "send", "--ack", "room1", "x")
    assert r.returncode == 2 and "--ack needs the TCP control port" in r.stderr


# -- questions -----------------------------------------------------------------


def test_status_prints_the_counters(daemon):
    client = daemon.sse("room1")
    ctl(*tcp(daemon), "send", "room1", "one")
    assert client.read_event()["data"] == "one"
    r = ctl(*tcp(daemon), "status")
    assert r.returncode == 0, r.stderr
    status = dict(line.split(": ", 1) for line in r.stdout.splitlines())
    assert status["sseconncli"] == "1"
    assert status["msgproccnt"] == "1" and status["msgsendcnt"] == "1"
    assert status["mode"].startswith("unencrypted")


def test_count_all_and_per_token(daemon):
    clients = [daemon.sse("room1"), daemon.sse("room1-room2"), daemon.sse("room3")]  # noqa: F841 (kept open)
    daemon.wait_clients(3)
    assert ctl(*tcp(daemon), "count").stdout.strip() == "3"
    assert ctl(*tcp(daemon), "count", "room1").stdout.strip() == "2"
    assert ctl(*tcp(daemon), "count", "nobody").stdout.strip() == "0"


def test_clients_lists_them_on_stdout_or_in_the_log(daemon):
    client = daemon.sse("room1", uniq="visible-one")  # noqa: F841 (kept open)
    r = ctl(*tcp(daemon), "clients")
    assert r.returncode == 0, r.stderr
    if r.stdout:  # a daemon with tcpclientlist
        header, row = r.stdout.splitlines()
        assert header.split()[:3] == ["peer", "id", "state"]
        assert row.split()[1:4] == ["visible-one", "SSE", "room1"]
        raw = ctl(*tcp(daemon), "clients", "--json")
        (entry,) = json.loads(raw.stdout)["clients"]
        assert (entry["id"], entry["subscriptions"]) == ("visible-one", ["room1"])
    else:  # only clientlist, which writes to the log
        assert "wrote the client list to its log" in r.stderr
        daemon.wait_log(r"UniqId:visible-one")


def test_fifo_questions_go_to_the_log(daemon):
    client = daemon.sse("room1")  # noqa: F841 (kept open)
    r = ctl("--fifo", daemon.fifo, "count", "room1")
    assert r.returncode == 0 and "log" in r.stderr
    daemon.wait_log(r"Number of clients subscribed to room1: 1")
    r = ctl("--fifo", daemon.fifo, "status")
    assert r.returncode == 0
    daemon.wait_log(r"status of pyhasses")


# -- no daemon -------------------------------------------------------------------


def test_no_daemon_on_the_port_exits_3():
    port = free_port()
    for args in (["send", "room1", "x"], ["status"], ["count"], ["clients"]):
        r = ctl("--port", str(port), *args)
        assert r.returncode == 3, (args, r)
        assert f"cannot connect to the control port 127.0.0.1:{port}" in r.stderr
        assert f"-cp={port}" in r.stderr


def test_fifo_without_daemon_exits_3(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    r = ctl("--fifo", str(fifo), "send", "room1", "x")
    assert r.returncode == 3 and "no daemon is reading the FIFO" in r.stderr
    r = ctl("--fifo", str(tmp_path / "missing"), "send", "room1", "x")
    assert r.returncode == 3 and "No such file" in r.stderr


def test_regular_file_is_not_taken_for_a_fifo(tmp_path):
    path = tmp_path / "not-a-fifo"
    path.write_text("")
    r = ctl("--fifo", str(path), "send", "room1", "x")
    assert r.returncode == 2 and "not a FIFO" in r.stderr
    assert path.read_text() == ""


def test_daemon_that_stopped_is_not_reachable(daemon):
    port = daemon.cport
    daemon.stop()
    r = ctl("--port", str(port), "send", "room1", "x")
    assert r.returncode == 3


# -- the Python helper -------------------------------------------------------------


def test_publish_helper_in_one_call(daemon):
    client = daemon.sse("room1")
    ack = pub.publish("room1", "from python;\nwith lines", event="py", ack=True, port=daemon.cport)
    assert ack["ok"] is True and ack["delivered"] == 1
    event = client.read_event()
    assert (event["event"], event["data"], event["id"]) == ("py", "from python;\nwith lines", ack["id"])
    assert pub.publish("room1", "plain", port=daemon.cport) is None
    assert client.read_event()["data"] == "plain"
    pub.publish("room1", "by fifo", fifo=daemon.fifo)
    assert client.read_event()["data"] == "by fifo"


def test_publish_helper_raises_when_nobody_listens():
    with pytest.raises(pub.NotReachable, match="cannot connect"):
        pub.publish("room1", "x", port=free_port(), timeout=2)


def test_control_questions_from_python(daemon):
    client = daemon.sse("room1")  # noqa: F841 (kept open)
    control = pub.Control(port=daemon.cport)
    assert control.count() == 1 and control.count("room1") == 1
    assert control.status()["sseconncli"] == 1


def test_output_cut_short_by_the_reader_is_not_a_crash(daemon):
    """``pyhasses-ctl status | head -1``, with the reader gone before the
    tool writes: a quiet end with the shell's SIGPIPE status, no traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        r = subprocess.run([sys.executable, "-m", "pyhasses.ctl", "--port", str(daemon.cport), "status"],
                           stdout=write_end, stderr=subprocess.PIPE, text=True, env=pyhasses_env(), timeout=20)
    finally:
        os.close(write_end)
    assert (r.returncode, r.stderr) == (141, "")


def ctl_env(env_extra, *args, timeout=20):
    """``pyhasses-ctl`` with the environment a shell backend would set."""
    env = {**pyhasses_env(), **env_extra}
    return subprocess.run([sys.executable, "-m", "pyhasses.ctl", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_port_and_fifo_come_from_the_examples_variables(daemon):
    client = daemon.sse("room1")
    r = ctl_env({"PYHASSES_PORT": str(daemon.cport)}, "send", "--ack", "room1", "by PYHASSES_PORT")
    assert r.returncode == 0 and "delivered: 1" in r.stdout, r.stderr
    assert client.read_event()["data"] == "by PYHASSES_PORT"
    r = ctl_env({"PYHASSES_FIFO": daemon.fifo, "PYHASSES_PORT": str(free_port())}, "send", "room1", "by FIFO")
    assert r.returncode == 0, r.stderr
    assert client.read_event()["data"] == "by FIFO"
    # The command line still wins.
    r = ctl_env({"PYHASSES_PORT": str(free_port())}, "--port", str(daemon.cport), "count")
    assert r.returncode == 0 and r.stdout.strip() == "1"


def test_bad_port_variable_is_a_usage_error():
    r = ctl_env({"PYHASSES_PORT": "eighty"}, "status")
    assert r.returncode == 2 and "--port" in r.stderr


@pytest.mark.parametrize("token, reason", [
    ("t" * 129, "longer than 128"),
    ("room1-", "empty id"),
    ("x*-", "empty id"),
])
def test_token_the_daemon_would_refuse_is_refused_before_sending(daemon, token, reason):
    client = daemon.sse("t" * 128)
    for channel in (tcp(daemon), ["--fifo", daemon.fifo]):
        r = ctl(*channel, "send", token, "never sent")
        assert r.returncode == 2 and reason in r.stderr and "would refuse" in r.stderr, r.stderr
    r = ctl(*tcp(daemon), "send", "--except", "u" * 129, "room1", "never sent")
    assert r.returncode == 2 and "excluded id longer than 128" in r.stderr
    r = ctl(*tcp(daemon), "send", "t" * 128, "at the limit")
    assert r.returncode == 0, r.stderr
    assert client.read_event()["data"] == "at the limit"


def test_longer_tokens_pass_when_the_daemon_allows_them(daemon_factory):
    d = daemon_factory("--max-token-length", "300")
    client = d.sse("t" * 200)
    r = ctl_env({"PYHASSES_MAX_TOKEN_LENGTH": "300"}, *tcp(d), "send", "t" * 200, "long one")
    assert r.returncode == 0, r.stderr
    assert client.read_event()["data"] == "long one"
