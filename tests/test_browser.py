"""A real browser against the real daemon: Debian's Chromium, headless,
driven by Playwright over the DevTools protocol, loads examples/index.html
from another origin (a small HTTP server of the test on another loopback
port) and shows what its EventSource receives.

We start Chromium ourselves (Playwright never downloads a browser here) so
that we know its process group: every test ends every process in it, by pid,
and checks that none is left.  scripts/deps.d/clients.sh installs Chromium;
without it, or without Playwright, these tests are skipped.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

from support import ROOT, free_port, pyhasses_env, run_module, wait_until

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed (pip install '.[test]')")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip("Debian's chromium is not installed (run scripts/deps.d/clients.sh)", allow_module_level=True)

EXAMPLES = ROOT / "examples"
#: The launch flags this machine needs: no sandbox as root, and no call home
#: (its connections would be refused by the closed network).
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
    "--no-proxy-server",  # every address in these tests is loopback
]
WAIT_MS = 15_000

pytestmark = pytest.mark.timeout(90)


# -- the page's origin -------------------------------------------------------------


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def page_origin():
    """examples/ served on a loopback port of its own: another origin than
    the daemon's."""
    handler = functools.partial(QuietHandler, directory=str(EXAMPLES))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


# -- the browser ----------------------------------------------------------------------


class Chromium:
    """Our own Chromium process (its own process group) and Playwright
    connected to it."""

    def __init__(self, profile: Path, *extra_flags):
        profile.mkdir()
        self.profile = profile
        self.proc = subprocess.Popen(
            [CHROMIUM, *CHROMIUM_FLAGS, *extra_flags, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.pgid = self.proc.pid
        self.playwright = None
        self.browser = None

    def devtools_port(self) -> int:
        marker = self.profile / "DevToolsActivePort"

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"chromium exited with {self.proc.returncode}: {self.proc.stderr.read()[-2000:]!r}")
            text = marker.read_text() if marker.exists() else ""
            return text.split("\n", 1)[0].strip()

        return int(wait_until(ready, 20, 0.05, "chromium's DevTools port"))

    def connect(self):
        port = self.devtools_port()
        self.playwright = sync_api.sync_playwright().start()
        self.browser = self.playwright.chromium.connect_over_cdp(f"http://127.0.0.1:{port}", timeout=WAIT_MS)
        return self.browser

    def group(self) -> list:
        """Pids of the processes still in Chromium's process group."""
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[2]) == self.pgid:
                pids.append(int(entry))
        return pids

    def end(self) -> None:
        """Close the browser, then end each process of its group by pid."""
        # A failure to detach must not keep the processes alive: they are
        # ended below whatever happens here.
        with contextlib.suppress(Exception):
            if self.browser is not None:
                self.browser.close()
        with contextlib.suppress(Exception):
            if self.playwright is not None:
                self.playwright.stop()
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            for pid in self.group():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                continue
            try:
                wait_until(lambda: not self.group(), grace, 0.05, "chromium's processes to end")
                break
            except AssertionError:
                continue
        self.proc.stderr.close()


@pytest.fixture
def chromium(tmp_path, monkeypatch):
    """Start Chromium with extra flags; afterwards no process of it is left."""
    for name in [k for k in os.environ if k.lower().endswith("_proxy")]:
        monkeypatch.delenv(name)  # Playwright reaches Chromium on loopback, never through a proxy
    started = []

    def start(*extra_flags):
        browser = Chromium(tmp_path / f"profile{len(started)}", *extra_flags)
        started.append(browser)
        return browser.connect()

    yield start
    for browser in started:
        browser.end()
        assert browser.group() == [], "chromium processes left behind"


def open_example(browser, page_origin: str, stream_url: str, events=()):
    page = browser.new_context().new_page()
    page.set_default_timeout(WAIT_MS)
    query = urllib.parse.urlencode({"stream": stream_url, "events": ",".join(events)})
    page.goto(f"{page_origin}/index.html?{query}")
    return page


def shown(page) -> list:
    """The events the page lists, as (type, data) pairs."""
    return [tuple(item) for item in page.eval_on_selector_all(
        "#events li", "items => items.map(i => [i.dataset.event, i.querySelector('pre').textContent])")]


