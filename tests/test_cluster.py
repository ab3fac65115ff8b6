"""Nodes joined through a real Redis (PROTOCOL.md 10, issue 13): three
daemons on one machine, a private redis-server, real sockets throughout."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time

import pytest

from pyhasses import cluster as cluster_module
from redis_support import HoldingProxy, RedisServer
from support import Daemon, SseClient, free_port, run_module, wait_until

EVENT = re.compile(rb"id: (\d+)\ndata: ([^\n]*)\n\n")


@pytest.fixture
def redis(tmp_path):
    server = RedisServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def cluster(tmp_path, redis):
    """Start nodes on ``redis``; every one is stopped at the end."""
    started = []

    def start(*extra, port=None, url=None, **kw):
        node = Daemon(tmp_path, f"--redis={url or redis.url}", "--redis-prefix=t", *extra, start=port is None, **kw)
        if port is not None:  # a port chosen by the test (shared with --reuse-port)
            node.port = port
            node.args = ["-nodaemon", f"-p=127.0.0.1:{port}", "-murl=/sse", f"-cp={node.cport}", *node.args[4:]]
            node.start()
        started.append(node)
        wait_until(lambda: node.control_json("tcpstatus")["redis"] == "up", 10, what="the node's Redis link")
        return node

    yield start
    for node in started:
        if node.alive():
            node.stop()


def stream(node, subscribe="room1", last_event_id=None) -> SseClient:
    client = SseClient("127.0.0.1", node.port)
    extra = f"Last-Event-ID: {last_event_id}\r\n" if last_event_id else ""
    client.request(f"GET /sse?subscribe={subscribe} HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n{extra}\r\n")
    client.read_handshake()
    return client


def collect(client: SseClient, n: int, timeout: float) -> list:
    """(id, data) of the next ``n`` plain events, read in bulk."""
    deadline = time.monotonic() + timeout
    buf = bytearray(client.buf)
    while len(EVENT.findall(buf)) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            found = EVENT.findall(buf)
            raise AssertionError(f"only {len(found)} of {n} events before the deadline; last {found[-3:]!r}")
        client.sock.settimeout(remaining)
        data = client.sock.recv(1 << 20)
        assert data, "stream closed"
        buf += data
    events = [(int(i), d.decode()) for i, d in EVENT.findall(buf)]
    assert len(events) == n, f"{len(events)} events where {n} were expected"
    client.buf = b""
    return events


def test_publish_on_any_node_reaches_every_node_in_one_order(cluster):
    nodes = [cluster(), cluster(), cluster()]
    clients = [stream(node) for node in nodes]
    for node in nodes:
        node.wait_clients(1)
    # Interleaved publishers on three nodes, several parts per write.
    for i in range(0, 60, 3):
        for k, node in enumerate(nodes):
            node.control(f"room1=m{i + k}-a;other=never;room1=m{i + k}-b\n")
    seen = [collect(c, 120, 20) for c in clients]
    assert seen[0] == seen[1] == seen[2]  # same events, same ids, same order
    ids = [i for i, _ in seen[0]]
    assert ids == sorted(set(ids))  # each once, ids growing
    assert sorted(d for _, d in seen[0]) == sorted(f"m{i}-{s}" for i in range(60) for s in "ab")
    for c in clients:
        c.expect_nothing(0.3)


def test_acknowledgement_says_stored_and_delivered_on_this_node(cluster):
    a, b = cluster(), cluster()
    held = [stream(a), stream(b), stream(b)]  # noqa: F841 (kept open)
    a.wait_clients(1)
    b.wait_clients(2)
    reply = json.loads(a.control('{"to": "room1", "data": "x", "ack": true}\n'))
    assert reply["ok"] is True and reply["stored"] is True and reply["delivered"] == 1
    assert int(reply["id"]) > 0
    reply = json.loads(b.control('{"to": "room1", "data": "y", "ack": true}\n'))
    assert reply["delivered"] == 2 and int(reply["id"]) > 0


def test_resume_on_another_node_and_on_a_node_started_later(cluster):
    a, b, c = cluster(), cluster(), cluster()
    first = stream(a, "room1-room2")
    a.wait_clients(1)
    a.control("room1=one;room2=two;room1=three\n")
    got = collect(first, 3, 10)
    first.close()
    last_id = got[-1][0]
    b.control("room1=four;elsewhere=not-yours;room2=five\n")
    for node in (a, c):
        wait_until(lambda: node.control_json("tcpstatus")["historysize"] >= 6, 5, what="the events on every node")
    moved = stream(c, "room1-room2", last_event_id=last_id)
    assert [d for _, d in collect(moved, 2, 5)] == ["four", "five"]
    a.control("room2=six\n")
    assert [d for _, d in collect(moved, 1, 5)] == ["six"]
    moved.expect_nothing(0.3)
    # A node that was not running when the events passed holds them too.
    d = cluster()
    late = stream(d, "room1-room2", last_event_id=last_id)
    assert [x for _, x in collect(late, 3, 5)] == ["four", "five", "six"]
    assert b"event: reset" not in late.buf


@pytest.fixture
def lagging(redis):
    """A relay to ``redis`` that can hold a node's answers back."""
    proxy = HoldingProxy(redis.port)
    yield proxy
    proxy.stop()


