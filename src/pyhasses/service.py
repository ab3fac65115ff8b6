"""Start-up and shutdown: the order things are opened, dropped and closed.

Owns: bind every port, open the FIFO and the log, (daemonise), drop
privileges, write the pid file, build the reactor and its handlers, run,
and on SIGINT/SIGTERM end every stream and remove the pid file.  Must not
touch: protocol rules.

The order is python-daemon's (STYLE.md): everything that needs privileges
is opened before the user changes, and the epoll object is built only
after detaching, because a forked child must not share its parent's epoll.
"""

from __future__ import annotations

import dataclasses
import errno
import gc
import grp
import os
import signal
import socket
import stat
import sys
import time
from typing import List, Optional

from . import __version__, auth, delivery, fifo, http, metrics, tls
from .connections import MetricsClient, Refused, Wiring
from .listeners import DescriptorReserve, Listener, describe_peer
from .control import AccessCounters, ControlHandler
from .control_channels import ControlClient, ControlTurns, FifoReader, peer_credentials
from .daemonize import detach, drop_privileges
from .errors import ErrorReport, StartError
from .flushqueue import FlushQueue
from .history import History
from .hub import Hub, subscriptions
from .logs import Log, ReopenFailed, client_list_block, duration
from .reactor import Reactor, raise_nofile_limit
from .session import StreamRules
from .settings import Endpoint, Settings
from .sse import EventIds
from .streams import SseClient, TlsSseClient

EXIT_OK = 0
EXIT_FAILURE = 1
#: Held back from the start of ``run`` until the reactor handles them: a stop
#: asked for while the daemon starts is a clean stop, not a traceback.
HANDLED_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
#: Seconds between two looks at whether the FIFO is still at its path.
FIFO_CHECK_EVERY = 2.0


@dataclasses.dataclass(frozen=True)
class AccessSetup:
    """What the access options name, read at start (before the user
    changes: the files may be readable by root alone)."""

    subscriber_key: Optional[auth.Key] = None
    publisher_key: Optional[auth.Key] = None
    control_secret: Optional[bytes] = None


def read_access(settings: Settings) -> AccessSetup:
    try:
        sub = auth.load_key(settings.subscriber_key) if settings.subscriber_key else None
        pub = auth.load_key(settings.publisher_key) if settings.publisher_key else None
    except auth.KeyFileError as exc:
        raise StartError(str(exc)) from None
    secret = None
    if settings.control_secret_file:
        secret = read_secret(settings.control_secret_file, settings.separator)
    return AccessSetup(sub, pub, secret)


def read_secret(path: str, separator: str = ";") -> bytes:
    """The file's content, its trailing line end stripped; one part: not
    empty, no line end, no delimiter."""
    try:
        with open(path, "rb") as f:
            secret = f.read()
    except OSError as exc:
        raise StartError(f"cannot read --control-secret-file {path}: {exc.strerror}") from None
    secret = secret[:-1] if secret.endswith(b"\n") else secret
    secret = secret[:-1] if secret.endswith(b"\r") else secret
    if not secret or b"\n" in secret or b"\r" in secret or separator.encode() in secret:
        raise StartError(f"--control-secret-file {path}: the secret must be one non-empty line "
                         f"without the delimiter {separator!r}")
    return secret


class TokenExpiry:
    """Streams that end when their token's exp passes, on one timer armed
    for the earliest (``auth.ExpiryWatch`` keeps them in order): no sweep
    over every stream each second, no timer per stream.  Deadlines are
    monotonic, so a step of the wall clock ends none early."""

    def __init__(self, reactor, fail):
        self.reactor = reactor
        self.fail = fail  # fail(client, exc): one stream's error closes that stream
        self.watch = auth.ExpiryWatch()
        self._timer = None
        self._armed_for: Optional[float] = None

    def add(self, client, deadline: float) -> None:
        self.watch.add(client, deadline)
        if self._armed_for is None or deadline < self._armed_for:
            self._arm(deadline)

    def discard(self, client) -> None:
        if len(self.watch):
            self.watch.discard(client)

    def _arm(self, deadline: float) -> None:
        self.reactor.cancel(self._timer)
        self._armed_for = deadline
        self._timer = self.reactor.call_later(max(0.0, deadline - time.monotonic()), self._due)

    def _due(self) -> None:
        self._timer = self._armed_for = None
        for client in self.watch.due(time.monotonic()):
            if client.closed or client.closing:
                continue
            try:
                client.lifetime_over()
            except Exception as exc:
                self.fail(client, exc)
        upcoming = self.watch.next_expiry()
        if upcoming is not None:
            self._arm(upcoming)

    def close(self) -> None:
        self.reactor.cancel(self._timer)
        self._timer = None


