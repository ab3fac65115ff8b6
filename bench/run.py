#!/usr/bin/env python3
"""The benchmark: pyhasses against nginx+nchan, side by side, on loopback.

One command does everything: installs what it needs (gcc, nginx and its
nchan module, from Debian), compiles the load generator (bench/loadgen.c),
starts each server with a raised descriptor limit pinned to core 0 (the load
generator on core 1), runs every scenario ``--runs`` times on a fresh server,
stops what it started by pid, and prints one table of medians with the
machine, the versions and the command line.

    python3 bench/run.py                     # the full benchmark (N = 1000, 5000, 10000; 3 runs)
    python3 bench/run.py --n 200 --runs 1    # a quick look
    python3 bench/run.py --write-readme      # also record the table in bench/README.md and README.rst

Scenarios (see bench/README.md): a broadcast acked one by one, b broadcast
batched in one control write, c broadcast at a fixed rate, d point-to-point,
e connection storm, f memory per idle subscribed connection.

Every wait is bounded, and every process started here is ended by its pid.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
NCHAN_MODULE = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")
NOFILE = 20000  # descriptors for each server and the load generator (at most the hard limit)

# (scenario, metric, label, higher is better)
ROWS = [
    ("a", "deliveries_per_s", "a broadcast acked: deliveries/s", True),
    ("a", "p50_ms", "a   latency p50 ms", False),
    ("a", "p99_ms", "a   latency p99 ms", False),
    ("a", "max_ms", "a   latency max ms", False),
    ("a", "lost", "a   lost", False),
    ("b", "deliveries_per_s", "b broadcast batch: deliveries/s", True),
    ("b", "p99_ms", "b   latency p99 ms", False),
    ("b", "lost", "b   lost", False),
    ("c", "p50_ms", "c 20 msg/s: latency p50 ms", False),
    ("c", "p99_ms", "c   latency p99 ms", False),
    ("c", "lost", "c   lost", False),
    ("d", "messages_per_s", "d point-to-point: msgs/s", True),
    ("d", "p50_ms", "d   latency p50 ms", False),
    ("d", "p99_ms", "d   latency p99 ms", False),
    ("d", "lost", "d   lost", False),
    ("e", "handshakes_per_s", "e storm: handshakes/s", True),
    ("e", "server_cpu", "e   server CPU share", None),
    ("e", "loadgen_cpu", "e   loadgen CPU share", None),
    ("f", "bytes_per_conn", "f memory: bytes/idle conn", False),
    ("ge", "handshakes_per_s", "g TLS storm: handshakes/s", True),
    ("ge", "server_cpu", "g   server CPU share", None),
    ("ge", "loadgen_cpu", "g   loadgen CPU share", None),
    ("gf", "bytes_per_conn", "g TLS memory: bytes/idle conn", False),
]


# -- installing and building ------------------------------------------------------
def install(need_nchan: bool) -> None:
    """apt-get what is missing (gcc; nginx and libnginx-mod-nchan for nchan)."""
    packages = ["gcc", "libssl-dev", "openssl"]
    if need_nchan:
        packages += ["nginx", "libnginx-mod-nchan"]
    missing = [p for p in packages if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode != 0]
    if not missing:
        return
    print(f"installing {' '.join(missing)} ...", file=sys.stderr)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env, timeout=900,
                   stdout=subprocess.DEVNULL)


def build_loadgen(workdir: Path) -> Path:
    exe = workdir / "loadgen"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(exe), str(BENCH / "loadgen.c"), "-lssl", "-lcrypto"],
                   check=True, timeout=120)
    return exe


def make_certificate(workdir: Path) -> tuple:
    """A self-signed P-256 certificate for 127.0.0.1, for both servers."""
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, timeout=60, capture_output=True)
    return cert, key


# -- processes ------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(core: int | None, argv: list) -> list:
    return ["taskset", "-c", str(core), *argv] if core is not None and shutil.which("taskset") else argv


def raise_nofile() -> None:
    """Runs in the child before exec: the servers and the load generator
    inherit a descriptor limit fit for 10,000 streams."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(NOFILE, hard) if hard != resource.RLIM_INFINITY else NOFILE
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