def wait_shown(page, n: int) -> list:
    page.wait_for_function(f"document.querySelectorAll('#events li').length >= {n}")
    return shown(page)


def body_data(page, key: str) -> str:
    return page.evaluate(f"document.body.dataset[{json.dumps(key)}] || ''")


def wait_open(page, opens: int = 1):
    page.wait_for_function(f"Number(document.body.dataset.opens || 0) >= {opens} && document.body.dataset.state === 'open'")


def ctl(daemon, *args) -> subprocess.CompletedProcess:
    r = run_module("pyhasses.ctl", "--port", str(daemon.cport), *args)
    assert r.returncode == 0, r.stderr
    return r


def stream_url(daemon, scheme="http", subscribe="room1") -> str:
    return f"{scheme}://127.0.0.1:{daemon.port}{daemon.murl}?subscribe={subscribe}"


def daemon_has(option: str) -> bool:
    """Whether this build of the daemon knows ``option`` (features that other
    work adds: resume, TLS helpers)."""
    r = run_module("pyhasses", "-h")
    return option in r.stdout


# -- (a) delivery ---------------------------------------------------------------------


def test_plain_utf8_multiline_and_named_events_are_shown(daemon_factory, chromium, page_origin):
    daemon = daemon_factory()
    page = open_example(chromium(), page_origin, stream_url(daemon), events=["chat"])
    wait_open(page)
    daemon.wait_clients(1)
    ctl(daemon, "send", "room1", "plain hello")
    ctl(daemon, "send", "room1", "Grüße, 世界, ☃ 🎉")
    ctl(daemon, "send", "--json", "room1", "line one\nline two; with x=1")
    ctl(daemon, "send", "--event", "chat", "room1", "a named one")
    ctl(daemon, "send", "--event", "unlistened", "room1", "not shown: the page has no listener")
    ctl(daemon, "send", "room2", "not subscribed")
    ctl(daemon, "send", "room1", "last")
    assert wait_shown(page, 5) == [
        ("message", "plain hello"),
        ("message", "Grüße, 世界, ☃ 🎉"),
        ("message", "line one\nline two; with x=1"),
        ("chat", "a named one"),
        ("message", "last"),
    ]
    # What a person sees, not only what the DOM holds.
    assert "line one\nline two; with x=1" in page.inner_text("#events")
    ids = page.eval_on_selector_all("#events li", "items => items.map(i => i.dataset.id)")
    assert all(ids) and [int(i) for i in ids] == sorted(int(i) for i in ids)


# -- (b) CORS ------------------------------------------------------------------------


def test_cors_base_set_to_the_page_origin_lets_the_stream_through(daemon_factory, chromium, page_origin):
    daemon = daemon_factory(f"-cors-base={page_origin}")
    page = open_example(chromium(), page_origin, stream_url(daemon))
    wait_open(page)
    ctl(daemon, "send", "room1", "allowed")
    assert wait_shown(page, 1) == [("message", "allowed")]


def test_cors_base_of_another_origin_is_refused_by_the_browser(daemon_factory, chromium, page_origin):
    daemon = daemon_factory("-cors-base=http://127.0.0.1:1")
    page = open_example(chromium(), page_origin, stream_url(daemon))
    # The daemon answers; the browser reads its Access-Control-Allow-Origin,
    # refuses the stream and gives up for good.
    page.wait_for_function("document.body.dataset.state === 'closed'")
    assert body_data(page, "opens") == ""
    ctl(daemon, "send", "*", "must not be shown")
    time.sleep(0.5)
    assert shown(page) == []
    assert body_data(page, "state") == "closed"


# -- (c) reconnection ------------------------------------------------------------------


def test_browser_reconnects_by_itself_after_a_restart(daemon_factory, chromium, page_origin):
    daemon = daemon_factory()
    page = open_example(chromium(), page_origin, stream_url(daemon))
    wait_open(page)
    ctl(daemon, "send", "--retry", "300", "room1", "before")  # reconnect quickly
    assert wait_shown(page, 1) == [("message", "before")]
    daemon.stop()
    page.wait_for_function("document.body.dataset.state === 'reconnecting'")
    daemon.start()
    wait_open(page, opens=2)
    daemon.wait_clients(1)
    ctl(daemon, "send", "room1", "after")
    assert wait_shown(page, 2)[-1] == ("message", "after")


