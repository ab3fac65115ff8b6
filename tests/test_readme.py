"""README.rst is what a newcomer reads first: it must describe every option
of this build, render on PyPI, and its start command must start the daemon."""

from __future__ import annotations

import io
import runpy

import pytest

from pyhasses.cli import OPTIONS
from support import ROOT

README = (ROOT / "README.rst").read_text()
FIX = "run python3 scripts/readme_options.py to regenerate the option table"


def test_every_long_option_is_in_the_readme():
    missing = [opt.long for opt in OPTIONS if f"``{opt.long}" not in README]
    assert not missing, f"README.rst does not mention {missing}: {FIX}"


def test_every_legacy_flag_is_in_the_readme():
    missing = [name for opt in OPTIONS for name in opt.legacy if f"``{name}" not in README]
    assert not missing, f"README.rst does not mention {missing}: {FIX}"


def test_option_table_matches_the_options_and_their_defaults():
    generator = runpy.run_path(str(ROOT / "scripts" / "readme_options.py"))
    assert generator["render"](README) == README, FIX


def test_readme_renders_as_restructuredtext_without_warnings():
    core = pytest.importorskip("docutils.core", reason="docutils is not installed (pip install '.[test]')")
    warnings = io.StringIO()
    core.publish_doctree(README, settings_overrides={"warning_stream": warnings, "report_level": 2,
                                                     "halt_level": 5})
    assert warnings.getvalue() == ""

