"""A backend that publishes to pyhasses when a form is posted, for the
compose example (examples/compose/README.md).  Standard library only.

GET /        a page with a form, and an EventSource that lists the events
             the browser receives from pyhasses
POST /       publishes the form's message over pyhasses' control port
             (with the control secret, when one is mounted) and answers
             with pyhasses' acknowledgement

Environment: PYHASSES_CONTROL (host:port of the control port, default
pyhasses:8085), PYHASSES_CONTROL_SECRET_FILE (default
/run/secrets/pyhasses_control_secret; no file: no "auth" line),
STREAM_PORT (the port browsers reach pyhasses on, default 8080),
LISTEN (default 0.0.0.0:8000).
"""

import html
import json
import os
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

CONTROL = os.environ.get("PYHASSES_CONTROL", "pyhasses:8085")
SECRET_FILE = os.environ.get("PYHASSES_CONTROL_SECRET_FILE", "/run/secrets/pyhasses_control_secret")
STREAM_PORT = os.environ.get("STREAM_PORT", "8080")
LISTEN = os.environ.get("LISTEN", "0.0.0.0:8000")

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>pyhasses compose example</title>
<h1>pyhasses compose example</h1>
<form method="post">
  <label>token <input name="to" value="room1"></label>
  <label>message <input name="data" value="hello" autofocus></label>
  <button>publish</button>
</form>
<p id="state">connecting to the stream...</p>
<ul id="events"></ul>
<script>
  // The stream comes from pyhasses itself, on its own port of this host.
  const url = `${location.protocol}//${location.hostname}:STREAM_PORT/sse?subscribe=room1`;
  const source = new EventSource(url);
  const list = document.getElementById("events");
  source.onopen = () => { document.getElementById("state").textContent = "stream open: " + url; };
  source.onerror = () => { document.getElementById("state").textContent = "stream closed, reconnecting"; };
  source.onmessage = (event) => {
    const item = document.createElement("li");
    item.textContent = event.data;
    list.prepend(item);
  };
  // Post the form without leaving the page; the answer is pyhasses' acknowledgement.
  document.querySelector("form").onsubmit = async (e) => {
    e.preventDefault();
    const answer = await fetch("/", {method: "POST", body: new URLSearchParams(new FormData(e.target))});
    document.getElementById("state").textContent = "published: " + await answer.text();
  };
</script>
"""


def publish(token: str, data: str) -> dict:
    """One message over the control port, in the JSON form (the message may
    hold anything), acknowledged.  The first part is the secret, when the
    daemon wants one."""
    host, _, port = CONTROL.rpartition(":")
    lines = []
    if os.path.isfile(SECRET_FILE):
        with open(SECRET_FILE) as f:
            lines.append("auth " + f.read().rstrip("\n"))
    lines.append(json.dumps({"to": token, "data": data, "ack": True}))
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(("\n".join(lines) + "\n").encode())
        sock.shutdown(socket.SHUT_WR)  # "that was all": pyhasses answers and closes
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    return json.loads(reply.decode().strip().splitlines()[-1]) if reply.strip() else {"ok": False}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path not in ("/", "/index.html"):
            self.send_error(404)
            return
        self.answer(200, "text/html; charset=utf-8", PAGE.replace("STREAM_PORT", html.escape(STREAM_PORT)))

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(min(length, 65536)).decode("utf-8", "replace"))
        token = form.get("to", ["room1"])[0]
        data = form.get("data", [""])[0]
        try:
            ack = publish(token, data)
        except (OSError, ValueError) as exc:
            self.answer(502, "application/json", json.dumps({"ok": False, "error": str(exc)}))
            return
        self.answer(200 if ack.get("ok") else 502, "application/json", json.dumps(ack))

    def answer(self, status: int, content_type: str, body: str):
        payload = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


if __name__ == "__main__":
    host, _, port = LISTEN.rpartition(":")
    print(f"publisher page on http://{host}:{port}/, publishing to {CONTROL}", flush=True)
    ThreadingHTTPServer((host, int(port)), Handler).serve_forever()
