"""The metrics port: /healthz, HEAD, the process figures, and the start-up
log naming every address; the routing itself with bytes only."""

import json
import os
import re
import resource
import signal
import time

from pyhasses import http, metrics
from support import free_port, raw_exchange, run_module, wait_until


def parse_prometheus(text):
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def request(data: bytes):
    return http.RequestReader(32 * 1024).feed(data)


def route(data: bytes, serving=True):
    return metrics.answer(request(data), lambda: "pyhasses_streams 1\n",
                          lambda: (serving, {"status": "ok" if serving else "draining"}), b"*")


# -- routing, bytes only ---------------------------------------------------------


def test_health_is_200_while_serving_and_503_while_draining():
    answer, reason = route(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and reason is None
    assert b"Content-Type: application/json\r\n" in answer
    assert json.loads(answer.partition(b"\r\n\r\n")[2]) == {"status": "ok"}
    answer, _ = route(b"GET /healthz HTTP/1.1\r\n\r\n", serving=False)
    assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert json.loads(answer.partition(b"\r\n\r\n")[2]) == {"status": "draining"}


def test_head_gets_the_head_without_the_body():
    full, _ = route(b"GET /metrics HTTP/1.1\r\n\r\n")
    head_only, reason = route(b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert reason is None
    assert head_only == full.partition(b"\r\n\r\n")[0] + b"\r\n\r\n"
    assert b"Content-Length: %d\r\n" % len(b"pyhasses_streams 1\n") in head_only


def test_other_paths_and_methods_are_refused_with_a_reason():
    answer, reason = route(b"GET /nope HTTP/1.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 404") and reason == "unknown URL b'/nope'; answered 404"
    answer, reason = route(b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 501") and "answered 501" in reason


def test_process_figures_are_this_process():
    figures = metrics.process_figures()
    assert figures["process_max_fds"] == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert abs(figures["process_open_fds"] - len(os.listdir("/proc/self/fd"))) <= 1
    rss_kb = int(re.search(r"VmRSS:\s+(\d+) kB", open("/proc/self/status").read()).group(1))
    assert abs(figures["process_resident_memory_bytes"] - rss_kb * 1024) < 8 * 1024 * 1024
    started = os.stat(f"/proc/{os.getpid()}").st_mtime  # close to the process's start
    assert figures["process_start_time_seconds"] <= time.time()
    assert abs(figures["process_start_time_seconds"] - started) < 600
    assert figures["process_cpu_seconds_total"] > 0


# -- the running daemon ------------------------------------------------------------


def test_daemon_serves_health_head_and_process_figures(daemon_factory):
    mport = free_port()
    d = daemon_factory("--metrics-port", str(mport), fifo=True)
    d.wait_log(rf"Listening: SSE on \S+:{d.port}; control on 127\.0\.0\.1:{d.cport}, \[::1\]:{d.cport}; "
               rf"metrics on 127\.0\.0\.1:{mport}, \[::1\]:{mport}; FIFO {re.escape(d.fifo)}")
    c = d.sse("room1")
    answer = raw_exchange("127.0.0.1", mport, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    health = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert health["status"] == "ok" and health["pid"] == d.pid and health["streams"] == 1

    head = raw_exchange("::1", mport, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")
    assert int(re.search(rb"Content-Length: (\d+)", head).group(1)) > 0

    body = raw_exchange("127.0.0.1", mport, b"GET /metrics HTTP/1.1\r\n\r\n").partition(b"\r\n\r\n")[2]
    values = parse_prometheus(body.decode())
    fds = len(os.listdir(f"/proc/{d.pid}/fd"))
    assert abs(values["process_open_fds"] - fds) <= 2
    limit = int(re.search(r"Max open files\s+(\d+)", open(f"/proc/{d.pid}/limits").read()).group(1))
    assert values["process_max_fds"] == limit
    rss_kb = int(re.search(r"VmRSS:\s+(\d+) kB", open(f"/proc/{d.pid}/status").read()).group(1))
    assert abs(values["process_resident_memory_bytes"] - rss_kb * 1024) < 8 * 1024 * 1024
    assert time.time() - 120 < values["process_start_time_seconds"] <= time.time()
    assert values["process_cpu_seconds_total"] > 0
    assert "# TYPE process_cpu_seconds_total counter" in body.decode()
    c.close()


def test_health_says_draining_with_503(daemon_factory):
    mport = free_port()
    d = daemon_factory("--metrics-port", str(mport), "--drain", "20")
    c = d.sse("room1")
    d.signal(signal.SIGTERM)
    d.wait_log(r"Draining 1 stream")

    def draining():
        answer = raw_exchange("127.0.0.1", mport, b"GET /healthz HTTP/1.1\r\n\r\n")
        return answer.startswith(b"HTTP/1.1 503 ") and answer
    answer = wait_until(draining, 5, what="503 from /healthz")
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["status"] == "draining"
    c.close()
    d.signal(signal.SIGTERM)  # a second one ends the drain at once


def test_ctl_metrics_prints_the_process_figures(daemon):
    r = run_module("pyhasses.ctl", "--port", str(daemon.cport), "metrics")
    assert r.returncode == 0, r.stderr
    values = parse_prometheus(r.stdout)
    assert values["process_open_fds"] > 0 and values["process_resident_memory_bytes"] > 0
    assert "pyhasses_streams" in values
