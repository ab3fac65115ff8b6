"""man/pyhasses.8 stays in step with the code: every option and command is
documented, and man renders the page without a warning."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from pyhasses import __version__
from pyhasses.cli import COMMANDS_HELP, OPTIONS
from support import ROOT

MAN_PAGE = ROOT / "man" / "pyhasses.8"


def roff(name: str) -> str:
    return name.replace("-", r"\-")


@pytest.fixture(scope="module")
def page() -> str:
    if not MAN_PAGE.exists():
        pytest.skip(f"{MAN_PAGE} is not part of this tree")
    return MAN_PAGE.read_text()


def test_every_option_is_documented(page):
    missing = [name for opt in OPTIONS for name in (opt.long, *opt.legacy)
               if not re.search(re.escape(roff(name)) + r"(?![\w\\])", page)]
    assert missing == []


def test_every_control_command_is_documented(page):
    commands = set(re.findall(r'^\s+"([a-z_]+)(?::<sub>)?"', COMMANDS_HELP, re.M))
    commands |= set(re.findall(r'\| "([a-z_]+)"', COMMANDS_HELP))
    assert {"status", "tcpstatus", "loglevel_debug", "reinit_disable", "tcpsubscribedclients"} <= commands
    missing = [c for c in sorted(commands) if not re.search(rf"\b{c}\b", page)]
    assert missing == []


def test_page_names_this_version(page):
    assert f'"pyhasses {__version__}"' in page.splitlines()[2]


def test_sections_an_operator_looks_for(page):
    for section in ("SYNOPSIS", "OPTIONS", '"CONFIG FILE"', '"CONTROL CHANNELS"', "SIGNALS",
                    '"EXIT STATUS"', "FILES", "EXAMPLES"):
        assert re.search(rf"^\.SH {section}$", page, re.M), section


def test_man_renders_without_warnings(page):
    if shutil.which("man") is None:
        pytest.skip("man is not installed (scripts/deps.d/service.sh installs man-db)")
    env = dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8")
    done = subprocess.run(["man", "--warnings", "-l", str(MAN_PAGE)], capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode == 0
    assert done.stderr == ""
    assert "pyhasses - Server-Sent Events notification daemon" in done.stdout


def test_pyhasses_ctl_page_renders_without_warnings():
    page = MAN_PAGE.with_name("pyhasses-ctl.1")
    if not page.exists() or shutil.which("man") is None:
        pytest.skip("no pyhasses-ctl.1 in this tree, or man is not installed")
    env = dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8")
    done = subprocess.run(["man", "--warnings", "-l", str(page)], capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode == 0 and done.stderr == ""
    for word in ("send", "status", "clients", "count", "--fifo", "--ack", "--timeout"):
        assert word in done.stdout


def test_every_tcpstatus_key_is_documented(page, daemon):
    """Read from a running daemon, so a key added later must be added here too."""
    keys = set(daemon.control_json("tcpstatus"))
    entry = page.split(".B tcpstatus\n", 1)[1].split(".TP", 1)[0]
    missing = sorted(k for k in keys | {"certsubject", "certexpires"} if not re.search(rf"\b{k}\b", entry))
    assert missing == []


def test_see_also_names_the_control_tool(page):
    see_also = page.split('.SH "SEE ALSO"', 1)[1].split(".SH", 1)[0]
    assert r".BR pyhasses\-ctl (1)" in see_also