class Runtime:
    """What control commands change while running."""

    def __init__(self, settings: Settings):
        self.reinit = settings.reinit


class Daemon:
    """The running daemon: it builds every part and hands each connection
    the few it uses (``connections.Wiring``)."""

    def __init__(self, settings: Settings, log: Log, tls_setup: Optional[tls.TlsSetup] = None,
                 access: Optional["AccessSetup"] = None):
        self.settings = settings
        self.access_setup = access or AccessSetup()  # keys and the control secret, read at start
        self.access = AccessCounters()
        # What the SSE port asks about streams and HTTP publishes (PROTOCOL.md 9).
        self.policy = auth.AccessPolicy(self.access_setup.subscriber_key, self.access_setup.publisher_key,
                                        settings.auth_cookie, settings.publish_url)
        self.tls = tls_setup  # replaced on SIGHUP; streams keep the context they began with
        self.log = log
        self.report = ErrorReport(log.error)  # internal errors, with their tracebacks
        self.runtime = Runtime(settings)
        self.hub = Hub()
        self.ids = EventIds()
        self.cors = settings.cors_base.encode("latin-1", "replace")
        self.started = time.time()
        self.control_clients: set = set()
        self.listeners: List[Listener] = []      # every port's
        self.sse_listeners: List[Listener] = []  # the SSE port's (a drain closes them first)
        self.fifo: Optional[FifoReader] = None
        self._fifo_trouble: Optional[str] = None  # why the FIFO could not be made again, said once
        self.reactor: Optional[Reactor] = None
        self.flusher: Optional[FlushQueue] = None
        self.wiring: Optional[Wiring] = None         # listeners, refused and metrics clients
        self.stream_wiring: Optional[Wiring] = None  # browsers' streams
        self.control_wiring: Optional[Wiring] = None  # control port and FIFO
        self.expiry: Optional[TokenExpiry] = None    # streams ending at their token's exp
        self.history = History(settings.history_count, settings.history_bytes, settings.history_age)
        self.heartbeat: Optional[delivery.Heartbeat] = None
        self.replayer: Optional[delivery.Replayer] = None
        self._queued_figure: Optional[int] = None  # queued bytes, this pass
        self.draining: Optional[delivery.Drain] = None
        self.cluster = None  # cluster.Cluster under --redis
        self.control = ControlHandler(self.hub, self.ids, log, settings, self.runtime,
                                      self.status_info, self.client_list_lines, history=self.history,
                                      client_table=self.client_table, metrics_text=self.metrics_text,
                                      kick=self.kick)

    # -- reports ------------------------------------------------------------
    def status_info(self) -> dict:
        hub = self.hub
        user = self.settings.user
        info = {
            "version": __version__,
            "python": sys.version.split()[0],
            "pid": os.getpid(),
            "uid": os.getuid(),
            "user": user,
            "runningtime": duration(time.time() - self.started),
            "mode": "SSL encrypted (https)" if self.settings.ssl else "unencrypted (http)",
            "loglevel": self.log.level,
            "reinit": self.runtime.reinit,
            "cors": self.settings.cors_base,
            "allconncli": len(hub.clients),
            "sseconncli": len(hub.streams),
            "maxconncli": hub.counters.maxconncli,
            "handshakes": hub.counters.handshakes,
            "reinits": hub.counters.reinits,
            "msgproccnt": hub.counters.msgproccnt,
            "msgsendcnt": hub.counters.msgsendcnt,
        }
        info.setdefault("extra", {}).update(self.delivery_status())
        info["extra"].update(self.access.as_dict())
        if self.cluster is not None:
            cluster = self.cluster.status()
            info["extra"].update(cluster)
            info.setdefault("mode_details", []).extend(self.cluster.status_lines(cluster))
        self._add_tls_status(info)
        return info

    def delivery_status(self) -> dict:
        """tcpstatus' keys beyond hasses' (issue 5)."""
        counters = self.hub.counters
        self.history.expire()
        return {
            "historysize": len(self.history),
            "historybytes": self.history.bytes,
            "droppedclients": counters.slow_closed,
            "droppedevents": counters.dropped_events,
            "queuedbytes": self._queued_bytes(),
            "refused": counters.refused,
            "replayed": counters.replayed,
            "resets": counters.resets,
            "uptime": round(time.time() - self.started, 3),
        }

    def _queued_bytes(self) -> int:
        """Summed over every client at most once per loop pass: a burst of
        status commands (64 KB of ``tcpstatus`` lines) costs one sweep, not
        one per command (issue 15: 1.3 s with 2,000 streams)."""
        if self._queued_figure is None:
            self._queued_figure = sum(c.queued_bytes() for c in self.hub.clients)
            if self.reactor is not None:
                self.reactor.call_soon(self._forget_queued_figure)
        return self._queued_figure

    def _forget_queued_figure(self) -> None:
        self._queued_figure = None

    def client_table(self) -> list:
        """tcpclientlist: one row per open SSE connection, oldest first."""
        rows = []
        for c in self._clients_oldest_first():
            rows.append({
                "fd": c.fd,
                "peer": c.peer,
                "id": c.uniq_id,
                "subscriptions": subscriptions(c),
                "agent": c.agent,
                "state": c.state_name,
                "connected": round(c.connected_at, 3),
                "handshaked": round(c.handshaked_at, 3) if c.handshaked_at else None,
                "messages": c.messages,
                "queued": c.queued_bytes(),
                "dropped": c.dropped,
                "reinits": c.reinit_count,
                "tls": c.tls_info() or None,
            })
        return rows

    def metrics_text(self) -> str:
        return metrics.render(self.status_info(), metrics.process_figures())

    def health(self):
        """``/healthz``: answered by the loop itself, so an answer means it
        turns; a draining daemon takes no new streams (503)."""
        serving = self.draining is None
        return serving, {"status": "ok" if serving else "draining", "pid": os.getpid(),
                         "uptime": round(time.time() - self.started, 3), "streams": len(self.hub.streams)}

    def _add_tls_status(self, info: dict) -> None:
        """The certificate in use: lines for the status block, keys for tcpstatus."""
        if self.tls is None:
            return
        cert = self.tls.info
        info.setdefault("mode_details", []).extend(
            [f"Certificate: {cert.subject}", f"Certificate expires: {cert.expiry_text()}"])
        info.setdefault("extra", {}).update({"certsubject": cert.subject, "certexpires": cert.expiry_text()})

    def client_list_lines(self) -> list:
        return client_list_block(self._clients_oldest_first())

    def _clients_oldest_first(self) -> list:
        return sorted(self.hub.clients, key=lambda c: c.connected_at)

    # -- start-up -----------------------------------------------------------
    def open_ports(self, sse_socks, control_socks, metrics_socks) -> None:
        """Listen: the SSE, control and metrics ports' sockets, bound before."""
        # Out of descriptors, a client accepted on the reserve gets a 503 on
        # a plain HTTP port; TLS and control clients are closed without one.
        busy = None if self.tls is not None else self._busy_answer
        self.sse_listeners = [Listener(self.wiring, s, self._new_sse_client, f"SSE port {sock_name(s)}",
                                       busy_answer=busy) for s in sse_socks]
        self.listeners = self.sse_listeners + [
            Listener(self.wiring, s, self._new_control_client, f"control port {sock_name(s)}", priority_input=True)
            for s in control_socks
        ] + [Listener(self.wiring, s, self._new_metrics_client, f"metrics port {sock_name(s)}",
                      busy_answer=self._busy_answer) for s in metrics_socks]
        for listener in self.listeners:
            self.reactor.register(listener.fd, listener)

    def _busy_answer(self) -> bytes:
        return http.unavailable(delivery.retry_after(self.settings.retry))

    def _new_sse_client(self, sock, peer):
        cap = self.settings.max_clients
        if cap and len(self.hub.clients) >= cap:
            self.hub.counters.refused += 1
            if self.tls is not None:
                # A 503 would cost a TLS handshake first; shedding load must stay cheap.
                self.log.info(f"Refused {peer}: {cap} clients already connected (--max-clients); "
                              "closed before the TLS handshake")
                return Refused(self.wiring, sock, peer, b"")
            self.log.info(f"Refused {peer}: {cap} clients already connected (--max-clients); answered 503")
            return Refused(self.wiring, sock, peer, http.unavailable(delivery.retry_after(self.settings.retry)))
        if self.tls is not None:
            return TlsSseClient(self.stream_wiring, sock, peer, self.tls.context)
        return SseClient(self.stream_wiring, sock, peer)

    def _new_metrics_client(self, sock, peer):
        return MetricsClient(self.wiring, sock, peer, self.metrics_text)

    def resume(self, client, last_id: str) -> None:
        """A stream that came back with Last-Event-ID gets what it missed."""
        result = self.replayer.start(client, last_id)
        if self.log.debugging:
            self.log.debug(f"Client <{client.fd}> {client.peer} resumes after {last_id!r}: {result.kind}")

    def _new_control_client(self, sock, peer):
        if not self._control_slot(sock, peer, unix=False):
            return None
        return ControlClient(self.control_wiring, sock, peer, secret=self.access_setup.control_secret)

    def _new_unix_control_client(self, sock, peer):
        """The Unix socket needs no secret: its file mode says who may connect."""
        peer = peer_credentials(sock)
        if not self._control_slot(sock, peer, unix=True):
            return None
        return ControlClient(self.control_wiring, sock, peer, announce=True)

    def _control_slot(self, sock, peer, unix: bool) -> bool:
        """Below --max-control-clients, or refused with a close at once.

        The TCP port and the Unix socket each have their own slots: anyone
        on the host may connect to the port and hold every one of its slots,
        but never lock out the socket's publishers, whom its file mode lets
        in.  Under --control-secret-file a full port makes room by closing
        its oldest connection that has not sent the secret (a publisher
        sends it first, at once), so connections without the secret can
        never lock out those with it."""
        cap = self.settings.max_control_clients
        pool = [c for c in self.control_clients if c.on_unix_socket == unix and not c.closed]
        if len(pool) < cap:
            return True
        waiting = [c for c in pool if c.awaiting_secret]
        if waiting:
            oldest = min(waiting, key=lambda c: c.connected_at)
            self.access.controlrefused += 1
            self.log.info(f"Closed control connection {oldest.peer}: no secret yet, and {cap} open "
                          f"(--max-control-clients); room made for {peer}")
            oldest.close("made room: no secret yet", quiet=True)
            return True
        self.access.controlrefused += 1
        self.log.info(f"Refused control connection {peer}: {cap} already open (--max-control-clients)")
        sock.close()
        return False

    def kick(self, kind: str, value: str) -> int:
        """Close the streams opened with ``id=value`` (kind "id") or
        subscribed to the token ``value`` (kind "token")."""
        if kind == "id":
            found = [c for c in self.hub.streams if c.uniq_id == value]
        else:
            found = self.hub.holders(value)
        for client in found:
            self.log.info(f"Client <{client.fd}> {client.peer} kicked ({kind} {value[:80]!r})")
            client.end_stream()
        self.access.kicked += len(found)
        return len(found)

    def _end_idle_control(self) -> None:
        """One sweep for every control connection's idle timeout (a timer
        reset on every read would cost a busy publisher each time)."""
        timeout = self.settings.control_idle_timeout
        self.reactor.call_later(self._idle_sweep_interval(), self._end_idle_control)
        silent_since = time.monotonic() - timeout
        for conn in [c for c in self.control_clients if c.last_input <= silent_since and not c.closing]:
            self.access.controlidle += 1
            self.log.info(f"Closed communication connection {conn.peer}: silent for {timeout:g} s")
            conn.close("idle", quiet=True)

    def _idle_sweep_interval(self) -> float:
        return min(5.0, max(0.05, self.settings.control_idle_timeout / 10))

    def serve(self, sse_socks, control_socks, fifo_fd: Optional[int], metrics_socks=(), ready=None,
              unix_socks=()) -> None:
        """Build the reactor (after any fork) and run until a signal stops it;
        ``ready()`` is called once every descriptor is registered."""
        self.reactor = Reactor(on_error=self.report)
        self.flusher = FlushQueue(self.reactor)
        self.replayer = delivery.Replayer(self.reactor, self.history, self.hub, self.ids)
        self._wire()
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.reactor.add_signal_handler(sig, self._on_stop_signal)
        self.reactor.add_signal_handler(signal.SIGHUP, self._on_hangup)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
        self.open_ports(sse_socks, control_socks, metrics_socks)
        for sock in unix_socks:
            listener = Listener(self.wiring, sock, self._new_unix_control_client, f"control socket {self.settings.control_socket}",
                                priority_input=True)
            self.listeners.append(listener)
            self.reactor.register(listener.fd, listener)
        if self.settings.control_idle_timeout > 0:
            self.reactor.call_later(self._idle_sweep_interval(), self._end_idle_control)
        if fifo_fd is not None:
            self.fifo = FifoReader(self.control_wiring, fifo_fd, self.settings.fifo)
            self.reactor.call_later(FIFO_CHECK_EVERY, self._watch_fifo)
        if self.settings.redis:
            self._join_cluster()
        self.heartbeat = delivery.Heartbeat(self.reactor, self.hub, self.settings.heartbeat)
        self.heartbeat.start()
        self.reactor.call_later(self._lifetime_sweep_interval(), self._end_expired_streams)
        self.log.info(f"pyhasses {__version__} serving SSE on {self.settings.sse.describe()} at {self.settings.match_url}")
        self.log.info(f"Listening: {self._addresses(sse_socks, control_socks, metrics_socks)}")
        if ready is not None:
            ready()
        # What start-up made (modules, classes, settings) lives as long as
        # the process: out of the collector's sight, so that a full
        # collection among 10,000 streams walks the streams only.
        gc.freeze()
        self.reactor.run()
        self.shutdown()

    def _join_cluster(self) -> None:
        """Messages go through Redis from now on; ids come from its stream."""
        from . import cluster, resp

        self.cluster = cluster.Cluster(self, resp.parse_url(self.settings.redis))
        self.ids = self.control.ids = self.replayer.ids = self.cluster.ids
        self.control.cluster = self.cluster
        # An id another node gave out may be ahead of this node's reading.
        self.replayer.ahead_wait = cluster.AHEAD_WAIT
        self.replayer.ahead_check = self.cluster.check_ahead
        self.log.info(f"Cluster node {self.cluster.node_id} on Redis {self.cluster.address.describe()}, "
                      f"stream {self.cluster.stream_key}")
        self.cluster.start()

    def _wire(self) -> None:
        """What each kind of connection is given (after the reactor exists)."""
        common = dict(reactor=self.reactor, flusher=self.flusher, log=self.log, report=self.report,
                      settings=self.settings, hub=self.hub)
        self.wiring = Wiring(**common, cors=self.cors, health=self.health, reserve=DescriptorReserve())
        history = self.history
        rules = StreamRules(self.settings, self.runtime, self.cors, self.hub.counters, lambda: history.oldest,
                            policy=self.policy, access=self.access)
        self.expiry = TokenExpiry(self.reactor, self.reactor.fail)
        self.stream_wiring = Wiring(**common, rules=rules, resume=self.resume, publish=self.control.publish_acked,
                                    expiry=self.expiry)
        self.control_wiring = Wiring(**common, control=self.control, control_clients=self.control_clients,
                                     access=self.access, control_turns=ControlTurns(self.reactor))

    def _addresses(self, sse_socks, control_socks, metrics_socks) -> str:
        """Every address the daemon takes input on, for the start-up log."""
        parts = [f"{kind} on {', '.join(sock_name(s) for s in socks)}"
                 for kind, socks in (("SSE", sse_socks), ("control", control_socks), ("metrics", metrics_socks))
                 if socks]
        if self.fifo is not None:
            parts.append(f"FIFO {self.settings.fifo}")
        return "; ".join(parts)

    # -- stream lifetime ------------------------------------------------------
    def _watch_fifo(self) -> None:
        """A FIFO removed or replaced while running (a cleanup of /tmp, a
        hand-made mkfifo) is made and opened again: publishers writing to
        the path reached nobody, and the next ``echo ... >`` made a plain
        file of it.  What cannot be made again is said once."""
        self.reactor.call_later(FIFO_CHECK_EVERY, self._watch_fifo)
        reader = self.fifo
        if reader is None or fifo.is_still_at(reader.fd, reader.path):
            self._fifo_trouble = None
            return
        s = self.settings
        try:
            fd = fifo.open_fifo(reader.path, fifo.policy_for(s.fifo_mode, s.fifo_group, s.user))
        except fifo.FifoError as exc:
            if self._fifo_trouble != str(exc):
                self._fifo_trouble = str(exc)
                self.log.error(f"FIFO {reader.path} was removed or replaced and cannot be made again: {exc}; "
                               f"tried every {FIFO_CHECK_EVERY:g} s")
            return
        self._fifo_trouble = None
        reader.close()
        self.fifo = FifoReader(self.control_wiring, fd, reader.path)
        self.log.error(f"FIFO {reader.path} was removed or replaced; made again and opened")
        for line in fifo.describe(fd, reader.path):
            self.log.info(line)

    def _lifetime_sweep_interval(self) -> float:
        """A stream ends at most this late: 1/20 of its lifetime, 10 s at most."""
        return min(10.0, max(0.05, self.settings.stream_lifetime / 20))

    def _end_expired_streams(self) -> None:
        """One timer for every stream's lifetime (a timer each would cost
        every idle stream ~200 bytes); the sweep is a cheap pass over the
        established streams.  Monotonic: a step of the wall clock ends none."""
        self.reactor.call_later(self._lifetime_sweep_interval(), self._end_expired_streams)
        now = time.monotonic()
        for client in [c for c in self.hub.streams if c.session.expired(now)]:
            try:
                client.lifetime_over()
            except Exception as exc:
                self.reactor.fail(client, exc)

    # -- signals ------------------------------------------------------------
    def _on_stop_signal(self, signum: int) -> None:
        if self.draining is not None:
            self.log.out("Received INT/TERM signal again, exiting now")
            self.reactor.stop()
            return
        self.log.out("Received INT/TERM signal, Exiting...")
        if self.settings.drain <= 0 or not self.hub.clients:
            self.reactor.stop()
            return
        self.log.out(f"Draining {len(self.hub.streams)} stream(s) over {self.settings.drain:g} s")
        # No new streams (a restarted daemon can bind the port at once);
        # publishers may still reach the streams that remain.
        for listener in self.sse_listeners:
            listener.close()
            self.listeners.remove(listener)
        self.sse_listeners = []
        self.draining = delivery.Drain(self.reactor, self.hub.clients, self.settings.drain, self.reactor.stop)
        self.draining.start()

    def _on_hangup(self, signum: int) -> None:
        try:
            if self.log.reopen():
                self.log.info("SIGHUP: log file reopened")
        except ReopenFailed as exc:
            self.log.error(f"SIGHUP: log file not reopened: {exc}")
        if self.tls is not None:
            self._reload_certificate()

    def _reload_certificate(self) -> None:
        """New connections get the new pair; open ones keep their session.
        A pair that fails any start-up check is refused and the old one kept."""
        s = self.settings
        try:
            new = tls.prepare(s.cert_file, s.key_file, s.key_passphrase_file)
        except tls.CertificateError as exc:
            self.log.error(f"SIGHUP: certificate not reloaded, keeping the old one: {exc}")
            return
        self.tls = new
        self.log.out(f"SIGHUP: certificate reloaded: {new.info.subject}, expires {new.info.expiry_text()}")
        if new.warning:
            self.log.out(new.warning)

    def shutdown(self) -> None:
        """End every stream with the terminating chunk, then close all."""
        for listener in self.listeners:
            listener.close()
        if self.cluster is not None:  # first: it answers the publishers still waiting for an ack
            self.cluster.close()
        for client in list(self.hub.clients):
            client.last_words()
            client.close("daemon stopping", quiet=True)
        for conn in list(self.control_clients):
            if conn.queued_bytes():
                try:
                    conn.flush()  # one try for a last answer, as a stream's last words
                except OSError:
                    pass
            conn.close("daemon stopping", quiet=True)
        if self.fifo is not None:
            self.fifo.close()
        self.wiring.reserve.close()
        self.reactor.close()


