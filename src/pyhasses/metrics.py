"""The counters in the Prometheus text exposition format (version 0.0.4).

Owns: metric names, their help texts and types, and the text itself.  Must
not touch: sockets, the hub.  ``render`` takes the status dictionary the
service builds for ``tcpstatus`` (with its ``extra`` part) and returns the
text ``tcpmetrics`` replies and ``GET /metrics`` serves.
"""

from __future__ import annotations

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
    ("pyhasses_uptime_seconds", "gauge", "uptime", "Seconds since the daemon started."),
    # On a cluster (--redis) only:
    ("pyhasses_redis_up", "gauge", "redisup", "1 while the link to Redis is up."),
    ("pyhasses_redis_spooled", "gauge", "spooled", "Publishes waiting for Redis to come back."),
    ("pyhasses_redis_last_read_age_seconds", "gauge", "lastreadage", "Seconds since the stream was last read."),
    ("pyhasses_redis_stored_total", "counter", "publishesstored", "Publishes Redis confirmed."),
    ("pyhasses_redis_refused_total", "counter", "publishesrefused", "Publishes refused: Redis away, spool full."),
    ("pyhasses_cluster_streams", "gauge", "clusterstreams", "Established streams on every live node."),
)


def render(info: dict) -> str:
    """One ``# HELP``, one ``# TYPE`` and one sample per metric, then the
    version as an info metric."""
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
    return "\n".join(lines) + "\n"


def _number(value) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(round(value, 3))
    return str(int(value))
