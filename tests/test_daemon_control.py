"""The control port and FIFO of the real daemon (PROTOCOL.md 5, 5a, 6)."""

import json
import re
import os
import socket
import subprocess
import sys
import time

from support import wait_until
from tcpqueues import peer_has_read


def test_message_split_over_two_writes(daemon_factory):
    # A long idle flush: a loaded machine's pause between writes must not
    # end the part early; each write is read by itself before the next.
    daemon = daemon_factory("--idle-flush", "5")
    c = daemon.sse("room1")
    with socket.create_connection(("127.0.0.1", daemon.cport)) as s:
        for part in (b"roo", b"m1=hel"):
            s.sendall(part)
            wait_until(lambda: peer_has_read(s), timeout=5, interval=0.005, what="the daemon to read the part")
        c.expect_nothing(0.05)  # an incomplete part is not published
        s.sendall(b"lo\n")
        assert c.read_event()["data"] == "hello"


def test_unterminated_tail_flushed_when_idle(daemon):
    c = daemon.sse("r")
    with socket.create_connection(("127.0.0.1", daemon.cport)) as s:
        s.sendall(b"r=no terminator")
        start = time.monotonic()
        assert c.read_event(timeout=6)["data"] == "no terminator"
        assert time.monotonic() - start < 5.5


def test_tail_taken_at_half_close(daemon):
    c = daemon.sse("r")
    start = time.monotonic()
    daemon.control("r=abc")  # hasses dropped messages of 3 bytes or fewer here
    assert c.read_event()["data"] == "abc"
    assert time.monotonic() - start < 1


def test_message_after_first_equals_kept_whole(daemon):
    c = daemon.sse("r")
    daemon.control("r=a=b=c\n")
    assert c.read_event()["data"] == "a=b=c"


