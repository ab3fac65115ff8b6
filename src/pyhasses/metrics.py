"""The counters in the Prometheus text exposition format (version 0.0.4),
the process figures, and what the metrics port answers.

Owns: metric names, their help texts and types, and the text itself; the
process figures Prometheus users expect (``process_*``, read from /proc);
the routing of a request on the metrics port (``answer``: a parsed request
in, the bytes of the reply out).  Must not touch: sockets, the hub.
``render`` takes the status dictionary the service builds for ``tcpstatus``
(with its ``extra`` part) and returns the text ``tcpmetrics`` replies and
``GET /metrics`` serves.
"""

from __future__ import annotations

import json
import os
import resource
from typing import Callable, Optional, Tuple

from . import http

#: (metric name, type, key in the status info, help text)
METRICS = (
    ("pyhasses_connections", "gauge", "allconncli", "Open connections on the SSE port, streams or not."),
    ("pyhasses_streams", "gauge", "sseconncli", "Established event streams."),
    ("pyhasses_connections_max", "gauge", "maxconncli", "Highest number of open SSE connections seen."),
    ("pyhasses_handshakes_total", "counter", "handshakes", "Streams established since start."),
    ("pyhasses_reinits_total", "counter", "reinits", "Streams re-initialised since start."),
    ("pyhasses_messages_total", "counter", "msgproccnt", "Messages published."),
    ("pyhasses_deliveries_total", "counter", "msgsendcnt", "Messages queued to streams, one per recipient."),
    ("pyhasses_queued_bytes", "gauge", "queuedbytes", "Bytes queued for clients and not yet sent."),
    ("pyhasses_history_events", "gauge", "historysize", "Events held for resuming clients."),
    ("pyhasses_history_bytes", "gauge", "historybytes", "Bytes held for resuming clients."),
    ("pyhasses_replayed_total", "counter", "replayed", "Held events sent again to resuming clients."),
    ("pyhasses_resets_total", "counter", "resets", "Reset events sent."),
    ("pyhasses_slow_clients_closed_total", "counter", "droppedclients",
     "Clients closed because their write queue was full."),
    ("pyhasses_dropped_events_total", "counter", "droppedevents",
     "Events dropped from full write queues (drop policy)."),
    ("pyhasses_refused_total", "counter", "refused", "Connections answered 503 above the connection cap."),
    ("pyhasses_control_cross_protocol_total", "counter", "crossprotocol",
     "Control connections closed for speaking HTTP or TLS, nothing run."),
    ("pyhasses_control_auth_failed_total", "counter", "authfailed",
     "Control connections closed without the control secret, nothing run."),
    ("pyhasses_control_refused_total", "counter", "controlrefused",
     "Control connections closed above --max-control-clients."),
    ("pyhasses_control_idle_closed_total", "counter", "controlidle", "Control connections closed for silence."),
    ("pyhasses_kicked_total", "counter", "kicked", "Streams closed by kick commands."),
    ("pyhasses_streams_denied_total", "counter", "streamdenied",
     "Stream requests answered 401 or 403 by the token check."),
    ("pyhasses_http_publishes_denied_total", "counter", "publishdenied",
     "HTTP publishes refused (401, 403, 400 or 413)."),
    ("pyhasses_uptime_seconds", "gauge", "uptime", "Seconds since the daemon started."),
    # On a cluster (--redis) only:
    ("pyhasses_redis_up", "gauge", "redisup", "1 while the link to Redis is up."),
    ("pyhasses_redis_spooled", "gauge", "spooled", "Publishes waiting for Redis to come back."),
    ("pyhasses_redis_last_read_age_seconds", "gauge", "lastreadage", "Seconds since the stream was last read."),
    ("pyhasses_redis_stored_total", "counter", "publishesstored", "Publishes Redis confirmed."),
    ("pyhasses_redis_refused_total", "counter", "publishesrefused", "Publishes refused: Redis away, spool full."),
    ("pyhasses_cluster_streams", "gauge", "clusterstreams", "Established streams on every live node."),
)


#: The client libraries' standard process metrics (name, type, help text).
PROCESS_METRICS = (
    ("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds."),
    ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes."),
    ("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes."),
    ("process_open_fds", "gauge", "Number of open file descriptors."),
    ("process_max_fds", "gauge", "Maximum number of open file descriptors."),
    ("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds."),
)


def process_figures() -> dict:
    """This process's figures, by metric name; those /proc cannot give are left out."""
    times = os.times()
    figures = {"process_cpu_seconds_total": times.user + times.system,
               "process_max_fds": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}
    try:
        figures["process_open_fds"] = len(os.listdir("/proc/self/fd"))
        with open("/proc/self/statm") as f:
            size, resident = (int(v) for v in f.read().split()[:2])
        page = os.sysconf("SC_PAGE_SIZE")
        figures["process_virtual_memory_bytes"] = size * page
        figures["process_resident_memory_bytes"] = resident * page
        figures["process_start_time_seconds"] = _start_time()
    except (OSError, ValueError, IndexError):
        pass
    return figures


def _start_time() -> float:
    """Boot time plus the process's start in clock ticks (field 22 of
    /proc/self/stat, counted after the command name, which may hold spaces)."""
    with open("/proc/self/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    with open("/proc/stat") as f:
        boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def render(info: dict, process: Optional[dict] = None) -> str:
    """One ``# HELP``, one ``# TYPE`` and one sample per metric, then the
    version as an info metric, then the process figures (if given)."""
    values = dict(info)
    values.update(info.get("extra", {}))
    lines = []
    for name, kind, key, text in METRICS:
        if values.get(key) is None:
            continue
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {_number(values[key])}"]
    version = str(values.get("version", "")).replace("\\", "\\\\").replace('"', '\\"')
    lines += ["# HELP pyhasses_info The running version.", "# TYPE pyhasses_info gauge",
              f'pyhasses_info{{version="{version}"}} 1']
    for name, kind, text in PROCESS_METRICS:
        if process and name in process:
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {_number(process[name])}"]
    return "\n".join(lines) + "\n"


# -- the metrics port ---------------------------------------------------------------
METRICS_PATH = b"/metrics"
HEALTH_PATH = b"/healthz"


def answer(request, render_text: Callable[[], str], health: Callable[[], Tuple[bool, dict]],
           cors: bytes) -> Tuple[bytes, Optional[str]]:
    """The reply to one request on the metrics port, and a reason to log
    when it is an error.  ``request`` is what ``http.RequestReader`` gave:
    a head, or a ``BadHead``.  ``health()`` says whether the daemon takes
    streams (False while draining) and what to report."""
    if isinstance(request, http.BadHead):
        return _refusal(request.status, request.reason, cors)
    if request.method not in (b"GET", b"HEAD"):
        return _refusal(501, f"method {request.method[:40]!r} not implemented", cors)
    head_only = request.method == b"HEAD"
    path = http.origin_form(request.target).partition(b"?")[0]
    if path == METRICS_PATH:
        return http.metrics_answer(render_text().encode(), head_only=head_only), None
    if path == HEALTH_PATH:
        serving, report = health()
        body = (json.dumps(report, separators=(",", ":")) + "\n").encode()
        return http.metrics_answer(body, status=200 if serving else 503, content_type=b"application/json",
                                   head_only=head_only), None
    return _refusal(404, f"unknown URL {request.target[:200]!r}", cors)


def _refusal(status: int, reason: str, cors: bytes) -> Tuple[bytes, str]:
    return http.error(status, cors), f"{reason}; answered {status}"


def _number(value) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(round(value, 3))
    return str(int(value))
