import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from support import Daemon  # noqa: E402


@pytest.fixture
def daemon_factory(tmp_path):
    """Start daemons with extra arguments; all are stopped at the end."""
    started = []

    def start(*extra, **kw):
        d = Daemon(tmp_path, *extra, **kw)
        started.append(d)
        return d

    yield start
    for d in started:
        if d.proc is not None and d.alive():
            d.stop()


@pytest.fixture
def daemon(daemon_factory):
    """A daemon with a control port and a FIFO, on free loopback ports."""
    return daemon_factory(fifo=True)