def test_fifo_publish_and_many_writers_never_merged(daemon):
    c = daemon.sse("w")
    n = 40
    code = ("import os,sys\nfd=os.open(sys.argv[1], os.O_WRONLY)\n"
            "os.write(fd, ('w=writer %s\\n' % sys.argv[2]).encode())\nos.close(fd)\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, daemon.fifo, str(i)]) for i in range(n)]
    for p in procs:
        assert p.wait(20) == 0
    got = sorted(e["data"] for e in c.read_events(n, timeout=10))
    assert got == sorted(f"writer {i}" for i in range(n))


def test_two_writes_in_one_fifo_read_split(daemon):
    c = daemon.sse("a-b")
    fd = os.open(daemon.fifo, os.O_WRONLY)
    os.write(fd, b"a=first\nb=second\n")  # one read on the daemon's side
    os.close(fd)
    assert [e["data"] for e in c.read_events(2)] == ["first", "second"]


def test_fifo_not_world_writable(daemon):
    mode = os.stat(daemon.fifo).st_mode & 0o777
    assert mode == 0o660


def test_fifo_mode_option(daemon_factory, tmp_path):
    d = daemon_factory("--fifo-mode", "0620", fifo=True)
    assert os.stat(d.fifo).st_mode & 0o777 == 0o620


def test_tcpstatus_keys_and_types(daemon):
    c = daemon.sse("r")
    daemon.control("r=1;x=2\n")
    c.read_event()
    st = daemon.control_json("tcpstatus")
    for key, typ in (("version", str), ("runningtime", str), ("mode", str), ("loglevel", int),
                     ("allconncli", int), ("sseconncli", int), ("maxconncli", int),
                     ("msgproccnt", int), ("msgsendcnt", int)):
        assert isinstance(st[key], typ), key
    assert st["mode"] == "unencrypted (http)"
    assert (st["allconncli"], st["sseconncli"], st["msgproccnt"], st["msgsendcnt"]) == (1, 1, 2, 1)
    assert st["maxconncli"] >= 1


def test_counters_count_unhandshaked(daemon):
    s = socket.create_connection(("127.0.0.1", daemon.port))
    s.sendall(b"GET /sse")
    wait_until(lambda: daemon.control_json("tcpnumberofclients") == {"numberofclients": 1})
    st = daemon.control_json("tcpstatus")
    assert (st["allconncli"], st["sseconncli"]) == (1, 0)
    s.close()


def test_tcpsubscribedclients_valid_json_for_any_token(daemon):
    clients = [daemon.sse("room1"), daemon.sse("room1-other")]
    assert daemon.control_json("tcpsubscribedclients:room1") == {"subscribedclients": 2, "subscribedfor": "room1"}
    weird = 'we"ird\\tok\u00e9'
    assert daemon.control_json("tcpsubscribedclients:" + weird) == {"subscribedclients": 0, "subscribedfor": weird}
    assert len(clients) == 2
    # Bytes that are not UTF-8: the reply must still be UTF-8 JSON.
    reply = daemon.control(b"tcpsubscribedclients:ab\xff\xfecd\n")
    assert json.loads(reply.decode("utf-8")) == {"subscribedclients": 0, "subscribedfor": "ab\ufffd\ufffdcd"}


def test_json_message_with_ack_and_event(daemon):
    a = daemon.sse("room1", uniq="me")
    b = daemon.sse("room1")
    msg = {"to": "room1", "event": "chat", "data": "line one\nline two; x=1", "except": "me", "ack": True}
    reply = json.loads(daemon.control(json.dumps(msg) + "\n"))
    assert reply["ok"] is True and reply["delivered"] == 1
    ev = b.read_event()
    assert ev == {"event": "chat", "id": reply["id"], "data": "line one\nline two; x=1"}
    a.expect_nothing()


def test_json_retry_field(daemon):
    c = daemon.sse("r")
    daemon.control(json.dumps({"to": ["r"], "data": "x", "retry": 2500}) + "\n")
    assert c.read_event()["retry"] == "2500"


def test_malformed_json_gets_error_reply_and_nothing_else_breaks(daemon):
    c = daemon.sse("r")
    reply = daemon.control('{"to": "r", "data": \nr=after\n')
    first = json.loads(reply.splitlines()[0])
    assert first["ok"] is False and first["error"]
    assert c.read_event()["data"] == "after"


def test_a_part_that_cannot_be_sent_costs_nothing_to_the_parts_after_it(daemon):
    # Found by a robustness audit: a lone surrogate in JSON raised deep in
    # the event encoder, closed the connection and lost what followed (on
    # the FIFO, other writers' messages).  A forged log line must not appear.
    c = daemon.sse("w")
    reply = daemon.control('{"to": "w", "data": "\\ud800", "ack": true}\nw=after tcp\n')
    assert json.loads(reply.splitlines()[0])["ok"] is False
    assert c.read_event()["data"] == "after tcp"
    daemon.publish_fifo('{"to": "w", "event": "\\udfff", "data": "x"}\nw=after fifo\n')
    assert c.read_event()["data"] == "after fifo"
    daemon.control('{"to": "w", "data": "x", "a\\n2026-01-01 00:00:00 pyhasses: FAKE": 1}\nsubscribedclients:\x1b[31m\n')
    wait_until(lambda: "unknown field(s): 'a\\n2026-01-01 00:00:00 pyhasses: FAKE'" in daemon.log())
    wait_until(lambda: "subscribed to \\x1b[31m: 0" in daemon.log())
    assert not re.search(r"^2026-01-01 00:00:00 pyhasses: FAKE", daemon.log(), re.M)
    assert "internal error" not in daemon.log() and "Traceback" not in daemon.log()


def test_oversize_part_dropped_next_part_and_connection_fine(daemon):
    c = daemon.sse("r")
    with socket.create_connection(("127.0.0.1", daemon.cport)) as s:
        s.sendall(b"r=" + b"x" * (3 << 20) + b";r=next\n")
        assert c.read_event(timeout=15)["data"] == "next"
    daemon.control("r=other connection\n")
    assert c.read_event()["data"] == "other connection"
    assert "over the limit" in daemon.log()


def test_unknown_command_logged_and_ignored(daemon):
    c = daemon.sse("r")
    daemon.control("bogus_command;r=fine\n")
    assert c.read_event()["data"] == "fine"
    daemon.wait_log("bogus_command")


def test_publisher_errors_are_logged_at_the_quiet_level(daemon_factory):
    # PROTOCOL 7: level 0 logs errors; a publisher's mistakes are errors.
    d = daemon_factory("-q")
    d.control('bogus_command;bad-*=y\n{"to": "r", "data": 1}\n')
    d.wait_log(r"unknown command .*'bogus_command'; ignored")
    d.wait_log(r"bad address 'bad-\*'.*; ignored")
    d.wait_log(r"data.*; ignored")


def test_status_and_clientlist_in_log(daemon):
    client = daemon.sse("room624", uniq="abc")
    daemon.control("status;clientlist;numberofclients;subscribedclients:room624\n")
    daemon.wait_log(r"------- status of pyhasses -------")
    log = daemon.log()
    for line in ("Running time: ", "Mode: unencrypted (http)", "Count of connected clients: 1",
                 "Current registred SSE clients: 1", "Total message processed: 0", "------------- end --------------",
                 "------- requested client list -------", "S:SSE Err: 0 Messages: 0 Reinit: 0 SSL:No",
                 "UniqId:abc", "Subscribes: room624", "---------------- end ----------------"):
        assert line in log, line
    daemon.wait_log("Number of clients subscribed to room624: 1")
    client.close()


def test_loglevel_commands(daemon):
    daemon.control("loglevel_debug\n")
    assert daemon.control_json("tcpstatus")["loglevel"] == 2
    daemon.sse("dbg")
    daemon.wait_log("SSE connection OK")
    daemon.control("loglevel_quiet\n")
    assert daemon.control_json("tcpstatus")["loglevel"] == 0


def test_tcp_commands_on_fifo_are_not_answered(daemon):
    c = daemon.sse("r")
    daemon.publish_fifo("tcpstatus\nr=after\n")
    assert c.read_event()["data"] == "after"
    daemon.wait_log(r"fifo: tcpstatus replies only on the TCP control port; ignored")
    assert '"msgproccnt"' not in daemon.log()  # no JSON reply written anywhere


def test_control_port_loopback_by_default(daemon):
    daemon.wait_log(r"Control port listens on 127.0.0.1:\d+, \[::1\]:\d+ \(loopback only\)")
    conns = open("/proc/net/tcp").read() + open("/proc/net/tcp6").read()
    port_hex = f":{daemon.cport:04X} "
    local = [line.split()[1] for line in conns.splitlines()[1:] if port_hex in line.split()[1] + " "
             and line.split()[3] == "0A"]
    assert local, "control port not listening"
    for addr in local:
        host = addr.split(":")[0]
        assert host in ("0100007F", "00000000000000000000000001000000"), addr


def test_control_bind_elsewhere_is_logged(daemon_factory):
    d = daemon_factory("--control-bind", "*")
    d.wait_log("WARNING: control port listens on")


def test_many_parts_in_one_write(daemon):
    c = daemon.sse("b")
    daemon.control(";".join(f"b=m{i}" for i in range(200)) + "\n")
    assert [e["data"] for e in c.read_events(200)] == [f"m{i}" for i in range(200)]
