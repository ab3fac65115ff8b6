"""The Debian package end to end: tests/debian/integration.sh builds the .deb
(its build runs this suite under Debian's python3 and modules), installs it,
runs the unit's ExecStart as the pyhasses user, publishes through the FIFO,
receives with curl, and purges."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from support import NO_SYSTEM_CHANGE

SCRIPT = Path(__file__).resolve().parent / "debian" / "integration.sh"
SKIP = 77


@pytest.mark.timeout(1800)
def test_debian_package_builds_installs_serves_and_purges():
    if NO_SYSTEM_CHANGE:
        pytest.skip("PYHASSES_TEST_NO_SYSTEM is set: no package is installed or purged")
    if os.environ.get("PYHASSES_PACKAGE_BUILD"):
        pytest.skip("running inside the package build: the package cannot build itself here")
    if not (SCRIPT.parent.parent.parent / "debian" / "rules").exists():
        pytest.skip("no debian/ directory in this tree")
    if os.geteuid() != 0:
        pytest.skip(f"installing a package needs root; running as uid {os.geteuid()}")
    done = subprocess.run(["sh", str(SCRIPT)], capture_output=True, text=True, timeout=1700)
    print(done.stdout)
    if done.returncode == SKIP:
        pytest.skip(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "integration: curl received: data: hello through the FIFO" in done.stdout
    assert done.stdout.rstrip().endswith("integration: OK")