def sock_name(sock: socket.socket) -> str:
    return describe_peer(sock.getsockname())


# -- opening what needs privileges ----------------------------------------------
def bind_endpoint(endpoint: Endpoint, reuse_port: bool = False) -> List[socket.socket]:
    """Listening sockets for an endpoint.  No host: one IPv6 socket that also
    takes IPv4 (dual-stack), or IPv4 alone where IPv6 is missing."""
    if not endpoint.hosts:
        try:
            return [_listen(socket.AF_INET6, "::", endpoint.port, v6only=False, reuse_port=reuse_port)]
        except OSError as exc:
            if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                raise
            return [_listen(socket.AF_INET, "0.0.0.0", endpoint.port, reuse_port=reuse_port)]
    socks = []
    try:
        for host in endpoint.hosts:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            try:
                socks.append(_listen(family, host, endpoint.port, v6only=True, reuse_port=reuse_port))
            except OSError as exc:
                # "localhost" on a host without IPv6: the IPv4 loopback will do.
                if host == "::1" and len(endpoint.hosts) > 1 and exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                    continue
                raise
    except Exception:
        for s in socks:
            s.close()
        raise
    return socks


def _listen(family: int, host: str, port: int, v6only: bool = True, reuse_port: bool = False) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            # Several nodes of one host share the port; the kernel spreads
            # new connections over them (--reuse-port).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # Accepted sockets inherit it (Linux), so it costs no system call
        # per connection: events leave at once, and acknowledgements are
        # not held back until the publisher's delayed ACK of the previous
        # one (40 ms, Nagle).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if v6only else 0)
        sock.bind((host, port))
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
    except Exception:
        sock.close()
        raise
    return sock


