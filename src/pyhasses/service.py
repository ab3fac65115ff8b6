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

import errno
import os
import signal
import socket
import stat
import sys
import time
from typing import List, Optional

from . import __version__
from .connections import ControlClient, FifoReader, Listener, SseClient
from .control import ControlHandler
from .hub import Hub
from .logs import Log, client_list_block, duration
from .reactor import Reactor, raise_nofile_limit
from .settings import Endpoint, Settings
from .sse import LAST_CHUNK, EventIds

EXIT_OK = 0
EXIT_FAILURE = 1


class StartError(Exception):
    """The daemon cannot start; the text says why, for stderr and the log."""


class Runtime:
    """What control commands change while running."""

    def __init__(self, settings: Settings):
        self.reinit = settings.reinit


class Daemon:
    """The running daemon: what every connection reaches through ``ctx``."""

    def __init__(self, settings: Settings, log: Log):
        self.settings = settings
        self.log = log
        self.runtime = Runtime(settings)
        self.hub = Hub()
        self.ids = EventIds()
        self.cors = settings.cors_base.encode("latin-1", "replace")
        self.started = time.time()
        self.control_clients: set = set()
        self.listeners: List[Listener] = []
        self.fifo: Optional[FifoReader] = None
        self.reactor: Optional[Reactor] = None
        self.control = ControlHandler(self.hub, self.ids, log, settings, self.runtime,
                                      self.status_info, self.client_list_lines)
        self.exit_status = EXIT_OK

    # -- reports ------------------------------------------------------------
    def status_info(self) -> dict:
        hub = self.hub
        user = self.settings.user
        return {
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

    def client_list_lines(self) -> list:
        clients = sorted(self.hub.clients, key=lambda c: c.connected_at)
        return client_list_block(clients)

    # -- start-up -----------------------------------------------------------
    def open_ports(self, sse_socks, control_socks) -> None:
        for sock in sse_socks:
            self.listeners.append(Listener(self, sock, self._new_sse_client, f"SSE port {sock_name(sock)}"))
        for sock in control_socks:
            self.listeners.append(Listener(self, sock, self._new_control_client, f"control port {sock_name(sock)}"))

    def _new_sse_client(self, sock, peer):
        return SseClient(self, sock, peer)

    def _new_control_client(self, sock, peer):
        return ControlClient(self, sock, peer)

    def serve(self, sse_socks, control_socks, fifo_fd: Optional[int]) -> None:
        """Build the reactor (after any fork) and run until a signal stops it."""
        self.reactor = Reactor(on_error=self.log.error)
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.reactor.add_signal_handler(sig, self._on_stop_signal)
        self.reactor.add_signal_handler(signal.SIGHUP, self._on_hangup)
        self.open_ports(sse_socks, control_socks)
        for listener in self.listeners:
            self.reactor.register(listener.fd, listener)
        if fifo_fd is not None:
            self.fifo = FifoReader(self, fifo_fd, self.settings.fifo)
        self.log.info(f"pyhasses {__version__} serving SSE on {self.settings.sse.describe()} at {self.settings.match_url}")
        self.reactor.run()
        self.shutdown()

    # -- signals ------------------------------------------------------------
    def _on_stop_signal(self, signum: int) -> None:
        self.log.out("Received INT/TERM signal, Exiting...")
        self.reactor.stop()

    def _on_hangup(self, signum: int) -> None:
        self.log.reopen()
        self.log.info("SIGHUP: log file reopened")

    def shutdown(self) -> None:
        """End every stream with the terminating chunk, then close all."""
        for listener in self.listeners:
            listener.close()
        for client in list(self.hub.clients):
            if client.established:
                client.outbox.append(LAST_CHUNK)
            try:
                client.outbox.flush(client.sock)
            except OSError:
                pass
            client.close("daemon stopping", quiet=True)
        for conn in list(self.control_clients):
            conn.close("daemon stopping", quiet=True)
        if self.fifo is not None:
            self.fifo.close()
        self.reactor.close()


def sock_name(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- opening what needs privileges ----------------------------------------------
def bind_endpoint(endpoint: Endpoint, dual_stack_wildcard: bool = True) -> List[socket.socket]:
    """Listening sockets for an endpoint.  No host: one IPv6 socket that also
    takes IPv4 (dual-stack), or IPv4 alone where IPv6 is missing."""
    if not endpoint.hosts:
        try:
            return [_listen(socket.AF_INET6, "::", endpoint.port, v6only=False)]
        except OSError as exc:
            if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                raise
            return [_listen(socket.AF_INET, "0.0.0.0", endpoint.port)]
    socks = []
    try:
        for host in endpoint.hosts:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            try:
                socks.append(_listen(family, host, endpoint.port, v6only=True))
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


def _listen(family: int, host: str, port: int, v6only: bool = True) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if v6only else 0)
        sock.bind((host, port))
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
    except Exception:
        sock.close()
        raise
    return sock


def open_fifo(path: str, mode: int) -> int:
    """Create the FIFO if missing (mode as given, not world-writable by
    default) and open it read-write, so writers closing never end it."""
    try:
        os.mkfifo(path, mode)
        os.chmod(path, mode)  # the umask must not change what the operator asked
    except FileExistsError:
        if not stat.S_ISFIFO(os.stat(path).st_mode):
            raise StartError(f"-fifo={path} exists and is not a FIFO")
    except OSError as exc:
        raise StartError(f"cannot create FIFO {path}: {exc.strerror}") from None
    try:
        return os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise StartError(f"cannot open FIFO {path}: {exc.strerror}") from None


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
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            return  # unreadable or garbage: stale
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
        return True
    return True


# -- the whole start ---------------------------------------------------------------
def run(settings: Settings) -> int:
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
    try:
        pidfile.check()
        raise_nofile_limit()
        sse_socks = _bind(settings.sse, "SSE port")
        opened += sse_socks
        control_socks = _bind(settings.control, "control port") if settings.control else []
        opened += control_socks
        if settings.control:
            where = ", ".join(sock_name(s) for s in control_socks)
            if all(_is_loopback(s) for s in control_socks):
                log.info(f"Control port listens on {where} (loopback only)")
            else:
                log.out(f"WARNING: control port listens on {where}: anyone who reaches it can publish")
        fifo_fd = open_fifo(settings.fifo, settings.fifo_mode) if settings.fifo else None
        if fifo_fd is not None:
            opened.append(fifo_fd)
    except StartError as exc:
        return _fail(log, str(exc), opened)

    daemon_context = None
    if not settings.nodaemon:
        from .daemonize import detach

        try:
            daemon_context = detach(settings, preserve=opened + [log.stream_fileno()])
        except StartError as exc:
            return _fail(log, str(exc), opened)
    elif settings.user:
        from .daemonize import drop_privileges

        try:
            drop_privileges(settings.user)
        except StartError as exc:
            return _fail(log, str(exc), opened)

    daemon = Daemon(settings, log)
    try:
        pidfile.write()
    except StartError as exc:
        return _fail(log, str(exc), opened)
    log.info("=== daemon starting ===")
    log.info(f"Pid: {os.getpid()}")
    try:
        daemon.serve(sse_socks, control_socks, fifo_fd)
    finally:
        pidfile.remove(log)
        log.close()
        if daemon_context is not None:
            daemon_context.close()
    return daemon.exit_status


def _bind(endpoint: Endpoint, what: str) -> List[socket.socket]:
    try:
        return bind_endpoint(endpoint)
    except OSError as exc:
        raise StartError(f"cannot listen on {what} {endpoint.describe()}: {exc.strerror}") from None


def _is_loopback(sock: socket.socket) -> bool:
    host = sock.getsockname()[0]
    return host.startswith("127.") or host == "::1"


def _fail(log: Log, reason: str, opened: list) -> int:
    for item in opened:
        try:
            item.close() if hasattr(item, "close") else os.close(item)
        except OSError:
            pass
    log.error(f"Error: {reason}. Exiting...")
    print(f"pyhasses: {reason}", file=sys.stderr)
    return EXIT_FAILURE



