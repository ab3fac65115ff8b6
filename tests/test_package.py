"""The package as a user gets it: a wheel built from this tree installs in a
fresh venv, both console scripts run, and README.rst's start command serves a
stream that pyhasses-ctl publishes to.

Offline where it can be (package builds forbid the network): the wheel is
built with this interpreter's setuptools when it has them, and the venv sees
the interpreter's own site-packages, so pip checks the dependencies against
what is there; only what is missing is fetched from the package index.
Slow for a unit test, so it is one test, bounded by its own timeout.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import ROOT, Daemon

BUILD_JUNK = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                                    ".pytest_cache", ".benchmarks", "bench")


def clean_env() -> dict:
    """No PYTHONPATH: the installed package must stand on its own."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def run(cmd, timeout=240, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=clean_env(), **kw)
    assert r.returncode == 0, f"{cmd} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def can_build_offline() -> bool:
    """Whether this interpreter has what pyproject.toml's build needs."""
    try:
        setuptools = importlib.metadata.version("setuptools")
        importlib.metadata.version("wheel")
    except importlib.metadata.PackageNotFoundError:
        return False
    return int(setuptools.split(".")[0]) >= 61


def readme_start_args() -> list:
    """The daemon's arguments in README.rst's first command."""
    readme = (ROOT / "README.rst").read_text()
    line = next(line for line in readme.splitlines() if ".venv/bin/pyhasses " in line)
    return shlex.split(line.split(".venv/bin/pyhasses ", 1)[1])


@pytest.mark.timeout(600)
def test_wheel_installs_and_runs_in_a_fresh_venv(tmp_path):
    if os.environ.get("PYHASSES_PACKAGE_BUILD"):
        pytest.skip("inside the Debian package build (debian/rules): this test is about the wheel")
    tree = tmp_path / "tree"
    shutil.copytree(ROOT, tree, ignore=BUILD_JUNK)  # the build must not write into the work tree
    wheels = tmp_path / "wheels"
    offline = ["--no-build-isolation"] if can_build_offline() else []
    run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", *offline, "-w", str(wheels), "-q"], cwd=tree)
    (wheel,) = wheels.glob("pyhasses-*.whl")

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)])
    bin_dir = venv / "bin"
    pip = [str(bin_dir / "pip"), "install", "-q", "--disable-pip-version-check"]
    local = subprocess.run([*pip, "--no-index", str(wheel)], capture_output=True, text=True, timeout=240,
                           env=clean_env())
    if local.returncode != 0:  # a dependency is not installed here: fetch it
        run([*pip, str(wheel)], timeout=480)
    assert Path(run([str(bin_dir / "python"), "-c", "import pyhasses; print(pyhasses.__file__)"],
                    cwd=tmp_path).stdout.strip()).is_relative_to(venv)

    version = run([str(bin_dir / "pyhasses"), "-v"], cwd=tmp_path).stdout
    assert re.fullmatch(r"pyhasses \d+\.\d+\.\d+\S*\n", version), version
    ctl_help = run([str(bin_dir / "pyhasses-ctl"), "--help"], cwd=tmp_path).stdout
    assert "send" in ctl_help and "--fifo" in ctl_help
    meta = run([str(bin_dir / "python"), "-c",
                "import importlib.metadata as m; d = m.metadata('pyhasses'); "
                "print(d['License']); print(d['Requires-Python']); print(len(d['Description']))"],
               cwd=tmp_path).stdout.split("\n")
    assert meta[0] == "GPL-2.0-or-later" and meta[1] == ">=3.11" and int(meta[2]) > 1000

    _installed_daemon_serves_readme_command(tmp_path, bin_dir)


class InstalledDaemon(Daemon):
    """README's start command run by the installed script, not this tree's
    sources, on free ports."""

    def __init__(self, tmp_path: Path, bin_dir: Path):
        super().__init__(tmp_path, start=False)
        swap = {r"-p=\d+": f"-p={self.port}", r"-cp=\d+": f"-cp={self.cport}"}
        self.args = [next((new for old, new in swap.items() if re.fullmatch(old, a)), a) for a in readme_start_args()]
        assert f"-p={self.port}" in self.args and f"-cp={self.cport}" in self.args and "-nodaemon" in self.args
        self.murl = next(a.split("=", 1)[1] for a in self.args if a.startswith("-murl="))
        self.command = [str(bin_dir / "pyhasses")]

    def start(self, wait_ready=True):
        self._logf = open(self.logpath, "ab")
        self.proc = subprocess.Popen([*self.command, *self.args], stdout=self._logf, stderr=subprocess.STDOUT,
                                     cwd=str(self.tmp), env=clean_env())
        if wait_ready:
            self.wait_ready()
        return self


def _installed_daemon_serves_readme_command(tmp_path: Path, bin_dir: Path):
    daemon = InstalledDaemon(tmp_path, bin_dir)
    try:
        daemon.start()
        client = daemon.sse("room1")
        r = run([str(bin_dir / "pyhasses-ctl"), "--port", str(daemon.cport), "send", "--ack", "room1",
                 "from the wheel"], timeout=30, cwd=tmp_path)
        assert "delivered: 1" in r.stdout
        assert client.read_event()["data"] == "from the wheel"
        client.close()
    finally:
        assert daemon.stop() == 0, daemon.log()