def test_browser_gets_what_was_published_while_it_was_away(daemon_factory, chromium, page_origin):
    if not daemon_has("--history-count"):
        pytest.skip("resume (--history-count, Last-Event-ID) has not landed in this daemon yet")
    daemon = daemon_factory("--history-count=100")
    page = open_example(chromium(), page_origin, stream_url(daemon))
    wait_open(page)
    # A long reconnection time leaves room to publish while the browser is away.
    ctl(daemon, "send", "--retry", "4000", "room1", "before")
    assert wait_shown(page, 1) == [("message", "before")]
    daemon.stop()
    page.wait_for_function("document.body.dataset.state === 'reconnecting'")
    daemon.start()
    r = ctl(daemon, "send", "--ack", "room1", "while away")
    assert "delivered: 0" in r.stdout, "the browser was back before the message: nothing was missed"
    wait_open(page, opens=2)
    seen = [e for e in wait_shown(page, 2) if e[0] != "reset"]
    assert seen == [("message", "before"), ("message", "while away")]
    ctl(daemon, "send", "room1", "live again")
    page.wait_for_function("[...document.querySelectorAll('#events pre')].some(p => p.textContent === 'live again')")
    assert [e for e in shown(page) if e[0] != "reset"][-1] == ("message", "live again")


# -- (d) HTTPS -----------------------------------------------------------------------------


def test_https_stream_with_a_self_signed_certificate(daemon_factory, chromium, page_origin, tmp_path):
    pytest.importorskip("pyhasses.selfsigned", reason="TLS helpers (pyhasses.selfsigned) have not landed yet")
    certs = tmp_path / "certs"
    subprocess.run([sys.executable, "-m", "pyhasses.selfsigned", str(certs)], check=True, env=pyhasses_env(),
                   capture_output=True, timeout=60)
    daemon = daemon_factory("-ssl", f"-cert-file={certs / 'cert.pem'}", f"-privatekey-file={certs / 'key.pem'}")
    page = open_example(chromium("--ignore-certificate-errors"), page_origin, stream_url(daemon, "https"),
                        events=["chat"])
    wait_open(page)
    ctl(daemon, "send", "--event", "chat", "room1", "over TLS: ünïcode\nand two lines")
    assert wait_shown(page, 1) == [("chat", "over TLS: ünïcode\nand two lines")]
    assert "mode: unencrypted" not in ctl(daemon, "status").stdout


# -- (f) the control port refuses a web page (issue 12) ------------------------------------


def test_a_page_cannot_publish_through_the_control_port(daemon_factory, chromium, page_origin):
    """Any page a browser on the host opens may send a no-cors fetch to the
    control port; the daemon closes it with nothing run, and the page's own
    stream receives nothing."""
    daemon = daemon_factory()
    page = open_example(chromium(), page_origin, stream_url(daemon))
    wait_open(page)
    daemon.wait_clients(1)
    control = f"http://127.0.0.1:{daemon.cport}"
    page.evaluate("""async (base) => {
        const tries = [
            fetch(base + '/', {method: 'POST', mode: 'no-cors', body: 'room1=x'}),
            fetch(base + '/;room1=y', {mode: 'no-cors'}),
            fetch(base + '/', {method: 'POST', mode: 'no-cors', body: 'room1=z\\n',
                               headers: {'Content-Type': 'text/plain'}}),
        ];
        await Promise.allSettled(tries);
    }""", control)
    wait_until(lambda: daemon.control_json("tcpstatus")["crossprotocol"] >= 3, 10, what="three refusals")
    assert daemon.control_json("tcpstatus")["msgproccnt"] == 0
    ctl(daemon, "send", "room1", "only this")
    assert wait_shown(page, 1) == [("message", "only this")]
    time.sleep(0.3)
    assert shown(page) == [("message", "only this")]


