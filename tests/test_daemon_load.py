"""Slow readers, many connections and descriptor exhaustion, on the real
daemon (issue 2 points 2 and 4)."""

import resource
import select
import socket
import subprocess
import sys
import time

from support import Daemon, pyhasses_env, wait_until


def stalled_client(daemon, token):
    """A subscriber that never reads, with a tiny receive window."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", daemon.port))
    s.sendall(f"GET /sse?subscribe={token} HTTP/1.1\r\nConnection: keep-alive\r\n\r\n".encode())
    return s


def test_stalled_client_closed_at_limit_others_keep_receiving(daemon_factory):
    d = daemon_factory("--max-queue-bytes", "256K")
    stalled = stalled_client(d, "t")
    fast = d.sse("t")
    d.wait_clients(2)
    payload = "p" * 8000
    n = 1000  # 8 MB: past what the kernel buffers on loopback plus the queue limit
    received = []
    with socket.create_connection(("127.0.0.1", d.cport)) as ctl:
        for i in range(n):
            ctl.sendall(f"t={i}:{payload}\n".encode())
            if i % 20 == 19:  # the fast client keeps up as the publisher goes on
                received += [fast.read_event()["data"] for _ in range(20)]
    assert [r.split(":")[0] for r in received] == [str(i) for i in range(n)]
    d.wait_log(r"too slow: \d+ bytes queued, limit 262144")
    d.wait_clients(1)
    stalled.close()


def test_slow_reader_below_limit_keeps_stream_and_order(daemon_factory):
    # Loopback's kernel buffers take a few MB for an unread stream: only
    # more than that makes the daemon hold some in the client's queue.
    daemon = daemon_factory("--max-queue-bytes", "32M")
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", daemon.port))
    slow.sendall(b"GET /sse?subscribe=s HTTP/1.1\r\nConnection: keep-alive\r\n\r\n")
    daemon.wait_clients(1)
    n = 6000
    daemon.control("".join(f"s={i}:{'z' * 1000}\n" for i in range(n)))
    # The reader is slow for real: the daemon holds part of it in its queue.
    wait_until(lambda: daemon.control_json("tcpstatus")["queuedbytes"] > 0, what="bytes queued for the reader")
    slow.settimeout(10)
    data = bytearray()
    events = 0
    while events < n:
        chunk = slow.recv(65536)
        assert chunk, "stream closed"
        start = max(0, len(data) - 6)  # a marker may straddle two reads, and is 7 bytes long
        data += chunk
        events += data.count(b"\ndata: ", start)
    got = [line.split(":")[0] for line in data.decode().split("\ndata: ")[1:]]
    assert got == [str(i) for i in range(n)]
    slow.close()


def test_five_thousand_connections_open_and_close(daemon):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 6000:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 12000), hard))
    socks = []
    try:
        for i in range(5000):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", daemon.port))
            socks.append(s)
        for i, s in enumerate(socks):
            s.setblocking(True)
            s.settimeout(5)
            if i % 2 == 0:
                s.sendall(f"GET /sse?subscribe=t{i} HTTP/1.1\r\nConnection: keep-alive\r\n\r\n".encode())
        daemon.wait_clients(2500, timeout=60)
        assert daemon.control_json("tcpnumberofclients") == {"numberofclients": 5000}
    finally:
        for s in socks:
            s.close()
    wait_until(lambda: daemon.control_json("tcpnumberofclients") == {"numberofclients": 0}, 60,
               what="every connection closed")
    assert daemon.control_json("tcpstatus")["maxconncli"] == 5000


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / __import__("os").sysconf("SC_CLK_TCK")


def test_out_of_descriptors_turns_clients_away_without_spinning(tmp_path):
    """Clients that send nothing are turned away on the reserve descriptor
    too (503, close), and then the loop is idle, not spinning on a
    listener it cannot serve."""
    d = Daemon(tmp_path, start=False)

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))

    d._logf = open(d.logpath, "ab")
    d.proc = subprocess.Popen([sys.executable, "-m", "pyhasses", *d.args], stdout=d._logf,
                              stderr=subprocess.STDOUT, env=pyhasses_env(), preexec_fn=low_limit)
    socks = []
    try:
        d.wait_ready()
        for _ in range(60):
            s = socket.socket()
            s.settimeout(2)
            s.connect(("127.0.0.1", d.port))  # the kernel's backlog accepts them
            socks.append(s)
        d.wait_log("out of descriptors")
        # Those beyond the limit are answered at once; those let in wait for
        # their request, as any client does.
        answered = {}

        def turned_away():
            for s in select.select([s for s in socks if s not in answered], [], [], 0.1)[0]:
                answered[s] = s.recv(4096)
            return sum(a.startswith(b"HTTP/1.1 503 ") for a in answered.values()) >= 60 - 40

        wait_until(turned_away, 10, what="the clients beyond the limit answered 503")
        before = cpu_seconds(d.pid)
        time.sleep(1.5)
        assert cpu_seconds(d.pid) - before < 0.5, "the loop spins while out of descriptors"
        for s in socks:
            s.close()
        socks = []
        c = d.sse("back")  # accepting resumed
        d.control("back=ok\n")
        assert c.read_event()["data"] == "ok"
    finally:
        for s in socks:
            s.close()
        d.stop()
