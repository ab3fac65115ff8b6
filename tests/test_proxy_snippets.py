"""The reverse-proxy snippets of README.rst, checked by the servers they are
for (``nginx -t``, ``apache2 -t``) and then run on loopback in front of a
real daemon: a stream goes through the proxy, and a reconnect through it
resumes with Last-Event-ID.  scripts/deps.d/delivery.sh installs both."""

import os
import re
import signal
import socket
import subprocess
import time

import pytest
from support import ROOT, free_port, wait_until

NGINX = "/usr/sbin/nginx"
APACHE = "/usr/sbin/apache2"
APACHE_MODULES = "/usr/lib/apache2/modules"


def literal_blocks(text):
    """The indented literal blocks (after a ``::`` paragraph) of an rst text."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if lines[i].rstrip().endswith("::"):
            i += 1
            body = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith("    ")):
                body.append(lines[i][4:])
                i += 1
            blocks.append("\n".join(body).strip("\n"))
        else:
            i += 1
    return blocks


def snippet(marker):
    text = (ROOT / "README.rst").read_text()
    found = [b for b in literal_blocks(text) if marker in b]
    assert len(found) == 1, f"expected one README block with {marker!r}"
    return found[0]


def point_at(block, port):
    assert "127.0.0.1:8080" in block
    return block.replace("127.0.0.1:8080", f"127.0.0.1:{port}")


class ProxiedStream:
    """An SSE stream read through a proxy, which may re-chunk the body:
    undo the chunking, then split events at blank lines."""

    def __init__(self, port, path, headers=""):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive\r\n{headers}\r\n".encode())
        self.raw = b""
        self.body = b""
        self.head = self._read_head()

    def _recv(self, deadline):
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("proxy closed the stream")
        self.raw += data

    def _read_head(self):
        deadline = time.monotonic() + 5
        while b"\r\n\r\n" not in self.raw:
            self._recv(deadline)
        head, _, self.raw = self.raw.partition(b"\r\n\r\n")
        return head.decode("latin-1")

    def _dechunk(self):
        while True:
            size_line, sep, rest = self.raw.partition(b"\r\n")
            if not sep:
                return
            size = int(size_line.split(b";")[0], 16)
            if len(rest) < size + 2:
                return
            self.body += rest[:size]
            self.raw = rest[size + 2:]

    def events(self, n, timeout=5.0):
        """The next ``n`` events with data, as dicts."""
        deadline = time.monotonic() + timeout
        out = []
        while len(out) < n:
            self._dechunk()
            while b"\n\n" in self.body and len(out) < n:
                block, _, self.body = self.body.partition(b"\n\n")
                fields = {}
                for line in block.decode().split("\n"):
                    if line and not line.startswith(":"):
                        name, _, value = line.partition(": ")
                        fields[name] = value
                if "data" in fields:
                    out.append(fields)
            if len(out) < n:
                self._recv(deadline)
        return out

    def close(self):
        self.sock.close()


def check_stream_through(proxy_port, d):
    """Live events pass at once; a reconnect with Last-Event-ID resumes."""
    first = ProxiedStream(proxy_port, "/sse?subscribe=room")
    assert first.head.startswith("HTTP/1.1 200"), first.head
    assert "text/event-stream" in first.head
    wait_until(lambda: d.control_json("tcpstatus")["sseconncli"] == 1, what="the proxied stream")
    d.control("room=one\n")
    (one,) = first.events(1)
    assert one["data"] == "one"
    # A proxy may keep its upstream stream open until it next writes to the
    # gone browser (Apache does): the resume must not depend on that.
    first.close()
    d.control("room=two;room=three;other=x;")
    again = ProxiedStream(proxy_port, "/sse?subscribe=room", f"Last-Event-ID: {one['id']}\r\n")
    assert [e["data"] for e in again.events(2)] == ["two", "three"]
    d.control("room=live\n")
    assert again.events(1)[0]["data"] == "live"
    again.close()


def run_server(argv, port, tmp_path):
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.err", "wb"))

    def listening():
        if proc.poll() is not None:
            raise AssertionError(f"{argv[0]} exited: {(tmp_path / 'server.err').read_text()}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, 10, what=f"{argv[0]} to listen")
    return proc


def stop_server(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.mark.skipif(not os.access(NGINX, os.X_OK), reason="nginx not installed (scripts/deps.d/delivery.sh)")
def test_nginx_snippet_is_valid_and_proxies_a_resumable_stream(daemon_factory, tmp_path):
    d = daemon_factory("--heartbeat", "0")
    port = free_port()
    conf = tmp_path / "nginx.conf"
    temp = "\n".join(f"    {kind}_temp_path {tmp_path}/{kind};" for kind in
                     ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    location = point_at(snippet("proxy_pass http://127.0.0.1:8080"), d.port)
    conf.write_text(f"""
daemon off;
master_process off;
worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
{temp}
    server {{
        listen 127.0.0.1:{port};
{location}
    }}
}}
""")
    checked = subprocess.run([NGINX, "-t", "-q", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"),
                              "-c", str(conf)], capture_output=True, text=True, timeout=20)
    assert checked.returncode == 0, checked.stderr
    proc = run_server([NGINX, "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(conf)],
                      port, tmp_path)
    try:
        check_stream_through(port, d)
        assert d.stop() == 0  # ends the upstream streams the proxy still holds
    finally:
        stop_server(proc)


@pytest.mark.skipif(not os.access(APACHE, os.X_OK), reason="apache2 not installed (scripts/deps.d/delivery.sh)")
def test_apache_snippet_is_valid_and_proxies_a_resumable_stream(daemon_factory, tmp_path):
    d = daemon_factory("--heartbeat", "0")
    port = free_port()
    location = point_at(snippet("<Location"), d.port)
    modules = "\n".join(f"LoadModule {m}_module {APACHE_MODULES}/mod_{m}.so"
                        for m in ("mpm_event", "authz_core", "proxy", "proxy_http", "env"))
    user = "User nobody\nGroup nogroup\n" if os.getuid() == 0 else ""
    conf = tmp_path / "httpd.conf"
    conf.write_text(f"""
ServerRoot {tmp_path}
ServerName localhost
Listen 127.0.0.1:{port}
{modules}
PidFile {tmp_path}/httpd.pid
ErrorLog {tmp_path}/error.log
{user}
<VirtualHost 127.0.0.1:{port}>
{location}
</VirtualHost>
""")
    checked = subprocess.run([APACHE, "-t", "-f", str(conf)], capture_output=True, text=True, timeout=20)
    assert checked.returncode == 0, checked.stderr
    proc = run_server([APACHE, "-f", str(conf), "-DFOREGROUND"], port, tmp_path)
    try:
        check_stream_through(port, d)
        assert d.stop() == 0  # ends the upstream streams the proxy still holds
    finally:
        stop_server(proc)


def test_readme_holds_both_snippets():
    text = (ROOT / "README.rst").read_text()
    assert re.search(r"location /sse \{", snippet("proxy_pass http://127.0.0.1:8080"))
    assert "ProxyPass" in snippet("<Location")
    assert text.index(".. -- delivery --") < text.index("Behind a reverse proxy")