def test_resume_on_a_node_that_lags_waits_for_the_id_then_sends_what_follows(cluster, lagging):
    a, b = cluster(), cluster()
    c = cluster(url=lagging.url)
    first = stream(a)
    a.wait_clients(1)
    a.control("room1=one;room1=two\n")
    collect(first, 2, 5)
    wait_until(lambda: c.control_json("tcpstatus")["historysize"] >= 2, 5, what="c to read the first events")
    lagging.hold()  # c reads nothing more for now
    a.control("room1=three;room1=four\n")
    last_id = collect(first, 2, 5)[-1][0]
    first.close()
    moved = stream(c, last_event_id=last_id)  # an id c has not read yet
    b.control("room1=five\n")
    moved.expect_nothing(0.5)  # no reset, and not "three" or "four" again
    lagging.release()
    assert [d for _, d in collect(moved, 1, 5)] == ["five"]
    a.control("room1=six\n")
    assert [d for _, d in collect(moved, 1, 5)] == ["six"]
    moved.expect_nothing(0.3)
    assert c.control_json("tcpstatus")["resets"] == 0


def test_resume_after_an_id_beyond_redis_gets_a_reset_at_once(cluster):
    a, b, c = cluster(), cluster(), cluster()
    first = stream(a)
    a.wait_clients(1)
    b.control("room1=one\n")
    last_id = collect(first, 1, 5)[-1][0]
    wait_until(lambda: c.control_json("tcpstatus")["historysize"] >= 1, 5, what="c to read the event")
    began = time.monotonic()
    ahead = stream(c, last_event_id=str(last_id + 10 ** 9))  # a second after Redis' newest entry
    reset = ahead.read_chunk(5)
    assert time.monotonic() - began < cluster_module.AHEAD_WAIT  # Redis said so; no wait
    assert reset.startswith(b"event: reset\n") and b'"reason":"unknown-id"' in reset
    assert f"id: {last_id}\n".encode() in reset  # the browser asks from c's newest next time
    a.control("room1=two\n")
    assert [d for _, d in collect(ahead, 1, 5)] == ["two"]


def test_resume_on_a_node_that_stays_behind_gets_a_reset_after_the_wait(cluster, lagging):
    a, b = cluster(), cluster()
    c = cluster(url=lagging.url)
    first = stream(a)
    a.wait_clients(1)
    wait_until(lambda: c.control_json("tcpstatus")["redis"] == "up", 5, what="c's link")
    lagging.hold()
    b.control("room1=one\n")
    last_id = collect(first, 1, 5)[-1][0]
    began = time.monotonic()
    moved = stream(c, last_event_id=str(last_id))
    reset = moved.read_chunk(cluster_module.AHEAD_WAIT + 3)
    assert time.monotonic() - began >= cluster_module.AHEAD_WAIT - 0.2
    assert reset.startswith(b"event: reset\n") and b'"reason":"unknown-id"' in reset
    lagging.release()