def stop(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """End a process we started, by its pid: TERM, then KILL after a while."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class Pyhasses:
    name = "pyhasses"

    def __init__(self, workdir: Path, core: int | None, tls: tuple | None = None):
        self.workdir, self.core, self.tls = workdir, core, tls
        self.proc = None

    def start(self) -> None:
        self.port, self.pub_port = free_port(), free_port()
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
        # -q: hasses' normal level logs every connect; nginx runs with access_log off.
        argv = [sys.executable, "-m", "pyhasses", "-nodaemon", "-q", f"-p={self.port}", f"-cp={self.pub_port}",
                "-murl=/sse"]
        if self.tls:
            argv += ["-ssl", f"-cert-file={self.tls[0]}", f"-privatekey-file={self.tls[1]}"]
        self.log = open(self.workdir / "pyhasses.log", "ab")
        self.proc = subprocess.Popen(pinned(self.core, argv), env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=raise_nofile, cwd=str(self.workdir))
        wait_port(self.pub_port, self.proc)
        wait_port(self.port, self.proc)
        self.pid = self.proc.pid  # taskset execs: this is the Python process

    def stop(self) -> None:
        stop(self.proc)
        self.log.close()

    @staticmethod
    def version() -> str:
        sys.path.insert(0, str(ROOT / "src"))
        from pyhasses import __version__

        return f"pyhasses {__version__} (Python {platform.python_version()})"


NGINX_CONF = """\
load_module {module};
worker_processes 1;
worker_rlimit_nofile {nofile};
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections {nofile}; use epoll; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    nchan_max_reserved_memory 512M;
    server {{
        listen 127.0.0.1:{port} {ssl} backlog=4096;
        {ssl_files}
        location = /sub {{
            nchan_subscriber eventsource;
            nchan_channel_id $arg_id;
            nchan_subscriber_first_message newest;
        }}
        location = /pub {{
            nchan_publisher;
            nchan_channel_id $arg_id;
        }}
    }}
}}
"""


class Nchan:
    name = "nchan"

    def __init__(self, workdir: Path, core: int | None, tls: tuple | None = None):
        self.workdir, self.core, self.tls = workdir / "nginx", core, tls
        self.proc = None

    def start(self) -> None:
        self.port = self.pub_port = free_port()
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir.mkdir(parents=True)
        conf = self.workdir / "nginx.conf"
        ssl_files = f"ssl_certificate {self.tls[0]}; ssl_certificate_key {self.tls[1]};" if self.tls else ""
        conf.write_text(NGINX_CONF.format(module=NCHAN_MODULE, nofile=NOFILE, dir=self.workdir, port=self.port,
                                          ssl="ssl" if self.tls else "", ssl_files=ssl_files))
        argv = ["nginx", "-p", str(self.workdir), "-c", str(conf), "-e", str(self.workdir / "error.log")]
        self.log = open(self.workdir / "stdout.log", "ab")
        self.proc = subprocess.Popen(pinned(self.core, argv), stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=raise_nofile, cwd=str(self.workdir))
        wait_port(self.port, self.proc)
        self.pid = self._worker_pid()

    def _worker_pid(self, timeout: float = 10.0) -> int:
        """The one worker process: it holds the connections and the memory."""
        deadline = time.monotonic() + timeout
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        while time.monotonic() < deadline:
            children = path.read_text().split() if path.exists() else []
            if children:
                return int(children[0])
            time.sleep(0.05)
        raise RuntimeError("nginx started no worker")

    def stop(self) -> None:
        stop(self.proc)  # the master ends its worker on TERM
        self.log.close()

    @staticmethod
    def version() -> str:
        out = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
        nchan = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "libnginx-mod-nchan"],
                               capture_output=True, text=True).stdout.strip()
        return f"{out.replace('nginx version: ', '')} + nchan {nchan or '?'}"


# -- running ---------------------------------------------------------------------------
def run_loadgen(exe: Path, server, n: int, mode: str, args, core: int | None) -> list:
    argv = [str(exe), "--server", server.name, "--port", str(server.port), "--pub-port", str(server.pub_port),
            "--n", str(n), "--mode", mode, "--server-pid", str(server.pid), "--messages", str(args.messages),
            "--rate", str(args.rate), "--rate-messages", str(args.rate_messages),
            "--p2p-messages", str(args.p2p_messages), "--wait", str(args.wait)]
    proc = subprocess.Popen(pinned(core, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=raise_nofile)
    try:
        out, err = proc.communicate(timeout=args.wait * 8 + n / 100)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        raise RuntimeError(f"load generator did not finish ({server.name}, N={n}, {mode})")
    if err.strip():
        print(err.strip(), file=sys.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed with {proc.returncode} ({server.name}, N={n}, {mode})")
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def run_all(args) -> list:
    cores = os.cpu_count() or 1
    server_core, loadgen_core = (0, 1) if cores >= 2 and not args.no_pin else (None, None)
    results = []
    with tempfile.TemporaryDirectory(prefix="pyhasses-bench-") as tmp:
        workdir = Path(tmp)
        exe = build_loadgen(workdir)
        certificate = make_certificate(workdir) if not args.no_tls else None
        for n in args.n:
            for run in range(args.runs):
                for name in args.servers:
                    kind = Pyhasses if name == "pyhasses" else Nchan
                    passes = [(None, ("broadcast", "p2p"))] + ([(certificate, ("tls",))] if certificate else [])
                    for tls, modes in passes:  # a fresh server for the TLS pass: its memory is measured
                        server = kind(workdir, server_core, tls)
                        server.start()
                        try:
                            for mode in modes:
                                for r in run_loadgen(exe, server, n, mode, args, loadgen_core):
                                    if mode == "p2p" and r["scenario"] in ("e", "f"):
                                        continue  # storm and memory come from the broadcast pass
                                    r["run"] = run
                                    results.append(r)
                        finally:
                            server.stop()
                    print(f"  done: {name} N={n} run {run + 1}/{args.runs}", file=sys.stderr)
    return results


# -- reporting ---------------------------------------------------------------------------
#: Share of a scenario's time that the server or the load generator spent
#: runnable but waiting for its core (other processes had it): above this,
#: the figure is marked as disturbed.
DISTURBED = 0.10


def mark_of(r: dict) -> str:
    """"!": the load generator was saturated; "~": someone else had a core."""
    if r.get("saturated"):
        return "!"
    if max(r.get("server_runq_wait", 0), r.get("loadgen_runq_wait", 0)) > DISTURBED:
        return "~"
    return ""


def medians(results: list) -> dict:
    """(server, n, scenario, metric) -> (median, marks).

    The median is taken over the undisturbed runs of that cell (no "~":
    neither process waited for its core), or over all of them when every run
    was disturbed; then the cell is marked "~".  Other sessions' test suites
    come and go on this machine, and one of their bursts should not decide
    a figure when other runs of it were clean."""
    groups: dict = {}
    for r in results:
        for key, value in r.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                groups.setdefault((r["server"], r["n"], r["scenario"], key), []).append((value, mark_of(r)))
    out = {}
    for key, runs in groups.items():
        clean = [(v, m) for v, m in runs if "~" not in m] or runs
        out[key] = (statistics.median(v for v, _ in clean), "".join(sorted(set(m for _, m in clean))))
    return out


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value < 100 and value != int(value):
        return f"{value:.2f}" if value < 10 else f"{value:.1f}"
    return f"{int(round(value)):,}"


def table(med: dict, ns: list, servers: list) -> str:
    header = ["scenario"]
    for n in ns:
        header += [f"{s} N={n:,}" for s in servers] + (["ratio"] if len(servers) == 2 else [])
    rows = [header]
    for scenario, metric, label, _better in ROWS:
        row = [label]
        for n in ns:
            values = []
            for s in servers:
                v, marks = med.get((s, n, scenario, metric), (None, ""))
                values.append(v)
                row.append(fmt(v) + (" " + marks if marks else ""))
            if len(servers) == 2:
                a, b = values
                row.append(f"{a / b:.2f}x" if a is not None and b and metric not in ("lost",) else "")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def verdicts(med: dict, ns: list) -> list:
    """Issue 6, point 3: each target as a ratio to nchan in this run."""
    def get(server, n, scenario, metric):
        return med.get((server, n, scenario, metric), (None, False))[0]

    out = []

    def check(label, ok, detail):
        if ok is None:
            out.append(f"[n/a]    {label}: {detail}")
        else:
            out.append(f"[{'met' if ok else 'MISSED'}] {label}: {detail}")

    big, mid, small = max(ns), (5000 if 5000 in ns else max(ns)), min(ns)
    py, nc = "pyhasses", "nchan"
    both = all(get(s, big, "a", "deliveries_per_s") is not None for s in (py, nc))
    if not both:
        return ["(targets are ratios to nchan: run both servers to judge them)"]
    a_py, a_nc = get(py, big, "a", "deliveries_per_s"), get(nc, big, "a", "deliveries_per_s")
    p99_py, p99_nc = get(py, big, "a", "p99_ms"), get(nc, big, "a", "p99_ms")
    check(f"(a) N={big}: >= 1.5x nchan deliveries/s, p99 <= nchan's", a_py >= 1.5 * a_nc and p99_py <= p99_nc,
          f"{a_py / a_nc:.2f}x, p99 {p99_py:.1f} vs {p99_nc:.1f} ms")
    b_py, b_nc = get(py, big, "b", "deliveries_per_s"), get(nc, big, "b", "deliveries_per_s")
    check(f"(b) N={big}: >= 15x nchan deliveries/s", b_py >= 15 * b_nc, f"{b_py / b_nc:.2f}x")
    c_py, c_nc = get(py, mid, "c", "p99_ms"), get(nc, mid, "c", "p99_ms")
    check(f"(c) N={mid}: p99 <= nchan's", c_py <= c_nc, f"{c_py:.1f} vs {c_nc:.1f} ms")
    d_py, d_nc = get(py, big, "d", "messages_per_s"), get(nc, big, "d", "messages_per_s")
    d_small = get(py, small, "d", "messages_per_s")
    check(f"(d) N={big}: >= 2.5x nchan msgs/s, and >= 0.9x our N={small}",
          d_py >= 2.5 * d_nc and d_py >= 0.9 * d_small,
          f"{d_py / d_nc:.2f}x nchan, {d_py / d_small:.2f}x our N={small}")
    e_py, e_nc = get(py, big, "e", "handshakes_per_s"), get(nc, big, "e", "handshakes_per_s")
    lg_sat = "!" in med.get((nc, big, "e", "handshakes_per_s"), (0, ""))[1]
    check(f"(e) N={big}: handshakes/s >= nchan's", e_py >= e_nc,
          f"{e_py / e_nc:.2f}x" + (" (the load generator was saturated on nchan)" if lg_sat else ""))
    f_py = max(get(py, n, "f", "bytes_per_conn") for n in ns)
    f_nc = get(nc, big, "f", "bytes_per_conn")
    check("(f) <= 1 KB per idle connection", f_py <= 1024, f"{f_py:.0f} B (nchan {f_nc:.0f} B at N={big})")
    g_py, g_nc = get(py, big, "ge", "handshakes_per_s"), get(nc, big, "ge", "handshakes_per_s")
    if g_py is not None and g_nc:
        gm_py, gm_nc = get(py, big, "gf", "bytes_per_conn"), get(nc, big, "gf", "bytes_per_conn")
        check(f"(g) N={big}: TLS storm and memory (no target set)", None,
              f"{g_py / g_nc:.2f}x nchan's handshakes/s, {gm_py:.0f} vs {gm_nc:.0f} bytes per idle TLS stream")
    lost = sum(get(s, n, sc, "lost") or 0 for s in (py, nc) for n in ns for sc in "abcd")
    lost_py = sum(get(py, n, sc, "lost") or 0 for n in ns for sc in "abcd")
    check("nothing lost (pyhasses)", lost_py == 0, f"{lost_py:.0f} lost (both servers: {lost:.0f})")
    return out


def machine() -> str:
    model = "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = re.search(r"Model name:\s*(.*)", out).group(1).strip()
    except (OSError, AttributeError):
        pass
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    return f"{model}, {os.cpu_count()} cores, {mem / 2**30:.1f} GiB RAM, Linux {platform.release()}"


def report(args, results: list, command: str) -> str:
    med = medians(results)
    servers = [s for s in ("pyhasses", "nchan") if s in args.servers]
    marks = "".join(m for _, m in med.values())
    lines = [
        f"date:     {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"machine:  {machine()}",
        "versions: " + "; ".join([Pyhasses.version()] + ([Nchan.version()] if "nchan" in servers else [])),
        f"command:  {command}",
        f"medians of {args.runs} run(s) (of the undisturbed ones where there are any); server pinned to"
        f" core 0, load generator to core 1; loopback;"
        f" a/b: {args.messages} messages, c: {args.rate_messages} at {args.rate}/s, d: {args.p2p_messages} messages",
        "",
        table(med, args.n, servers),
        "",
    ]
    if "!" in marks:
        lines.append("! = the load generator used > 90% of its core in some run: that figure is not trustworthy")
    if "~" in marks:
        lines.append(f"~ = in every run the server or the load generator waited for its core more than"
                     f" {DISTURBED:.0%} of the time (other processes were using it): a disturbed figure")
    lines += verdicts(med, args.n)
    return "\n".join(lines)


def write_readme(text: str) -> None:
    """Replace the results block of bench/README.md and of README.rst."""
    begin, end = "<!-- results begin -->", "<!-- results end -->"
    readme = BENCH / "README.md"
    body = readme.read_text()
    block = f"{begin}\n```\n{text}\n```\n{end}"
    body = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda m: block, body, flags=re.S)
    readme.write_text(body)
    rst = ROOT / "README.rst"
    body = rst.read_text()
    rbegin, rend = ".. bench results begin", ".. bench results end"
    indented = "\n".join(("    " + line) if line else "" for line in text.splitlines())
    rblock = f"{rbegin}\n\n::\n\n{indented}\n\n{rend}"
    body = re.sub(re.escape(rbegin) + ".*?" + re.escape(rend), lambda m: rblock, body, flags=re.S)
    rst.write_text(body)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=lambda s: [int(x) for x in s.split(",")], default=[1000, 5000, 10000],
                   help="subscriber counts, comma-separated (default 1000,5000,10000)")
    p.add_argument("--runs", type=int, default=3, help="runs of every scenario (default 3); the table shows medians")
    p.add_argument("--servers", type=lambda s: s.split(","), default=["pyhasses", "nchan"])
    p.add_argument("--messages", type=int, default=50, help="messages in scenarios a and b")
    p.add_argument("--rate", type=int, default=20, help="messages per second in scenario c")
    p.add_argument("--rate-messages", type=int, default=40, help="messages in scenario c")
    p.add_argument("--p2p-messages", type=int, default=10000, help="messages in scenario d")
    p.add_argument("--wait", type=float, default=20.0, help="seconds to wait for any one step before giving up")
    p.add_argument("--no-install", action="store_true", help="do not apt-get anything")
    p.add_argument("--no-pin", action="store_true", help="do not pin to cores")
    p.add_argument("--no-tls", action="store_true", help="skip the TLS storm and memory (g)")
    p.add_argument("--json", help="also write every run's raw figures to this file")
    p.add_argument("--write-readme", action="store_true", help="record the table in bench/README.md and README.rst")
    args = p.parse_args(argv)
    bad = set(args.servers) - {"pyhasses", "nchan"}
    if bad:
        p.error(f"unknown server(s): {', '.join(sorted(bad))}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    command = " ".join(["python3", "bench/run.py", *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    if not args.no_install:
        install("nchan" in args.servers)
    results = run_all(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    text = report(args, results, command)
    print(text)
    if args.write_readme:
        write_readme(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
