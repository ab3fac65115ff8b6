"""The container image, built and run for real with podman (issue 16).

No image registry is reachable here, so the Dockerfile's base
(``debian:bookworm-slim``) is made from Debian's packages: ``debootstrap
--variant=minbase bookworm`` from the mirror apt uses, cached as a tar file
under /var/tmp/pyhasses-test-base (PYHASSES_TEST_BASE overrides it) and
imported with ``podman import`` under the name the FROM line uses.  An image
of that name already in podman's storage is used as it is.

Podman runs as it does on this kind of machine (Debian 12's podman as root):
the runc runtime (crun refuses the cgroup set-up), explicit ulimits, and the
host's network for builds and runs, so the containers' ports are the host's
loopback ports::

    podman --runtime runc build --network host --pull=never --format docker \
        --ulimit nofile=10000:10000 --ulimit nproc=4096:4096 -t pyhasses .
    podman --runtime runc run --network host \
        --ulimit nofile=10000:10000 --ulimit nproc=4096:4096 pyhasses

Where podman cannot run (not installed, not root, no base and no way to make
one), every test here is skipped with the reason.  The tests marked as
needing the control secret or the publisher key (issue 12) or /healthz
(issue 14) skip while this tree's pyhasses lacks them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from support import ROOT, SseClient, free_port, wait_until

pytestmark = [
    pytest.mark.timeout(900),
    # The image is built from this tree by the suite that runs on it; inside
    # the Debian package's own build (debian/rules) there is no image to test.
    pytest.mark.skipif(bool(os.environ.get("PYHASSES_PACKAGE_BUILD")),
                       reason="the Debian package build tests the package, not the container image"),
]

PODMAN = shutil.which("podman")
#: Global podman flags, then those of builds and runs (see the docstring).
PODMAN_FLAGS = ["--runtime", "runc"]
ULIMITS = ["--ulimit", "nofile=10000:10000", "--ulimit", "nproc=4096:4096"]
BUILD_FLAGS = ["--network", "host", "--pull=never", "--format", "docker", *ULIMITS]
RUN_FLAGS = ["--network", "host", *ULIMITS]

BASE_CACHE = Path(os.environ.get("PYHASSES_TEST_BASE", "/var/tmp/pyhasses-test-base"))
BASE_TAR = BASE_CACHE / "debian-bookworm-minbase.tar"
IMAGE = "localhost/pyhasses-test:latest"
#: The uid the Dockerfile gives the user "pyhasses".
PYHASSES_UID = 10001
SECRET = "container-test-secret"



def podman(*args, timeout=120, check=True, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([PODMAN, *PODMAN_FLAGS, *args], capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n"
                             f"{r.stderr[-3000:]}")
    return r


def base_image_name() -> str:
    """The FROM of the Dockerfile's stages, as podman stores it."""
    bases = set(re.findall(r"^FROM\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.M))
    bases = {b for b in bases if b != "build"}
    assert len(bases) == 1, f"expected one base image, got {bases}"
    (base,) = bases
    return base if "/" in base else f"docker.io/library/{base}"


def debian_mirror() -> str:
    """The Debian mirror apt is configured with (bookworm's main suite)."""
    texts = [p.read_text(errors="replace") for p in
             [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
             if p.is_file()]
    for text in texts:
        for stanza in text.split("\n\n"):  # deb822 .sources
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:(.*)$", stanza, re.M)
            if uris and suites and "bookworm" in suites.group(1).split():
                return uris.group(1)
        for m in re.finditer(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\s", text, re.M):  # one-line form
            return m.group(1)
    return "http://deb.debian.org/debian"


def make_base_tar() -> None:
    """debootstrap the base and keep it as a tar file (about 30 s)."""
    if os.geteuid() != 0:
        pytest.skip(f"no base image and no {BASE_TAR}: making one with debootstrap needs root")
    if not shutil.which("debootstrap"):
        pytest.skip("no base image and debootstrap is missing (scripts/deps.d/container.sh installs it)")
    BASE_CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=BASE_CACHE) as tmp:
        root = Path(tmp) / "root"
        mirror = debian_mirror()
        r = subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(root), mirror],
                           capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            pytest.skip(f"debootstrap from {mirror} failed: {(r.stdout + r.stderr)[-500:]}")
        # What the slim image leaves out too: downloaded packages and indexes.
        for junk in [*root.glob("var/cache/apt/archives/*.deb"), *root.glob("var/lib/apt/lists/*_*")]:
            junk.unlink()
        partial = Path(tmp) / "base.tar"
        subprocess.run(["tar", "-C", str(root), "-cf", str(partial), "."], check=True, timeout=300)
        partial.rename(BASE_TAR)


@pytest.fixture(scope="module")
def image():
    """The image built from this tree; its name."""
    if PODMAN is None:
        pytest.skip("podman is not installed (scripts/deps.d/container.sh installs it)")
    info = podman("info", check=False, timeout=60)
    if info.returncode != 0:
        pytest.skip(f"podman cannot run here: {info.stderr.strip()[-300:]}")
    base = base_image_name()
    if podman("image", "exists", base, check=False).returncode != 0:
        if not BASE_TAR.is_file():
            make_base_tar()
        podman("import", str(BASE_TAR), base, timeout=300)
    podman("build", *BUILD_FLAGS, "-t", IMAGE, str(ROOT), timeout=600)
    return IMAGE


class Container:
    """One detached container of the image on the host's network; removed
    at the end of the test by its name."""

    def __init__(self, image, *args, env=None, podman_args=()):
        self.name = f"pyhasses-test-{uuid.uuid4().hex[:12]}"
        self.sse_port = free_port()
        self.control_port = free_port()
        self.metrics_port = free_port()
        self.env = {"PYHASSES_SSE_PORT": str(self.sse_port), "PYHASSES_CONTROL_PORT": str(self.control_port),
                    "PYHASSES_METRICS_PORT": str(self.metrics_port), **(env or {})}
        env_args = [a for k, v in self.env.items() for a in ("-e", f"{k}={v}")]
        podman("run", "-d", "--name", self.name, *RUN_FLAGS, *env_args, *podman_args, image, *args)

    def logs(self) -> str:
        r = podman("logs", self.name, check=False)
        return r.stdout + r.stderr

    def state(self) -> dict:
        return json.loads(podman("inspect", self.name).stdout)[0]["State"]

    def running(self) -> bool:
        return self.state()["Running"]

    def wait_listening(self, port, timeout=30.0):
        def listening():
            if not self.running():
                raise AssertionError(f"container exited:\n{self.logs()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return True
            except OSError:
                return False

        wait_until(listening, timeout, interval=0.2, what=f"the container to listen on {port}")

    def stream(self, subscribe="room1", path="/sse") -> SseClient:
        client = SseClient("127.0.0.1", self.sse_port, timeout=10)
        client.request(f"GET {path}?subscribe={subscribe} HTTP/1.1\r\nHost: localhost\r\n"
                       "Connection: keep-alive\r\n\r\n")
        client.read_handshake(timeout=10)
        return client

    def remove(self):
        podman("rm", "-f", "-t", "2", self.name, check=False, timeout=60)


@pytest.fixture
def start(image):
    started = []

    def run(*args, **kw) -> Container:
        container = Container(image, *args, **kw)
        started.append(container)
        return container

    yield run
    for container in started:
        container.remove()


#: /proc/net/tcp{,6} spellings of 0.0.0.0 and ::
WILDCARDS = {"00000000", "0" * 32}
#: ... and of 127.0.0.1 and ::1
LOOPBACKS = {"0100007F", "0" * 24 + "01000000"}


def listening_addresses(port: int) -> set:
    """The local addresses (hex, as the kernel lists them) with a socket in
    LISTEN on ``port`` in this network namespace, the containers' too."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                local, state = line.split()[1], line.split()[3]
                address, _, hex_port = local.partition(":")
                if state == "0A" and int(hex_port, 16) == port:
                    found.add(address)
    return found


def publisher(image, code: str, *env_args) -> subprocess.CompletedProcess:
    """Python code run in another container of the image (its own process
    tree and file system, on the same network): a backend publishing."""
    return podman("run", "--rm", *RUN_FLAGS, *env_args, image, "python3", "-c", code, check=False, timeout=120)


def test_the_image_streams_to_the_host_as_an_unprivileged_user_logging_to_stdout(start):
    c = start("--heartbeat", "0", env={"PYHASSES_URL": "/events", "PYHASSES_OPTS": "--cors-base https://app.example"})
    c.wait_listening(c.sse_port)
    stream = c.stream(path="/events")
    assert b"Access-Control-Allow-Origin: https://app.example\r\n" in stream.head
    status = podman("exec", c.name, "cat", "/proc/1/status").stdout
    assert re.search(rf"^Uid:\s+{PYHASSES_UID}\s+{PYHASSES_UID}\s", status, re.M), status
    assert "Name:\tpyhasses" in status  # the daemon itself is the main process, not a shell
    logs = c.logs()
    assert f"serving SSE on *:{c.sse_port} at /events" in logs
    assert "--heartbeat 0" in logs  # the command line it started, options of `podman run` last
    wait_until(lambda: "Connect from 127.0.0.1" in c.logs(), 10, what="the connect line on stdout")
    stream.close()


def test_a_publisher_in_another_container_reaches_a_stream_opened_from_the_host(start, image):
    c = start()
    c.wait_listening(c.control_port)
    assert listening_addresses(c.control_port) <= LOOPBACKS  # no secret: loopback only
    stream = c.stream("room1")
    r = publisher(image, "import json; from pyhasses.publish import publish; "
                         f"print(json.dumps(publish('room1', 'hello; from a container', ack=True, "
                         f"port={c.control_port})))")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["delivered"] == 1
    assert stream.read_event(timeout=10)["data"] == "hello; from a container"
    stream.close()


def test_sigterm_drains_the_streams_and_the_daemon_exits_zero(start):
    c = start(env={"PYHASSES_DRAIN": "2"})
    c.wait_listening(c.control_port)
    stream = c.stream("room1")
    t0 = time.monotonic()
    podman("stop", "-t", "20", c.name, timeout=60)  # SIGTERM, then SIGKILL after 20 s
    elapsed = time.monotonic() - t0
    assert stream.read_until_closed(timeout=10).endswith(b"0\r\n\r\n")  # the terminating chunk
    state = c.state()
    assert state["ExitCode"] == 0, c.logs()
    assert elapsed < 15, f"stopped by SIGKILL rather than by SIGTERM ({elapsed:.1f} s)"
    assert "Draining 1 stream(s) over 2 s" in c.logs()


@pytest.mark.parametrize("how", [("cli", "-cp=*:{port}"), ("env", "0.0.0.0:{port}"),
                                 ("cli", "--control-bind=10.1.2.3")])
def test_the_control_port_is_not_opened_beyond_loopback_without_a_secret(image, how):
    kind, value = how
    port = free_port()
    env = ["-e", f"PYHASSES_SSE_PORT={free_port()}", "-e", f"PYHASSES_CONTROL_PORT={port}"]
    args = []
    if kind == "env":
        env = ["-e", f"PYHASSES_SSE_PORT={free_port()}", "-e", f"PYHASSES_CONTROL_PORT={value.format(port=port)}"]
    else:
        args = [value.format(port=port)]
    r = podman("run", "--rm", *RUN_FLAGS, *env, image, *args, check=False, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "refusing to open the control port" in r.stderr
    assert "--control-secret-file" in r.stderr and "--publisher-key" in r.stderr


@pytest.mark.parametrize("secret_from", ["podman-secret", "variable"])
def test_publishing_over_the_network_needs_the_control_secret(start, image, tmp_path, secret_from):
    secret_name = f"pyhasses-test-{uuid.uuid4().hex[:12]}"
    if secret_from == "podman-secret":
        (tmp_path / "secret").write_text(SECRET + "\n")
        podman("secret", "create", secret_name, str(tmp_path / "secret"))
        kw = {"podman_args": ["--secret", f"{secret_name},target=pyhasses_control_secret,"
                                          f"uid={PYHASSES_UID},gid={PYHASSES_UID},mode=0400"]}
    else:
        kw = {"env": {"PYHASSES_CONTROL_SECRET": SECRET}}
    try:
        c = start(**kw)
        c.wait_listening(c.control_port)
        assert listening_addresses(c.control_port) & WILDCARDS, listening_addresses(c.control_port)
        stream = c.stream("room1")
        send = ("import socket, sys\n"
                "s = socket.create_connection(('127.0.0.1', {port}), timeout=10)\n"
                "try:\n"
                "    s.sendall(sys.argv[1].encode()); s.shutdown(socket.SHUT_WR); print(repr(s.recv(4096)))\n"
                "except OSError as exc:\n"
                "    print('closed:', exc)\n")
        code = send.format(port=c.control_port)
        refused = podman("run", "--rm", *RUN_FLAGS, image, "python3", "-c", code, "room1=without the secret\n",
                         check=False)
        assert refused.returncode == 0, refused.stderr
        stream.expect_nothing(wait=1.5)
        allowed = podman("run", "--rm", *RUN_FLAGS, image, "python3", "-c", code,
                         f"auth {SECRET}\nroom1=with the secret\n", check=False)
        assert allowed.returncode == 0, allowed.stderr
        assert stream.read_event(timeout=10)["data"] == "with the secret"
        stream.close()
    finally:
        if secret_from == "podman-secret":
            podman("secret", "rm", secret_name, check=False)


def test_http_publishing_with_a_publisher_key(start, tmp_path):
    import jwt

    key = "container-test-publisher-key-of-32-bytes"
    (tmp_path / "key").write_text(key + "\n")
    os.chmod(tmp_path / "key", 0o644)  # the container's user reads it through the bind mount
    c = start(podman_args=["-v", f"{tmp_path / 'key'}:/run/secrets/pyhasses_publisher_key:ro"])
    c.wait_listening(c.sse_port)
    stream = c.stream("room1")
    url = f"http://127.0.0.1:{c.sse_port}/publish"
    body = b"to=room1&data=over+HTTP"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=10)
    assert refused.value.code == 401
    token = jwt.encode({"pyhasses": {"publish": ["room1"]}, "exp": int(time.time()) + 300}, key, algorithm="HS256")
    request = urllib.request.Request(url, data=body, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert json.loads(answer.read())["delivered"] == 1
    assert stream.read_event(timeout=10)["data"] == "over HTTP"
    stream.close()


def test_the_health_check_passes_while_the_daemon_serves(start):
    c = start()
    c.wait_listening(c.metrics_port)
    health = podman("healthcheck", "run", c.name, check=False)  # the image's HEALTHCHECK, run now
    assert health.returncode == 0, health.stdout + health.stderr
    state = c.state()
    recorded = state.get("Health") or state.get("Healthcheck")
    assert recorded["Status"] == "healthy", recorded



def test_podman_exec_publishes_with_pyhasses_ctl_and_through_a_fifo(start):
    c = start(env={"PYHASSES_FIFO": "/run/pyhasses/fifo"})
    c.wait_listening(c.control_port)
    stream = c.stream("room1")
    podman("exec", c.name, "pyhasses-ctl", "--port", str(c.control_port), "send", "room1", "through pyhasses-ctl")
    assert stream.read_event(timeout=10)["data"] == "through pyhasses-ctl"
    wait_until(lambda: podman("exec", c.name, "test", "-p", "/run/pyhasses/fifo", check=False).returncode == 0,
               10, interval=0.2, what="the FIFO")
    podman("exec", c.name, "sh", "-c", "echo 'room1=through the FIFO' > /run/pyhasses/fifo")
    assert stream.read_event(timeout=10)["data"] == "through the FIFO"
    stream.close()


def readme_container_section() -> str:
    text = (ROOT / "README.rst").read_text()
    return text[text.index("\nContainer\n---------\n"):text.index(".. -- delivery --")]


def test_the_readme_way_publishes_from_another_container_on_a_container_network(image, tmp_path):
    """README.rst's commands, on a podman network of their own (names made
    unique, the stream port on host loopback), instead of the host's."""
    section = readme_container_section()
    assert "podman secret create pyhasses_control_secret control-secret" in section
    assert "--secret pyhasses_control_secret,uid=10001,mode=0400 pyhasses" in section
    (publish_line,) = [line for line in section.splitlines() if "/dev/tcp/pyhasses/8085" in line]
    tag = uuid.uuid4().hex[:10]
    net, name, secret = f"pyhasses-test-net-{tag}", f"pyhasses-test-{tag}", f"pyhasses-test-secret-{tag}"
    (tmp_path / "control-secret").write_text(SECRET + "\n")
    podman("network", "create", net)
    try:
        if '"dns_enabled": true' not in podman("network", "inspect", net).stdout:
            pytest.skip("podman networks have no name resolution here "
                        "(golang-github-containernetworking-plugin-dnsname; scripts/deps.d/container.sh)")
        podman("secret", "create", secret, str(tmp_path / "control-secret"))
        port = free_port()
        podman("run", "-d", "--name", name, "--network", net, "-p", f"127.0.0.1:{port}:8080", *ULIMITS,
               "--secret", f"{secret},target=pyhasses_control_secret,uid=10001,mode=0400", image)
        stream = None

        def stream_open():
            nonlocal stream
            try:
                stream = SseClient("127.0.0.1", port, timeout=10)
                stream.request("GET /sse?subscribe=room1 HTTP/1.1\r\nConnection: keep-alive\r\n\r\n")
                stream.read_handshake(timeout=5)
                return True
            except (OSError, EOFError, TimeoutError, AssertionError):
                return False

        wait_until(stream_open, 30, interval=0.5, what="a stream through the published port")
        script = publish_line.split("bash -c ", 1)[1].strip().strip("'").replace("/dev/tcp/pyhasses/", f"/dev/tcp/{name}/")
        podman("run", "--rm", "--network", net, *ULIMITS, "-v", f"{tmp_path / 'control-secret'}:/secret:ro",
               image, "bash", "-c", script)
        assert stream.read_event(timeout=10)["data"] == "hello from another container"
        stream.close()
    finally:
        podman("rm", "-f", "-t", "2", name, check=False, timeout=60)
        podman("secret", "rm", secret, check=False)
        podman("network", "rm", net, check=False)

# -- examples/compose ------------------------------------------------------

COMPOSE = ROOT / "examples" / "compose"


def compose_dry_run(tmp_path, *files) -> str:
    """What podman-compose would run for these files (nothing is run): the
    files parse, merge, and name what the README says."""
    if shutil.which("podman-compose") is None:
        pytest.skip("podman-compose is not installed (scripts/deps.d/container.sh installs it)")
    copy = tmp_path / "examples" / "compose"
    shutil.copytree(COMPOSE, copy)
    shutil.copy(ROOT / "Dockerfile", tmp_path)  # the build context, ../.. of the compose files
    (copy / "control-secret").write_text("a secret\n")
    args = [a for f in files for a in ("-f", f)]
    project = f"pyhasses-test-{uuid.uuid4().hex[:10]}"
    try:
        r = subprocess.run(["podman-compose", "--dry-run", "-p", project, *args, "up", "-d"], cwd=copy,
                           capture_output=True, text=True, timeout=120)
    finally:  # podman-compose 1.0 creates the project's network even in a dry run
        if PODMAN:
            podman("network", "rm", "-f", f"{project}_default", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout + r.stderr


def test_the_compose_example_keeps_the_control_port_inside_and_mounts_the_secret(tmp_path):
    out = compose_dry_run(tmp_path, "compose.yaml")
    runs = [line for line in out.splitlines() if line.startswith("podman run ")]
    assert len(runs) == 2, out
    daemon, backend = sorted(runs, key=lambda line: "service=publisher" in line)
    assert "-p 8080:8080" in daemon and "8085" not in daemon
    assert "-p 8000:8000" in backend and "python3 /app/app.py" in backend
    for line in runs:
        assert "./control-secret:/run/secrets/pyhasses_control_secret:ro" in line


def test_the_compose_cluster_adds_redis_a_second_node_and_nginx(tmp_path):
    out = compose_dry_run(tmp_path, "compose.yaml", "compose.cluster.yaml")
    runs = [line for line in out.splitlines() if line.startswith("podman run ")]
    services = sorted(re.search(r"com\.docker\.compose\.service=(\S+)", line).group(1) for line in runs)
    assert services == ["nginx", "publisher", "pyhasses", "pyhasses2", "redis"], out
    for line in runs:
        if "service=pyhasses" in line:
            assert "PYHASSES_OPTS=--redis redis://redis:6379/0" in line
    assert "-p 8081:8081" in next(line for line in runs if "service=nginx" in line)


def test_the_compose_nginx_configuration_is_valid(tmp_path):
    """nginx -t on the example's file, with the compose service names (which
    only resolve on the compose network) replaced by loopback."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(nginx, os.X_OK):
        pytest.skip("nginx is not installed (scripts/deps.d/delivery.sh installs it)")
    text = (COMPOSE / "nginx.conf").read_text()
    assert "server pyhasses:8080;" in text and "server pyhasses2:8080;" in text
    text = re.sub(r"server pyhasses2?:8080;", "server 127.0.0.1:8080;", text)
    conf = tmp_path / "nginx.conf"
    conf.write_text(text.replace("listen 8081;", f"listen 127.0.0.1:{free_port()};"))
    r = subprocess.run([nginx, "-t", "-q", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"),
                        "-g", f"pid {tmp_path}/nginx.pid;", "-c", str(conf)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


def backend(start, c, secret_args=()):
    """The compose example's publisher backend in its own container, on a
    free loopback port, publishing to container ``c``; its port."""
    port = free_port()
    b = start("python3", "/app/app.py", env={"LISTEN": f"127.0.0.1:{port}",
                                             "PYHASSES_CONTROL": f"127.0.0.1:{c.control_port}"},
              podman_args=["-v", f"{COMPOSE / 'publisher'}:/app:ro", *secret_args])
    b.wait_listening(port)
    return port


def post_form(port, **fields):
    body = urllib.parse.urlencode(fields).encode()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", data=body, timeout=15) as answer:
        return answer.status, json.loads(answer.read())


def test_the_compose_backend_page_publishes_on_a_form_post(start):
    c = start()
    c.wait_listening(c.control_port)
    port = backend(start, c)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=15) as page:
        assert "new EventSource(url)" in page.read().decode()
    stream = c.stream("room1")
    status, ack = post_form(port, to="room1", data="from the form; with = and ;")
    assert status == 200 and ack["ok"] and ack["delivered"] == 1, ack
    assert stream.read_event(timeout=10)["data"] == "from the form; with = and ;"
    stream.close()


def test_the_compose_backend_publishes_with_the_mounted_secret(start, tmp_path):
    (tmp_path / "control-secret").write_text(SECRET + "\n")
    os.chmod(tmp_path / "control-secret", 0o644)  # as compose's file secrets are: a bind mount
    mount = ["-v", f"{tmp_path / 'control-secret'}:/run/secrets/pyhasses_control_secret:ro"]
    c = start(podman_args=mount)
    c.wait_listening(c.control_port)
    assert listening_addresses(c.control_port) & WILDCARDS
    port = backend(start, c, mount)
    stream = c.stream("room1")
    status, ack = post_form(port, to="room1", data="with the secret")
    assert status == 200 and ack["delivered"] == 1, ack
    assert stream.read_event(timeout=10)["data"] == "with the secret"
    stream.close()


@pytest.mark.timeout(900)
def test_compose_up_to_a_browser_page_receiving_what_the_form_posts(image, tmp_path):
    """examples/compose as its README runs it, with podman-compose: the page
    of the publisher container, in Chromium, receives from the pyhasses
    container what its form posts.  In a copy of the example: the host ports
    are free loopback ports, and the image is the one built here."""
    if shutil.which("podman-compose") is None:
        pytest.skip("podman-compose is not installed (scripts/deps.d/container.sh installs it)")
    from test_browser import WAIT_MS, Chromium  # skips without Chromium or Playwright

    copy = tmp_path / "compose"
    shutil.copytree(COMPOSE, copy)
    (copy / "control-secret").write_text(SECRET + "\n")
    os.chmod(copy / "control-secret", 0o644)
    stream_port, page_port = free_port(), free_port()
    text = (copy / "compose.yaml").read_text()
    for old, new in (('"8080:8080"', f'"127.0.0.1:{stream_port}:8080"'),
                     ('"8000:8000"', f'"127.0.0.1:{page_port}:8000"'),
                     ('STREAM_PORT: "8080"', f'STREAM_PORT: "{stream_port}"'),
                     ("image: localhost/pyhasses:example", f"image: {image}")):
        assert old in text
        text = text.replace(old, new)
    (copy / "compose.yaml").write_text(text)
    project = f"pyhasses-test-{uuid.uuid4().hex[:10]}"
    compose = ["podman-compose", "-p", project, "--podman-args", " ".join(PODMAN_FLAGS),
               "--podman-run-args", " ".join(ULIMITS)]
    browser = None
    try:
        up = subprocess.run([*compose, "up", "-d"], cwd=copy, capture_output=True, text=True, timeout=300)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        def page_up():
            try:
                socket.create_connection(("127.0.0.1", page_port), timeout=0.5).close()
                return True
            except OSError:
                return False

        wait_until(page_up, 60, interval=0.5, what="the publisher page")
        browser = Chromium(tmp_path / "profile")
        page = browser.connect().contexts[0].new_page()
        page.goto(f"http://127.0.0.1:{page_port}/", timeout=WAIT_MS)
        page.wait_for_function("document.getElementById('state').textContent.startsWith('stream open')",
                               timeout=WAIT_MS)
        page.fill("input[name=data]", "posted in a browser")
        page.click("button")
        page.wait_for_function("document.querySelector('#events li')?.textContent === 'posted in a browser'",
                               timeout=WAIT_MS)
        # The event may come down the stream before the page has read the
        # POST's answer: wait for that too, then check what it says.
        page.wait_for_function("document.getElementById('state').textContent.startsWith('published')",
                               timeout=WAIT_MS)
        assert '"delivered": 1' in page.text_content("#state")
    finally:
        if browser is not None:
            browser.end()
        subprocess.run([*compose, "down", "-t", "2"], cwd=copy, capture_output=True, timeout=300)
        podman("network", "rm", "-f", f"{project}_default", check=False)
