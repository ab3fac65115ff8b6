"""The config file: hasses.conf's form, read as if its lines came first on
the command line.

Owns: reading ``-config=FILE``, one option per line (``-p=8080``; long
options as ``--port 8080`` or ``--port=8080`` too), ``#`` comments, blank
lines, surrounding whitespace; the ``FILE:LINE: reason`` message of a bad
line.  Must not touch: what an option means (``cli.py`` converts each line
as it converts an argument) and anything after parsing.
"""

from __future__ import annotations

from typing import Callable, Iterator, Tuple


class ConfigError(Exception):
    """A config file that cannot be used; the text names the file and line.
    ``status`` is the exit status the same mistake has on the command line
    (an unknown switch is 1 in both places), 2 by default."""

    def __init__(self, text: str, status: int = 2):
        super().__init__(text)
        self.status = status


#: Switches that make no sense inside a file.
NOT_IN_FILE = {"config": "a config file cannot name another one"}


def read_lines(path: str) -> Iterator[Tuple[int, list]]:
    """(line number, arguments) for every line that holds an option."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        yield number, _arguments(line)


def _arguments(line: str) -> list:
    """``--port 8080`` is two arguments; every other line is one, spaces in
    a value (``-murl=/a b``) included."""
    name, space, rest = line.partition(" ")
    if name.startswith("--") and "=" not in name and space:
        return [name, rest.strip()]
    return [line]


def load(path: str, parse: Callable[[list], dict], error: type) -> dict:
    """The options the file sets, each line converted by ``parse``; a line
    that ``parse`` refuses (raising ``error``) becomes a ConfigError."""
    raw: dict = {}
    for number, args in read_lines(path):
        try:
            values = parse(args)
        except error as exc:
            raise ConfigError(f"{path}:{number}: {exc}", getattr(exc, "status", 2)) from None
        refused = _refused(values)
        if refused:
            raise ConfigError(f"{path}:{number}: {refused}")
        raw.update(values)
    return raw


def _refused(values: dict) -> str:
    if values.get("help") or values.get("version"):
        return "help and version switches belong on the command line"
    for key, reason in NOT_IN_FILE.items():
        if key in values:
            return reason
    return ""
