"""The benchmark keeps working: bench/run.py end to end at N = 200, one run.

Not a performance test (figures are not judged here, see bench/README.md):
it checks that the load generator compiles, that every scenario (TLS too) runs against
pyhasses (and nginx+nchan when installed), that nothing is lost, and that
the report is printed.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import ROOT

NCHAN = shutil.which("nginx") and Path("/usr/lib/nginx/modules/ngx_nchan_module.so").exists()


@pytest.mark.timeout(300)
def test_benchmark_runs_every_scenario_at_n_200(tmp_path):
    servers = ["pyhasses", "nchan"] if NCHAN else ["pyhasses"]
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--n", "200", "--runs", "1", "--no-install",
         "--servers", ",".join(servers), "--messages", "10", "--rate", "50", "--rate-messages", "10",
         "--p2p-messages", "500", "--wait", "15", "--json", str(out)],
        capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    for server in servers:
        got = {r["scenario"]: r for r in results if r["server"] == server}
        assert sorted(got) == list("abcdef") + ["ge", "gf"], (server, sorted(got))
        assert got["e"]["established"] == 200 and got["e"]["handshakes_per_s"] > 0
        assert got["ge"]["established"] == 200, got["ge"]  # over TLS
        assert got["f"]["rss_after"] > 0
        for scenario in "abcd":
            assert got[scenario]["received"] == got[scenario]["expected"] > 0, got[scenario]
        assert got["a"]["expected"] == 200 * 10 and got["d"]["expected"] == 500
        assert 0 <= got["a"]["p50_ms"] <= got["a"]["p99_ms"] <= got["a"]["max_ms"]
    assert "pyhasses N=200" in proc.stdout
    assert "command:  python3 bench/run.py" in proc.stdout


@pytest.mark.timeout(200)
def test_cluster_benchmark_runs_alone_and_through_redis_at_n_200():
    """bench/cluster.py end to end: a node alone, then two nodes and a
    private Redis; every scenario delivers everything in both set-ups."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "cluster.py"), "--n", "200", "--runs", "1", "--messages", "10",
         "--rate", "200", "--rate-messages", "40", "--wait", "15"],
        capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "N = 200" in proc.stdout and "placement apart" in proc.stdout, proc.stdout
    rows = {line[:34].strip(): line[34:].split() for line in proc.stdout.splitlines() if line[:1] in "abc"}
    for scenario in "abc":
        assert rows[f"{scenario} lost"][:2] == ["0.000", "0.000"], proc.stdout
    assert float(rows["b broadcast batch: deliveries/s"][1]) > 0, proc.stdout
    assert "target Redis hop adds <= 1 ms at p50" in proc.stdout