def bind_control_socket(path: str, group: Optional[str], user: Optional[str] = None) -> socket.socket:
    """The Unix control socket: mode 0660 from the moment it exists (the
    umask, so no chmod by path), owned by the run user under ``-user`` and
    in ``group`` (else the run user's group).  A stale socket left by a dead
    daemon is replaced; a live one or any other file is an error."""
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise StartError(f"--control-socket {path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody listens: stale
        else:
            raise StartError(f"--control-socket {path}: another daemon listens on it")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o117)
    try:
        sock.bind(path)
        _give_socket(path, group, user)
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise StartError(f"cannot listen on --control-socket {path}: {exc.strerror}") from None
    except StartError:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    return sock


def _give_socket(path: str, group: Optional[str], user: Optional[str]) -> None:
    """chown without following a link, and only what is still our socket: a
    user who can write the directory must not turn a root chown elsewhere."""
    uid = gid = -1
    if user:
        import pwd

        entry = pwd.getpwnam(user)
        uid, gid = entry.pw_uid, entry.pw_gid
    if group:
        gid = grp.getgrnam(group).gr_gid
    if uid == -1 and gid == -1:
        return
    if not stat.S_ISSOCK(os.lstat(path).st_mode):
        raise StartError(f"--control-socket {path} was replaced while starting")
    os.chown(path, uid, gid, follow_symlinks=False)