# -- (g) signed subscriptions: the cookie flow of examples/cookie-login.py (issue 12) -----------


def test_the_example_backends_cookie_opens_a_signed_stream_in_chromium(daemon_factory, chromium, tmp_path):
    """The example backend logs user 42 in with an HttpOnly cookie; an
    EventSource on the daemon's origin then carries that cookie (cookies
    are per host, not per port), so user42's stream opens and user43's is
    refused for good (a 403 ends an EventSource, no reconnect loop)."""
    key = tmp_path / "subscriber.key"
    key.write_text(os.urandom(32).hex() + "\n")
    daemon = daemon_factory(f"--subscriber-key={key}")
    port = free_port()
    env = {**pyhasses_env(), "PORT": str(port), "TTL": "120"}
    backend = subprocess.Popen([sys.executable, "cookie-login.py", str(key)], cwd=str(EXAMPLES), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        context = chromium().new_context()
        login = context.new_page()
        login.set_default_timeout(WAIT_MS)
        wait_until(lambda: _listening(port), 15, 0.05, "the example backend")
        login.goto(f"http://127.0.0.1:{port}/?user=42")
        cookies = context.cookies(f"http://127.0.0.1:{daemon.port}/sse")
        assert [c["name"] for c in cookies] == ["pyhassesAuthorization"] and cookies[0]["httpOnly"]
        # A page on the daemon's origin (its 404 page will do) opens the streams.
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.goto(f"http://127.0.0.1:{daemon.port}/")
        page.evaluate("""() => {
            window.got = []; window.refused = null;
            const mine = new EventSource('/sse?subscribe=user42');
            mine.onmessage = (e) => window.got.push(e.data);
            const other = new EventSource('/sse?subscribe=user43');
            other.onerror = () => { window.refused = other.readyState; };
        }""")
        page.wait_for_function("window.refused === 2")  # EventSource.CLOSED
        daemon.wait_clients(1)
        ctl(daemon, "send", "user42", "for 42 only")
        ctl(daemon, "send", "user43", "not for this page")
        page.wait_for_function("window.got.length >= 1")
        time.sleep(0.2)
        assert page.evaluate("window.got") == ["for 42 only"]
        daemon.wait_log(r"token does not grant subscribing to 'user43'; answered 403")
    finally:
        backend.terminate()
        backend.wait(10)


def test_a_stream_ended_at_its_tokens_exp_reconnects_with_the_renewed_cookie(daemon_factory, chromium, tmp_path):
    """The whole point of the cookie: the daemon ends the stream when the
    token expires, the EventSource reconnects by itself, and the request
    carries the cookie the backend renewed meanwhile (with the old one it
    would be a 401, and an EventSource never retries after that)."""
    key = tmp_path / "subscriber.key"
    key.write_text(os.urandom(32).hex() + "\n")
    daemon = daemon_factory(f"--subscriber-key={key}", "--retry=200")
    port = free_port()
    env = {**pyhasses_env(), "PORT": str(port), "TTL": "3"}
    backend = subprocess.Popen([sys.executable, "cookie-login.py", str(key)], cwd=str(EXAMPLES), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        context = chromium().new_context()
        login = context.new_page()
        wait_until(lambda: _listening(port), 15, 0.05, "the example backend")
        login.goto(f"http://127.0.0.1:{port}/?user=42")
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.goto(f"http://127.0.0.1:{daemon.port}/")
        page.evaluate("""() => {
            window.got = []; window.opens = 0;
            const source = new EventSource('/sse?subscribe=user42');
            source.onopen = () => { window.opens += 1; };
            source.onmessage = (e) => window.got.push(e.data);
        }""")
        page.wait_for_function("window.opens === 1")
        # Meanwhile the login page renews the cookie every TTL/2 (its fetch to /renew).
        daemon.wait_log(r"its token expired; ending the stream", timeout=10)
        page.wait_for_function("window.opens === 2")
        daemon.wait_clients(1)
        ctl(daemon, "send", "user42", "after the reconnect")
        page.wait_for_function("window.got.includes('after the reconnect')")
    finally:
        backend.terminate()
        backend.wait(10)


def _listening(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False