def test_redis_killed_for_five_seconds_during_ten_thousand_publishes(cluster, redis):
    nodes = [cluster(), cluster(), cluster()]
    clients = [stream(node) for node in nodes]
    for node in nodes:
        node.wait_clients(1)
    total = 10_000
    publisher = socket.create_connection(("127.0.0.1", nodes[0].cport), timeout=60)
    replies = bytearray()

    def send(lo, hi):
        lines = "".join(json.dumps({"to": "room1", "data": f"m{i}", "ack": True}) + "\n" for i in range(lo, hi))
        publisher.sendall(lines.encode())

    for lo in range(0, 3000, 500):
        send(lo, lo + 500)
    redis.kill()
    wait_until(lambda: nodes[0].control_json("tcpstatus")["redis"] == "down", 5, what="the link to go down")
    outage_started = time.monotonic()
    for lo in range(3000, 6000, 500):
        send(lo, lo + 500)
    status = nodes[1].control_json("tcpstatus")
    assert status["redis"] == "down" and status["sseconncli"] == 1  # streams stay open
    time.sleep(max(0.0, 5 - (time.monotonic() - outage_started)))
    redis.start()
    for lo in range(6000, total, 500):
        send(lo, lo + 500)
    publisher.shutdown(socket.SHUT_WR)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        data = publisher.recv(1 << 20)
        if not data:
            break
        replies += data
    publisher.close()
    acks = [json.loads(line) for line in replies.decode().splitlines()]
    assert len(acks) == total and all(a["ok"] and a["stored"] for a in acks)
    expected = [f"m{i}" for i in range(total)]
    for node, client in zip(nodes, clients):
        try:
            events = collect(client, total, 60)
        except (AssertionError, TimeoutError) as exc:
            raise AssertionError(f"{exc}: {node.control_json('tcpstatus')}\n{node.log()[-3000:]}") from None
        assert [d for _, d in events] == expected  # every one, in order, once
        assert [i for i, _ in events] == [int(a["id"]) for a in acks]
        assert b"event: reset" not in client.buf
    status = nodes[0].control_json("tcpstatus")
    assert status["redis"] == "up" and status["spooled"] == 0
    assert "link down" in nodes[0].log() and "link up" in nodes[0].log()


def test_redis_flushed_clients_get_reset(cluster, redis):
    a, b = cluster(), cluster()
    live = stream(a)
    a.wait_clients(1)
    a.control("room1=before\n")
    [(old_id, _)] = collect(live, 1, 5)
    epoch = a.control_json("tcpstatus")["epoch"]
    assert redis.command("FLUSHALL") == b"OK"
    wait_until(lambda: b"event: reset" in live.sock.recv(65536), 5, what="a reset on the live stream")
    for node in (a, b):  # each node looks at the epoch every second
        wait_until(lambda: node.control_json("tcpstatus")["epoch"] != epoch, 5, what="a new epoch")
    assert int(a.control_json("tcpstatus")["epoch"]) > int(epoch)
    back = stream(b, last_event_id=old_id)  # an id from before the loss
    b.control("room1=after\n")
    payload = back.read_chunk()
    assert b"event: reset" in payload
    assert [d for _, d in collect(back, 1, 5)] == ["after"]


