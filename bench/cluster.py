#!/usr/bin/env python3
"""The cluster benchmark (issue 13): one node alone against two nodes joined
through Redis, on this machine, with the load generator of bench/run.py.

    python3 bench/cluster.py                       # N = 10,000; latency at 1,000 msg/s to one stream; 3 runs
    python3 bench/cluster.py --n 500 --runs 1      # a quick look

What runs, each on loopback and each stopped by its pid:

- alone: ``pyhasses -p -cp -murl`` pinned to core 0; the load generator
  (core 1) subscribes N streams to it and publishes on its control port;
- cluster: a private ``redis-server`` (its own port and temporary
  directory, no persistence) and two nodes with ``--redis``: node S holds
  the N streams; node P takes the publishes.  Every message crosses Redis
  (``XADD`` on P, ``XREAD`` on S) before it reaches a stream.

Where each runs (``--placement``):

- ``apart`` (the default): S on core 0, as the node alone is; P and Redis,
  which stand for the other hosts of a deployment, on core 1 with the load
  generator (which sleeps between the paced publishes of scenario c).  S
  gets exactly the CPU the node alone gets, so the figures compare what a
  node pays to read its messages from Redis instead of its control port.
- ``shared``: S, P and Redis all on core 0, the load generator on core 1:
  the cluster gets no more CPU than the node alone, and each message wakes
  three processes on one core.  The worst case, not a deployment.

Figures (medians over ``--runs``): broadcast deliveries per second at N,
acked one by one (scenario a of bench/README.md) and in one write (b);
publish-to-delivery latency p50/p99 at ``--rate`` messages per second to
``--latency-n`` streams (scenario c; one by default, "a client on another
node" as issue 13 puts it: with 100, S spends most of its core on the
fan-out at 1,000 msg/s, and the figure measures that queue more than the
hop).  Targets: cluster deliveries/s at least 0.7x alone; the Redis hop
adds at most 1 ms at p50.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
_spec = importlib.util.spec_from_file_location("bench_run", BENCH / "run.py")
run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run)

REDIS_SERVER = "/usr/bin/redis-server"


class Node:
    """A pyhasses process; ``args`` beyond the ports."""

    def __init__(self, workdir: Path, core, name: str, *args):
        self.workdir, self.core, self.name, self.args = workdir, core, name, list(args)
        self.port, self.pub_port = run.free_port(), run.free_port()
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
        argv = [sys.executable, "-m", "pyhasses", "-nodaemon", "-q", f"-p={self.port}", f"-cp={self.pub_port}",
                "-murl=/sse", *self.args]
        self.log = open(workdir / f"{name}.log", "ab")
        self.proc = subprocess.Popen(run.pinned(core, argv), env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=run.raise_nofile, cwd=str(workdir))
        run.wait_port(self.pub_port, self.proc)
        run.wait_port(self.port, self.proc)
        self.pid = self.proc.pid

    def stop(self) -> None:
        run.stop(self.proc)
        self.log.close()


class Redis:
    def __init__(self, workdir: Path, core):
        self.port = run.free_port()
        data = workdir / f"redis-{self.port}"
        data.mkdir()
        argv = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(data), "--save", "",
                "--appendonly", "no", "--daemonize", "no", "--logfile", str(data / "redis.log")]
        self.proc = subprocess.Popen(run.pinned(core, argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        run.wait_port(self.port, self.proc)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        run.stop(self.proc)


def loadgen(exe: Path, sub_port: int, pub_port: int, pid: int, n: int, only: str, args, core) -> dict:
    argv = [str(exe), "--server", "pyhasses", "--port", str(sub_port), "--pub-port", str(pub_port), "--n", str(n),
            "--mode", "broadcast", "--server-pid", str(pid), "--only", only, "--messages", str(args.messages),
            "--rate", str(args.rate), "--rate-messages", str(args.rate_messages), "--wait", str(args.wait)]
    proc = subprocess.run(run.pinned(core, argv), capture_output=True, text=True, preexec_fn=run.raise_nofile,
                          timeout=args.wait * 8 + n / 100)
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed with {proc.returncode}: {proc.stderr[-2000:]}")
    import json

    return {r["scenario"]: r for r in map(json.loads, (x for x in proc.stdout.splitlines() if x.startswith("{")))}


def one_run(exe: Path, workdir: Path, args, cores) -> dict:
    server_core, other_core = cores
    # P and Redis stand for other hosts: apart, they leave S's core to S
    elsewhere = other_core if args.placement == "apart" else server_core
    out = {}
    for setup in ("alone", "cluster"):
        started = []
        try:
            if setup == "alone":
                subs = pubs = Node(workdir, server_core, "alone")
                started.append(subs)
            else:
                redis = Redis(workdir, elsewhere)
                started.append(redis)
                subs = Node(workdir, server_core, "streams", f"--redis={redis.url}")
                started.append(subs)
                pubs = Node(workdir, elsewhere, "publisher", f"--redis={redis.url}")
                started.append(pubs)
            fan = loadgen(exe, subs.port, pubs.pub_port, subs.pid, args.n, "ab", args, other_core)
            lat = loadgen(exe, subs.port, pubs.pub_port, subs.pid, args.latency_n, "c", args, other_core)
        finally:
            for proc in reversed(started):
                proc.stop()
        out[setup] = {
            "a_deliveries_per_s": fan["a"]["deliveries_per_s"], "a_lost": fan["a"]["lost"],
            "b_deliveries_per_s": fan["b"]["deliveries_per_s"], "b_lost": fan["b"]["lost"],
            "c_p50_ms": lat["c"]["p50_ms"], "c_p99_ms": lat["c"]["p99_ms"], "c_lost": lat["c"]["lost"],
            "saturated": any(r.get("saturated") for r in (fan["a"], fan["b"], lat["c"])),
        }
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10000, help="streams for the broadcast figures (default 10000)")
    p.add_argument("--latency-n", type=int, default=1, help="streams for the latency figures (default 1)")
    p.add_argument("--rate", type=int, default=1000, help="messages per second for the latency (default 1000)")
    p.add_argument("--rate-messages", type=int, default=3000, help="messages sent at that rate (default 3000)")
    p.add_argument("--messages", type=int, default=50, help="broadcast messages per scenario (default 50)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--wait", type=float, default=20.0)
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    p.add_argument("--placement", choices=("apart", "shared"), default="apart",
                   help="apart: the streams' node on core 0 alone, the publishing node and Redis on core 1 with the "
                        "load generator (default); shared: all three on core 0")
    args = p.parse_args(argv)
    cores = (0, 1) if (os.cpu_count() or 1) >= 2 and not args.no_pin else (None, None)
    runs = []
    with tempfile.TemporaryDirectory(prefix="pyhasses-cluster-bench-") as tmp:
        workdir = Path(tmp)
        exe = run.build_loadgen(workdir)
        for i in range(args.runs):
            runs.append(one_run(exe, workdir, args, cores))
            print(f"run {i + 1}: {runs[-1]}", file=sys.stderr)
    med = {setup: {k: statistics.median(r[setup][k] for r in runs) for k in runs[0][setup] if k != "saturated"}
           for setup in ("alone", "cluster")}
    placement = args.placement if cores[0] is not None else "not pinned"
    print(f"pyhasses cluster benchmark: {args.runs} run(s), N = {args.n}, latency at {args.rate} msg/s to "
          f"{args.latency_n} streams; {os.cpu_count()} cores; placement {placement}")
    print(f"{'':34} {'alone':>12} {'via Redis':>12} {'ratio':>8}")
    for key, label in (("a_deliveries_per_s", "a broadcast acked: deliveries/s"),
                       ("b_deliveries_per_s", "b broadcast batch: deliveries/s"),
                       ("c_p50_ms", "c latency p50 ms"), ("c_p99_ms", "c latency p99 ms"),
                       ("a_lost", "a lost"), ("b_lost", "b lost"), ("c_lost", "c lost")):
        alone, cluster = med["alone"][key], med["cluster"][key]
        ratio = f"{cluster / alone:.2f}x" if alone else "-"
        print(f"{label:34} {alone:>12.3f} {cluster:>12.3f} {ratio:>8}")
    saturated = any(r[s]["saturated"] for r in runs for s in r)
    hop = med["cluster"]["c_p50_ms"] - med["alone"]["c_p50_ms"]
    ok_rate = med["cluster"]["b_deliveries_per_s"] >= 0.7 * med["alone"]["b_deliveries_per_s"]
    print(f"target deliveries/s via Redis >= 0.7x alone (b): {'met' if ok_rate else 'NOT met'}")
    print(f"target Redis hop adds <= 1 ms at p50: {'met' if hop <= 1.0 else 'NOT met'} ({hop:+.3f} ms)")
    if saturated:
        print("! the load generator saturated its core in some run: those figures are not to be trusted")
    lost = any(med[s][k] for s in med for k in ("a_lost", "b_lost", "c_lost"))
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
