"""A private redis-server for the cluster tests: Debian's binary on a free
loopback port, its data in the test's temporary directory, ended by its
pid.  The system's instance is never used.  ``command`` speaks RESP with
the daemon's own sans-IO code over a blocking socket."""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import threading
from pathlib import Path

from pyhasses import resp

from support import free_port, wait_until

REDIS_SERVER = "/usr/bin/redis-server"


class RedisServer:
    def __init__(self, tmp_path, *extra, persistent=True):
        assert os.path.exists(REDIS_SERVER), "redis-server is missing: run scripts/deps.d/redis.sh"
        self.dir = Path(tmp_path) / f"redis-{free_port()}"
        self.dir.mkdir()
        self.port = free_port()
        self.extra = list(extra)
        # appendfsync always: what Redis confirmed survives a SIGKILL.
        self.persistence = ["--appendonly", "yes", "--appendfsync", "always"] if persistent else ["--appendonly", "no"]
        self.proc = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--save", "", "--daemonize", "no", "--logfile", str(self.dir / "redis.log"),
                *self.persistence, *self.extra]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def answers():
            if self.proc.poll() is not None:
                raise AssertionError(f"redis-server exited with {self.proc.returncode}")
            try:
                self.command("PING", password=self._password())
                return True
            except OSError:
                return False

        wait_until(answers, 10, what="redis-server to answer")
        return self

    def _password(self):
        if "--requirepass" in self.extra:
            return self.extra[self.extra.index("--requirepass") + 1]
        return None

    def kill(self):
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def command(self, *args, password=None, db=0, timeout=5.0):
        talk = resp.Conversation()
        replies = []
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            payload = b""
            if password:
                payload += talk.ask(None, "AUTH", password)
            if db:
                payload += talk.ask(None, "SELECT", db)
            sock.sendall(payload + talk.ask(replies.append, *args))
            while talk.outstanding:
                data = sock.recv(65536)
                if not data:
                    raise OSError("redis closed the connection")
                for callback, reply in talk.feed(data):
                    if callback is not None:
                        callback(reply)
        return replies[0]


class HoldingProxy:
    """A loopback TCP relay in front of Redis whose answers to the node can
    be held back (``hold``) and let through again (``release``): a node
    behind it lags the others, as one on a slow link or a busy core does.
    Bytes are never dropped or reordered.  One thread, ended by ``stop``."""

    def __init__(self, redis_port: int):
        self.redis_port = redis_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.held = False
        self.stalled = None  # index of the connection whose requests are held back
        self._lock = threading.Lock()
        self._pairs = []  # [node socket, redis socket, bytes held for the node, bytes held for Redis]
        self._stopping = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def hold(self):
        with self._lock:
            self.held = True

    def release(self):
        with self._lock:
            self.held = False

    def stall_requests(self, index: int):
        """Hold back what the node sends on its ``index``-th connection (in
        the order the node opened them; a node opens its command connection
        first, then its reader): Redis never sees those commands."""
        with self._lock:
            self.stalled = index

    def resume_requests(self):
        with self._lock:
            self.stalled = None

    def _run(self):
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ, None)
        while not self._stopping:
            for key, _ in sel.select(0.05):
                if key.data is None:
                    node, _ = self.listener.accept()
                    upstream = socket.create_connection(("127.0.0.1", self.redis_port))
                    pair = [node, upstream, bytearray(), bytearray()]
                    self._pairs.append(pair)
                    sel.register(node, selectors.EVENT_READ, (pair, 0))
                    sel.register(upstream, selectors.EVENT_READ, (pair, 1))
                    continue
                pair, side = key.data
                try:
                    data = key.fileobj.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    for s in pair[:2]:
                        sel.unregister(s)
                        s.close()
                    self._pairs.remove(pair)
                    continue
                if side == 0:
                    pair[3] += data
                else:
                    pair[2] += data
            with self._lock:
                held, stalled = self.held, self.stalled
            for index, pair in enumerate(self._pairs):
                if pair[3] and index != stalled:
                    pair[1].sendall(pair[3])
                    pair[3].clear()
                if pair[2] and not held:
                    pair[0].sendall(pair[2])
                    pair[2].clear()
        for pair in self._pairs:
            for s in pair[:2]:
                s.close()
        self.listener.close()

    def stop(self):
        self._stopping = True
        self._thread.join(5)