def _events_until(client, last: bytes, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    data = bytes(client.buf)
    while b"data: " + last + b"\n" not in data:
        client.sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = client.sock.recv(1 << 20)
        assert chunk, "stream closed"
        data += chunk
    return data


def test_after_redis_lost_its_data_every_node_gives_an_entry_the_same_id(cluster, redis):
    """Each node noticed the new epoch at its own point in the stream, so
    the entries between had old-epoch ids on one node and new-epoch ids on
    the other, and a resume across the two skipped events without a reset."""
    import threading

    a, b = cluster(), cluster()
    on_a, on_b = stream(a, "fz"), stream(b, "fz")
    a.wait_clients(1)
    b.wait_clients(1)

    def publish():
        with socket.create_connection(("127.0.0.1", b.cport), timeout=10) as s:
            for i in range(300):
                s.sendall(f"fz=g{i}\n".encode())
                time.sleep(0.01)

    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    time.sleep(1.0)
    assert redis.command("FLUSHALL") == b"OK"
    publisher.join(20)
    pattern = re.compile(rb"id: (\d+)\ndata: (g\d+)\n")
    seen_a = {d: i for i, d in pattern.findall(_events_until(on_a, b"g299", 15))}
    seen_b = {d: i for i, d in pattern.findall(_events_until(on_b, b"g299", 15))}
    both = seen_a.keys() & seen_b.keys()
    assert len(both) > 250
    assert {d: (seen_a[d], seen_b[d]) for d in both if seen_a[d] != seen_b[d]} == {}
    # Resume on a after an id b gave just after the loss: the rest, exactly.
    order = sorted(seen_b, key=lambda d: int(seen_b[d]))
    epoch_of = lambda d: int(seen_b[d]) // cluster_module.EPOCH_SCALE  # noqa: E731
    after_loss = [d for d in order if epoch_of(d) > epoch_of(order[0])]
    assert after_loss, "no event of the new epoch"
    start = order.index(after_loss[5])
    resumed = stream(a, "fz", last_event_id=seen_b[order[start]].decode())
    data = _events_until(resumed, b"g299", 10)
    assert b"event: reset" not in data
    assert [d for _, d in pattern.findall(data)] == order[start + 1:]


def test_one_node_killed_the_others_carry_on(cluster):
    a, b, c = cluster(), cluster(), cluster()
    ca, cc = stream(a), stream(c)
    held = stream(b)  # noqa: F841 (kept open)
    for node in (a, b, c):
        node.wait_clients(1)
    wait_until(lambda: a.control_json("tcpstatus")["clusterstreams"] == 3, 5, what="three streams in the cluster")
    b.proc.kill()
    b.proc.wait(5)
    a.control("room1=still-here\n")
    assert [d for _, d in collect(ca, 1, 5)] == ["still-here"]
    assert [d for _, d in collect(cc, 1, 5)] == ["still-here"]
    wait_until(lambda: len(a.control_json("tcpstatus")["clusternodes"]) == 2, 10, what="the dead node to expire")
    assert a.control_json("tcpnumberofclients") == {"numberofclients": 1, "clusternumberofclients": 2}


def test_spool_bound_refuses_tcp_and_drops_fifo_while_redis_is_away(cluster, redis):
    a = cluster("--redis-spool=3", fifo=True)
    client = stream(a)
    a.wait_clients(1)
    redis.kill()
    wait_until(lambda: a.control_json("tcpstatus")["redis"] == "down", 5, what="the link to go down")
    replies = a.control("room1=s1\nroom1=s2\nroom1=s3\nroom1=s4\n").decode().splitlines()
    assert len(replies) == 1 and json.loads(replies[0])["ok"] is False and "spool" in replies[0]
    a.publish_fifo("room1=lost\n")
    a.wait_log(r"fifo: Redis unreachable .* dropped")
    status = a.control_json("tcpstatus")
    assert status["spooled"] == 3 and status["publishesrefused"] == 2
    metrics = a.control("tcpmetrics\n").decode()
    assert "pyhasses_redis_up 0" in metrics and "pyhasses_redis_spooled 3" in metrics
    a.control("status\n")
    a.wait_log(r"Redis link: down, node .*\n.*Redis spool: 3 waiting; .* refused 2, dropped 1")
    redis.start()
    assert [d for _, d in collect(client, 3, 15)] == ["s1", "s2", "s3"]


def test_bad_url_and_refused_login_stop_the_start(tmp_path):
    port = free_port()
    bad = run_module("pyhasses", "-nodaemon", f"-p={port}", "-murl=/sse", f"-cp={free_port()}",
                     "--redis=http://127.0.0.1:6379")
    assert bad.returncode == 1 and "redis:// or unix://" in bad.stdout + bad.stderr
    # Before: taken for unix:///redis.sock, a socket the operator never named.
    relative = run_module("pyhasses", "-nodaemon", f"-p={port}", "-murl=/sse", f"-cp={free_port()}",
                          "--redis=unix://run/redis.sock")
    assert relative.returncode == 1 and "absolute path" in relative.stdout + relative.stderr
    locked = RedisServer(tmp_path, "--requirepass", "sesame", persistent=False)
    try:
        refused = run_module("pyhasses", "-nodaemon", f"-p={port}", "-murl=/sse", f"-cp={free_port()}",
                             f"--redis=redis://127.0.0.1:{locked.port}")
        assert refused.returncode == 1 and "refused the login" in refused.stdout + refused.stderr
        wrong = run_module("pyhasses", "-nodaemon", f"-p={port}", "-murl=/sse", f"-cp={free_port()}",
                           f"--redis=redis://:wrong@127.0.0.1:{locked.port}")
        assert wrong.returncode == 1 and "refused the login" in wrong.stdout + wrong.stderr
    finally:
        locked.stop()


def test_reuse_port_lets_two_nodes_share_the_sse_port(tmp_path, cluster):
    port = free_port()
    nodes = [cluster("--reuse-port", port=port) for _ in range(2)]
    clients = [stream(nodes[0]) for _ in range(24)]
    wait_until(lambda: sum(n.control_json("tcpstatus")["sseconncli"] for n in nodes) == 24, 5, what="24 streams")
    assert all(n.control_json("tcpstatus")["sseconncli"] > 0 for n in nodes)  # the kernel spread them
    nodes[1].control("room1=to-all\n")
    for client in clients:
        assert [d for _, d in collect(client, 1, 5)] == ["to-all"]


NGINX = "/usr/sbin/nginx"


@pytest.mark.skipif(not os.access(NGINX, os.X_OK), reason="nginx not installed (scripts/deps.d/delivery.sh)")
def test_readme_load_balancer_snippet_passes_nginx_check(tmp_path):
    from test_proxy_snippets import snippet

    block = snippet("upstream pyhasses_nodes")
    block = block.replace("listen 80;", f"listen 127.0.0.1:{free_port()};")
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"""
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log;
events {{}}
http {{
    access_log off;
    client_body_temp_path {tmp_path}/body;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
{block}
}}
""")
    check = subprocess.run([NGINX, "-t", "-c", str(conf), "-p", str(tmp_path)], capture_output=True, text=True,
                           timeout=30)
    assert check.returncode == 0, check.stderr


