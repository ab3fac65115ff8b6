"""The cookie flow for signed subscriptions (pyhasses --subscriber-key).

A web backend that knows who is logged in gives the browser a short-lived
token as an HttpOnly cookie; the page opens its EventSource on the same
origin, so the browser sends the cookie with the stream request and with
every automatic reconnect; the page asks the backend to renew the cookie
before it expires, so a reconnect always carries a valid token.  The daemon
reads the cookie ``pyhassesAuthorization`` (its --auth-cookie).

Here the "login" is a ``?user=NAME`` parameter and the page's stream is
``/sse`` on this origin: put pyhasses behind the same reverse proxy as this
backend (README, "Behind a reverse proxy"), for instance nginx with
``location /sse { proxy_pass http://127.0.0.1:8080; proxy_buffering off; }``.

Run it to try:  python3 cookie-login.py /etc/pyhasses/subscriber.key
(PORT overrides 8000; TTL the token lifetime, 300 s).  Needs pyhasses
installed (for pyhasses.publish.mint_token) or any JWT library.
"""

import http.server
import os
import re
import sys
import urllib.parse

from pyhasses.publish import mint_token

KEY_FILE = sys.argv[1] if len(sys.argv) > 1 else "/etc/pyhasses/subscriber.key"
TTL = int(os.environ.get("TTL", "300"))
COOKIE = "pyhassesAuthorization"

PAGE = """<!doctype html>
<meta charset="utf-8"><title>notifications for %(user)s</title>
<p>Notifications for <b>%(user)s</b>: <span id="state">connecting</span></p>
<ol id="events"></ol>
<script>
// Same origin: the browser sends the HttpOnly cookie; the page never sees it.
const source = new EventSource("/sse?subscribe=%(token)s");
source.onopen = () => { document.getElementById("state").textContent = "open"; };
source.onerror = () => { document.getElementById("state").textContent = "reconnecting"; };
source.onmessage = (e) => {
  const li = document.createElement("li");
  li.textContent = e.data;
  document.getElementById("events").append(li);
};
// Renew the cookie well before it expires: the next reconnect carries a fresh token.
setInterval(() => fetch("/renew", {method: "POST"}), %(renew_ms)d);
</script>
"""


def user_token(user):
    """The subscription token of one user (tokens may not hold '-')."""
    return "user" + user


class Backend(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        user = query.get("user", [""])[0]
        if not re.fullmatch(r"[A-Za-z0-9_]{1,32}", user):
            self.send_error(400, "log in with ?user=NAME")
            return
        body = PAGE % {"user": user, "token": user_token(user), "renew_ms": TTL * 1000 // 2}
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Set-Cookie", self.cookie_for(user))
        self.send_header("Content-Length", str(len(body.encode())))
        self.end_headers()
        self.wfile.write(body.encode())

    def do_POST(self):
        # A real backend takes the user from its own session; this one from the old cookie's login.
        user = self.headers.get("X-Demo-User") or urllib.parse.parse_qs(
            urllib.parse.urlsplit(self.headers.get("Referer", "")).query).get("user", [""])[0]
        if self.path != "/renew" or not re.fullmatch(r"[A-Za-z0-9_]{1,32}", user):
            self.send_error(403)
            return
        self.send_response(204)
        self.send_header("Set-Cookie", self.cookie_for(user))
        self.end_headers()

    def cookie_for(self, user):
        token = mint_token(KEY_FILE, subscribe=[user_token(user)], ttl=TTL)
        # Path: only the stream needs it.  Add "Secure" when served over HTTPS.
        return f"{COOKIE}={token}; Path=/sse; Max-Age={TTL}; HttpOnly; SameSite=Strict"


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8000"))
    print(f"open http://127.0.0.1:{port}/?user=42", flush=True)
    http.server.ThreadingHTTPServer(("127.0.0.1", port), Backend).serve_forever()