class PidFile:
    """The pid file: refuses a live owner, replaces a stale one, removed at exit."""

    def __init__(self, path: Optional[str]):
        self.path = path
        self.written = False

    def check(self) -> None:
        if not self.path:
            return
        try:
            with open(self.path) as f:
                pid = int(f.read().strip() or "0")
        except (OSError, ValueError):
            return  # missing, unreadable or garbage: stale
        if pid > 0 and pid != os.getpid() and _alive(pid):
            raise StartError(f"pid file {self.path} names a running process ({pid}); is pyhasses already running?")

    def write(self) -> None:
        if not self.path:
            return
        self.check()
        try:
            tmp = f"{self.path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                f.write(f"{os.getpid()}\n")
            os.replace(tmp, self.path)
        except OSError as exc:
            raise StartError(f"cannot write pid file {self.path}: {exc.strerror}") from None
        self.written = True

    def remove(self, log: Optional[Log] = None) -> None:
        if self.written:
            try:
                os.unlink(self.path)
            except OSError as exc:
                if log:
                    log.error(f"Warning: cannot delete pid file {self.path}: {exc.strerror}")
            self.written = False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, and someone else's
    return True


# -- the whole start ---------------------------------------------------------------
def run(settings: Settings) -> int:
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
    log = Log(settings.loglevel)
    if settings.nodaemon:
        log.to_stream(sys.stdout)
    else:
        try:
            log.to_file(settings.logfile)
        except OSError as exc:
            print(f"pyhasses: cannot open log file {settings.logfile}: {exc.strerror}", file=sys.stderr)
            return EXIT_FAILURE
    pidfile = PidFile(settings.pidfile)
    opened: list = []
    unix_socks: list = []
    try:
        pidfile.check()
        tls_setup = _prepare_tls(settings, log) if settings.ssl else None
        raise_nofile_limit()
        access = read_access(settings)
        if settings.control_socket:
            # First: once the TCP ports accept, the socket does too.
            unix_socks = [bind_control_socket(settings.control_socket, settings.control_socket_group, settings.user)]
            opened += unix_socks
        _check_redis(settings, log)
        sse_socks = _bind(settings.sse, "SSE port", settings.reuse_port)
        opened += sse_socks
        control_socks = _bind(settings.control, "control port") if settings.control else []
        opened += control_socks
        metrics_socks = _bind(settings.metrics, "metrics port") if settings.metrics else []
        opened += metrics_socks
        if settings.control:
            where = ", ".join(sock_name(s) for s in control_socks)
            if all(_is_loopback(s) for s in control_socks):
                log.info(f"Control port listens on {where} (loopback only)")
            else:
                if settings.control_secret_file:
                    log.info(f"Control port listens on {where} (the control secret is required)")
                else:
                    log.out(f"WARNING: control port listens on {where}: anyone who reaches it can publish")
        fifo_fd = _open_fifo(settings, log)
        if fifo_fd is not None:
            opened.append(fifo_fd)
    except StartError as exc:
        if unix_socks:
            _remove_socket(settings.control_socket, log)
        return _fail(log, str(exc), opened, foreground=settings.nodaemon)

    daemon_context = report = None
    if not settings.nodaemon:
        daemon_context, report = detach(opened + [log.stream_fileno()], settings.logfile)
    try:
        if settings.user:
            drop_privileges(settings.user)
        pidfile.write()
    except StartError as exc:
        return _fail(log, str(exc), opened, report, foreground=settings.nodaemon)

    daemon = Daemon(settings, log, tls_setup, access)
    log.info("=== daemon starting ===")
    log.info(f"Pid: {os.getpid()}")
    if unix_socks:
        log.info(f"Control socket {settings.control_socket} (mode 0660)")
    status = EXIT_OK
    try:
        daemon.serve(sse_socks, control_socks, fifo_fd, metrics_socks, ready=report.ready if report else None,
                     unix_socks=unix_socks)
    except Exception as exc:
        # The loop itself failed (a handler's error never gets here): say
        # why in the log, which in daemon mode is the only place anyone looks.
        daemon.report(f"Error: the event loop stopped on an internal error {exc!r}. Exiting...", exc)
        if report is not None:
            report.failed(f"internal error {exc!r}; see {settings.logfile}")  # if still waiting
        status = EXIT_FAILURE
    finally:
        if unix_socks:
            _remove_socket(settings.control_socket, log)
        pidfile.remove(log)
        log.close()
        if daemon_context is not None:
            daemon_context.close()
    return status