def test_template_unit_and_readme_node_config_fit_together(tmp_path):
    from pyhasses import cli
    from support import ROOT
    from test_proxy_snippets import snippet

    unit = (ROOT / "debian" / "pyhasses@.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert "-config=/etc/pyhasses/node@%i.conf" in exec_start and "--reuse-port" in exec_start
    node_conf = tmp_path / "node@1.conf"
    node_conf.write_text(snippet("-fifo=/run/pyhasses-1/fifo") + "\n")
    settings = cli.build_settings(cli.with_config_file(cli.parse_args([f"-config={node_conf}", "--reuse-port"])))
    assert settings.redis == "redis://127.0.0.1:6379/0" and settings.reuse_port and settings.control.port == 8091


def test_messages_trimmed_before_a_node_read_them_give_its_streams_a_reset(cluster, redis):
    import signal

    a, b = cluster("--history-count=1000"), cluster("--history-count=1000")
    client = stream(a)
    a.wait_clients(1)
    a.proc.send_signal(signal.SIGSTOP)  # a reads nothing while the stream is trimmed
    try:
        for lo in range(0, 4000, 500):
            b.control("".join(f"room1=m{i}\n" for i in range(lo, lo + 500)))
        # b's last XADDs may still be on their way when its control connection closes.
        wait_until(lambda: b"m3999" in repr(redis.command("XREVRANGE", "t:events", "+", "-", "COUNT", 1)).encode(),
                   10, what="the last message in Redis")
    finally:
        a.proc.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + 10
    data = b""
    while b"data: m3999\n" not in data:
        client.sock.settimeout(max(0.01, deadline - time.monotonic()))
        data += client.sock.recv(1 << 20)
    reset = re.search(rb"event: reset\ndata: (\{[^\n]*\})", data)
    assert reset, "no reset where messages were trimmed"
    info = json.loads(reset.group(1))
    assert info["reason"] == "dropped" and info["dropped"] > 0
    received = len(EVENT.findall(data))
    assert received + info["dropped"] == 4000  # what arrived and what the reset says is gone: all
    assert a.control_json("tcpstatus")["missedevents"] == info["dropped"]


def test_unix_socket_url(tmp_path):
    sock = tmp_path / "redis.sock"
    server = RedisServer(tmp_path, "--unixsocket", str(sock), "--unixsocketperm", "700", persistent=False)
    node = None
    try:
        node = Daemon(tmp_path, f"--redis=unix://{sock}?db=2")
        wait_until(lambda: node.control_json("tcpstatus")["redis"] == "up", 10, what="the link over the Unix socket")
        client = node.sse()
        node.wait_clients(1)
        node.control("room1=over-unix\n")
        assert [d for _, d in collect(client, 1, 5)] == ["over-unix"]
        assert server.command("EXISTS", "pyhasses:events", db=2) == 1  # the stream lives in db 2
        assert server.command("EXISTS", "pyhasses:events") == 0
    finally:
        if node is not None:
            node.stop()
        server.stop()


def test_a_node_started_before_redis_serves_and_spools_until_it_comes(tmp_path, redis):
    redis.kill()
    node = Daemon(tmp_path, f"--redis={redis.url}")
    try:
        client = node.sse()
        node.wait_clients(1)
        node.control("room1=early\n")
        status = node.control_json("tcpstatus")
        assert status["redis"] != "up" and status["spooled"] == 1
        assert "link down (cannot connect" in node.log()
        redis.start()
        assert [d for _, d in collect(client, 1, 15)] == ["early"]
        assert node.control_json("tcpstatus")["redis"] == "up"
    finally:
        node.stop()


def test_http_publishes_go_through_the_cluster_and_are_answered_in_order(cluster, tmp_path):
    """POST /publish on one node (issue 12 point 4) takes the cluster's path:
    stored in Redis, delivered on every node, and its acknowledgement, which
    comes once the node read the message back, leaves in request order even
    when the POSTs are pipelined on one kept connection."""
    from pyhasses import auth
    from test_signed_access import post_bytes, read_response

    key = tmp_path / "publisher.key"
    key.write_text(os.urandom(32).hex() + "\n")
    a, b = cluster(f"--publisher-key={key}"), cluster()
    here, there = stream(a), stream(b)
    a.wait_clients(1)
    b.wait_clients(1)
    tok = auth.mint(auth.load_key(str(key)), ttl=600, publish=["room1"])
    with socket.create_connection(("127.0.0.1", a.port), timeout=10) as sock:
        sock.sendall(b"".join(post_bytes(tok, f"to=room1&data=p{i}".encode()) for i in range(5)))
        acks, rest = [], b""
        for _ in range(5):
            head, body, rest = read_response(sock, rest)
            assert head.startswith("HTTP/1.1 200 OK\r\n"), head
            acks.append(json.loads(body))
    assert all(ack["ok"] and ack["stored"] for ack in acks)
    ids = [int(ack["id"]) for ack in acks]
    assert ids == sorted(set(ids))
    for client in (here, there):
        assert collect(client, 5, 10) == [(i, f"p{n}") for n, i in enumerate(ids)]


def _ack_waiting(node, line: str) -> socket.socket:
    """A writer that sends one publish asking for its acknowledgement and
    half-closes, as ``printf ... | nc`` does; its answer is read later."""
    writer = socket.create_connection(("127.0.0.1", node.cport), timeout=5)
    writer.sendall(line.encode())
    writer.shutdown(socket.SHUT_WR)
    return writer


def _answer(writer: socket.socket, timeout: float) -> dict:
    writer.settimeout(timeout)
    data = b""
    while not data.endswith(b"\n"):
        chunk = writer.recv(4096)  # a timeout here is the bug: a writer left waiting
        assert chunk, f"closed without an answer after {data!r}"
        data += chunk
    writer.close()
    return json.loads(data)


def _reader_stalled(node, lagging):
    """The node's reader asks Redis nothing more: it reads nothing new."""
    lagging.stall_requests(1)
    # The XREAD already in Redis ends within its BLOCK time; then none is left.
    def last_read_ended():
        age = node.control_json("tcpstatus")["lastreadage"]
        return age is not None and age > cluster_module.READ_BLOCK_MS / 1000 + 0.3

    wait_until(last_read_ended, 5, what="the node's last read to end")


def test_acknowledgement_of_a_message_redis_lost_before_the_read_back_is_answered(cluster, redis, lagging):
    a = cluster(url=lagging.url)
    live = stream(a)
    a.wait_clients(1)
    _reader_stalled(a, lagging)
    writer = _ack_waiting(a, '{"to": "room1", "data": "lost", "ack": true}\n')
    wait_until(lambda: redis.command("XLEN", "t:events") == 1, 5, what="the message in Redis")
    assert redis.command("FLUSHALL") == b"OK"
    answer = _answer(writer, 5)  # the epoch changes within a second; before the fix: no answer, ever
    assert answer["ok"] is False and answer["stored"] is True and "lost its data" in answer["error"]
    lagging.resume_requests()
    wait_until(lambda: b"event: reset" in live.sock.recv(65536), 5, what="the reset on the stream")
    assert json.loads(a.control('{"to": "room1", "data": "next", "ack": true}\n'))["ok"] is True


def test_acknowledgement_of_a_message_trimmed_before_the_read_back_is_answered(cluster, redis, lagging):
    a = cluster("--history-count=1000", url=lagging.url)
    b = cluster("--history-count=1000")
    _reader_stalled(a, lagging)
    writer = _ack_waiting(a, '{"to": "room1", "data": "trimmed", "ack": true}\n')
    wait_until(lambda: redis.command("XLEN", "t:events") == 1, 5, what="the message in Redis")
    for lo in range(0, 3000, 500):  # MAXLEN ~ 1000 takes a's entry away
        b.control("".join(f"room1=m{i}\n" for i in range(lo, lo + 500)))
    # The control connection closes once its parts are read; their XADDs may still be on the way.
    wait_until(lambda: b"trimmed" not in repr(redis.command("XRANGE", "t:events", "-", "+", "COUNT", 1)).encode(),
               5, what="a's entry trimmed away")
    lagging.resume_requests()
    answer = _answer(writer, 5)  # before the fix: no answer, ever
    assert answer["ok"] is False and answer["stored"] is True and "trimmed" in answer["error"]
    assert json.loads(a.control('{"to": "room1", "data": "next", "ack": true}\n'))["ok"] is True


def test_a_redis_that_stops_answering_is_left_and_the_node_reconnects(cluster, redis):
    import signal

    a = cluster()
    client = stream(a)
    a.wait_clients(1)
    redis.proc.send_signal(signal.SIGSTOP)  # connections stay open; nothing answers
    try:
        # Before the fix the link stayed "up" for ever, publishes waiting unseen.
        wait_until(lambda: a.control_json("tcpstatus")["redis"] != "up", cluster_module.LINK_SILENCE + 3,
                   what="the silent link to be given up")
        a.wait_log(r"link down \(no answer on the \w+ connection", 2)
        a.control("room1=while-silent\n")
        assert a.control_json("tcpstatus")["spooled"] >= 1
        client.expect_nothing(0.2)  # the stream is served (heartbeats aside, nothing yet)
    finally:
        redis.proc.send_signal(signal.SIGCONT)
    assert [d for _, d in collect(client, 1, 15)] == ["while-silent"]
    wait_until(lambda: a.control_json("tcpstatus")["redis"] == "up", 10, what="the link back")
    assert json.loads(a.control('{"to": "room1", "data": "after", "ack": true}\n'))["ok"] is True
    assert [d for _, d in collect(client, 1, 5)] == ["after"]
    client.expect_nothing(0.3)  # the message sent on the dead link too is stored once


def test_a_redis_that_accepts_and_never_answers_does_not_hold_the_node(tmp_path):
    silent = socket.create_server(("127.0.0.1", 0))
    accepted = []
    import threading

    def accept():
        while True:
            try:
                accepted.append(silent.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    node = Daemon(tmp_path, f"--redis=redis://127.0.0.1:{silent.getsockname()[1]}/0")  # ready once the login check gave up
    try:
        client = stream(node)
        node.wait_clients(1)
        node.wait_log(r"link down \(no answer on the \w+ connection", cluster_module.LINK_SILENCE + 3)
        wait_until(lambda: len(accepted) >= 5, 10, what="a new attempt")  # login check, two links, two more
        assert node.control_json("tcpstatus")["redis"] in ("down", "connecting")
        client.close()
    finally:
        node.stop()
        silent.close()
        for s in accepted:
            s.close()


def test_a_node_stopping_answers_every_acknowledgement_still_waiting(cluster, redis):
    a = cluster()
    redis.kill()
    wait_until(lambda: a.control_json("tcpstatus")["redis"] == "down", 5, what="the link to go down")
    writer = _ack_waiting(a, '{"to": "room1", "data": "spooled", "ack": true}\n')
    wait_until(lambda: a.control_json("tcpstatus")["spooled"] == 1, 5, what="the message in the spool")
    a.stop()
    answer = _answer(writer, 5)  # before the fix: the connection closed without a word
    assert answer["ok"] is False and answer["stored"] is False and "stopped" in answer["error"]


def _monitor(redis) -> socket.socket:
    """A connection that receives every command Redis runs (MONITOR)."""
    sock = socket.create_connection(("127.0.0.1", redis.port), timeout=5)
    sock.sendall(b"MONITOR\r\n")
    buf = b""
    while b"+OK\r\n" not in buf:
        buf += sock.recv(4096)
    return sock


def _commands_seen(sock: socket.socket, until: bytes, timeout: float = 5.0) -> list:
    """The commands MONITOR reported (their names, in order), read until a
    line holding ``until`` came."""
    deadline = time.monotonic() + timeout
    buf = b""
    while until not in buf:
        left = deadline - time.monotonic()
        assert left > 0, f"{until!r} not seen; MONITOR said {buf[-2000:]!r}"
        sock.settimeout(left)
        data = sock.recv(1 << 16)
        assert data, "MONITOR connection closed"
        buf += data
    return re.findall(rb'\] "([A-Za-z]+)"', buf)


def test_the_messages_of_one_control_write_go_to_redis_as_one_transaction(cluster, redis):
    """Redis serves blocked XREADs after a whole EXEC: every node reads the
    burst in one reply and fans it out once, not the first message alone
    and the rest after it."""
    a, b = cluster(), cluster()
    client = stream(b)
    b.wait_clients(1)
    monitor = _monitor(redis)
    try:
        a.control("".join(f"room1=burst{i}\n" for i in range(20)) + "room1=last-of-burst\n")
        seen = _commands_seen(monitor, b'"EXEC"')
    finally:
        monitor.close()
    # MONITOR shows a transaction's commands as EXEC runs them, EXEC last
    assert b"MULTI" in seen, seen
    burst = seen[seen.index(b"MULTI") + 1:seen.index(b"EXEC")]
    assert burst.count(b"EVALSHA") == 21 and b"XREAD" not in burst, seen
    events = collect(client, 21, 10)
    assert [d for _, d in events] == [f"burst{i}" for i in range(20)] + ["last-of-burst"]


def test_a_script_flushed_from_redis_under_a_burst_is_loaded_again_and_nothing_is_lost(cluster, redis):
    a, b = cluster(), cluster()
    client = stream(b)
    b.wait_clients(1)
    redis.command("SCRIPT", "FLUSH")
    lines = "".join(f'{{"to": "room1", "data": "after-flush-{i}", "ack": true}}\n' for i in range(10))
    replies = [json.loads(line) for line in a.control(lines, timeout=20).decode().splitlines()]
    assert len(replies) == 10 and all(r["ok"] and r["stored"] for r in replies), replies
    events = collect(client, 10, 20)
    assert [d for _, d in events] == [f"after-flush-{i}" for i in range(10)]
    a.wait_log(r"SCRIPT FLUSH")
    client.expect_nothing(0.5)  # each once
