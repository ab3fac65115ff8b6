#!/usr/bin/env python3
"""Regenerates README.rst's option table from ``pyhasses.cli.OPTIONS``.

    python3 scripts/readme_options.py          # rewrite the table in README.rst
    python3 scripts/readme_options.py --check  # exit 1 if README.rst is out of date

The table sits between the two marker comments below; everything else in
README.rst is left alone.  tests/test_readme.py runs the check.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from pyhasses.cli import OPTIONS  # noqa: E402
from pyhasses.settings import Settings  # noqa: E402

README = ROOT / "README.rst"
BEGIN = ".. begin options table: generated from cli.OPTIONS by scripts/readme_options.py"
END = ".. end options table"
_DEFAULT_IN_HELP = re.compile(r"\s*\(default:? ([^()]*(?:\([^()]*\)[^()]*)*)\)")
_REQUIRED = {"port", "match_url"}


def default_of(opt) -> str:
    """The default as the help text states it, else the Settings field's."""
    stated = _DEFAULT_IN_HELP.search(opt.help)
    if stated:
        return stated.group(1)
    if opt.dest in _REQUIRED:
        return "required"
    if opt.metavar is None:
        return "off"
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    field = fields.get(opt.dest)
    if field is None or field.default in (None, False, dataclasses.MISSING):
        return "off"
    return str(field.default)


def meaning_of(opt) -> str:
    return _DEFAULT_IN_HELP.sub("", opt.help).strip()


def shown_default(default: str) -> str:
    """A value in literal type (``*`` and ``;`` are reST markup); words as they are."""
    if default in ("", "required", "off") or " " in default:
        return default
    return f"``{default}``"


def spelled(name: str, metavar, legacy: bool) -> str:
    if metavar is None:
        return f"``{name}``"
    return f"``{name}={metavar}``" if legacy else f"``{name} {metavar}``"


def rows():
    for opt in OPTIONS:
        legacy = ", ".join(spelled(n, opt.metavar, True) for n in opt.legacy) or "(none)"
        yield legacy, spelled(opt.long, opt.metavar, False), default_of(opt), meaning_of(opt)
    yield "``-h``, ``-help``", "``--help``", "", "print the help and exit"
    yield "``-v``, ``-V``, ``-version``", "``--version``", "", "print the version and exit"


def table() -> str:
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 24 26 16 34",
        "",
        "   * - hasses flag",
        "     - long option",
        "     - default",
        "     - meaning",
    ]
    for legacy, long, default, meaning in rows():
        lines += [f"   * - {legacy}", f"     - {long}", f"     - {shown_default(default)}", f"     - {meaning}"]
    return "\n".join(lines)


def render(readme: str) -> str:
    """``readme`` with the table between the markers replaced."""
    start = readme.index(BEGIN) + len(BEGIN)
    stop = readme.index(END, start)
    return readme[:start] + "\n\n" + table() + "\n\n" + readme[stop:]


def main(argv) -> int:
    current = README.read_text()
    wanted = render(current)
    if "--check" in argv:
        if wanted != current:
            print("README.rst's option table is out of date: run python3 scripts/readme_options.py",
                  file=sys.stderr)
            return 1
        return 0
    README.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