def _remove_socket(path: str, log: Log) -> None:
    try:
        os.unlink(path)
    except OSError as exc:
        log.error(f"Warning: cannot delete control socket {path}: {exc.strerror}")


def _prepare_tls(settings: Settings, log: Log) -> tls.TlsSetup:
    """Check the certificate and key and build the context, before any port
    is opened: a bad pair must stop the start, not the first handshake."""
    try:
        setup = tls.prepare(settings.cert_file, settings.key_file, settings.key_passphrase_file)
    except tls.CertificateError as exc:
        raise StartError(str(exc)) from None
    log.info(f"TLS certificate: {setup.info.subject}, expires {setup.info.expiry_text()}")
    if setup.warning:
        log.out(setup.warning)
    return setup


def _open_fifo(settings: Settings, log: Log) -> Optional[int]:
    if not settings.fifo:
        return None
    policy = fifo.policy_for(settings.fifo_mode, settings.fifo_group, settings.user)
    try:
        fd = fifo.open_fifo(settings.fifo, policy)
    except fifo.FifoError as exc:
        raise StartError(str(exc)) from None
    for line in fifo.describe(fd, settings.fifo):
        log.info(line)
    return fd


def _check_redis(settings: Settings, log: Log) -> None:
    """A bad --redis URL or a login Redis refuses stops the start (exit 1);
    a Redis that cannot be reached yet does not: the node waits for it."""
    if not settings.redis:
        return
    from . import redislink, resp

    try:
        address = resp.parse_url(settings.redis)
    except resp.UrlError as exc:
        raise StartError(str(exc)) from None
    refused = redislink.login_check(address)
    if refused:
        raise StartError(refused)


def _bind(endpoint: Endpoint, what: str, reuse_port: bool = False) -> List[socket.socket]:
    try:
        return bind_endpoint(endpoint, reuse_port)
    except OSError as exc:
        raise StartError(f"cannot listen on {what} {endpoint.describe()}: {exc.strerror}") from None


def _is_loopback(sock: socket.socket) -> bool:
    host = sock.getsockname()[0]
    return host.startswith("127.") or host == "::1"


def _fail(log: Log, reason: str, opened: list, report=None, foreground: bool = False) -> int:
    """Close what was opened and say why, once where a person reads it: in
    the foreground the log is the terminal, so only stderr gets the reason."""
    for item in opened:
        try:
            item.close() if hasattr(item, "close") else os.close(item)
        except OSError:
            pass
    if not foreground:
        log.error(f"Error: {reason}. Exiting...")
    if report is not None:
        report.failed(reason)  # stderr is /dev/null once detached
    else:
        print(f"pyhasses: {reason}", file=sys.stderr)
    return EXIT_FAILURE



