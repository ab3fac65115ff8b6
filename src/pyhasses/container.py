"""The container image's entry point (``python3 -m pyhasses.container``).

It turns the image's ``PYHASSES_*`` environment variables and the arguments
of ``podman run IMAGE ...`` into one pyhasses command line and replaces
itself with the daemon (which then is the container's main process, so
SIGTERM reaches it and the drain applies).  Arguments that do not start
with ``-`` are a command run instead (``pyhasses-ctl ...``, ``sh``).

The rule it adds: publishing that faces the container network needs a
credential.  The control port listens on every address only with a control
secret (``--control-secret-file``); asked to listen elsewhere than loopback
without one, the entry point refuses to start.  ``--healthcheck`` is the
image's HEALTHCHECK: ``GET /healthz`` on the metrics port.

Owns: the image's variables and their defaults, that rule, the health
check.  Must not touch: the daemon's option syntax or validation (it
composes options and lets pyhasses.cli parse them), any socket but the
health check's own.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import shlex
import sys
import tempfile
from typing import List, Mapping, Optional, Sequence

from . import cli, config
from .settings import SettingsError

NAME = "pyhasses-container"

#: The variables' defaults (README.rst, section Container, lists what each becomes).
DEFAULTS = {
    "PYHASSES_SSE_PORT": "8080",
    "PYHASSES_URL": "/sse",
    "PYHASSES_CONTROL_PORT": "8085",
    "PYHASSES_METRICS_PORT": "9108",
    "PYHASSES_DRAIN": "5",
}

#: Where podman and docker mount the secrets named so (``--secret NAME``).
SECRET_FILE = "/run/secrets/pyhasses_control_secret"
PUBLISHER_KEY_FILE = "/run/secrets/pyhasses_publisher_key"

SECRET_OPTION = "--control-secret-file"
PUBLISHER_KEY_OPTION = "--publisher-key"


class Refusal(Exception):
    """A start the entry point will not make; its text is the reason."""


def _get(environ: Mapping[str, str], name: str) -> str:
    return environ.get(name, DEFAULTS.get(name, "")).strip()


def credential_file(environ: Mapping[str, str], variable: str, default_path: str) -> Optional[str]:
    """The file a variable names (it must exist), else the default path
    when something is mounted there, else None."""
    named = environ.get(variable, "").strip()
    if named:
        if not os.path.isfile(named):
            raise Refusal(f"{variable}={named}: no such file")
        return named
    return default_path if os.path.isfile(default_path) else None


def command_line(environ: Mapping[str, str], args: Sequence[str],
                 secret_file: Optional[str], publisher_key: Optional[str]) -> List[str]:
    """The daemon's argv: the variables' options first, then PYHASSES_OPTS,
    then the arguments of ``podman run`` (later options win)."""
    argv = ["pyhasses", "-nodaemon", f"-p={_get(environ, 'PYHASSES_SSE_PORT')}",
            f"-murl={_get(environ, 'PYHASSES_URL')}"]
    control_port = _get(environ, "PYHASSES_CONTROL_PORT")
    if control_port:
        if secret_file:
            everywhere = f"*:{control_port}" if control_port.isdigit() else control_port
            argv += [f"-cp={everywhere}", SECRET_OPTION, secret_file]
        else:
            argv.append(f"-cp={control_port}")  # a bare port is loopback: `podman exec` publishers only
    if publisher_key:
        argv += [PUBLISHER_KEY_OPTION, publisher_key]
    for variable, option in (("PYHASSES_METRICS_PORT", "--metrics-port"), ("PYHASSES_DRAIN", "--drain"),
                             ("PYHASSES_FIFO", "-fifo")):
        value = _get(environ, variable)
        if value:
            argv.append(f"{option}={value}")
    argv += shlex.split(environ.get("PYHASSES_OPTS", ""))
    argv += list(args)
    return argv


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name may resolve to anything


def _option_dest(long_name: str) -> Optional[str]:
    return next((opt.dest for opt in cli.OPTIONS if opt.long == long_name), None)


def exposure_refusal(argv: Sequence[str]) -> Optional[str]:
    """Why this command line must not start, when its control port would
    listen beyond loopback without a control secret; None otherwise.  A
    command line pyhasses itself would refuse is left to pyhasses."""
    try:
        raw = cli.with_config_file(cli.parse_args(argv[1:]))
        secret_dest = _option_dest(SECRET_OPTION)
        has_secret = secret_dest is not None and raw.get(secret_dest) is not None
        settings = cli.build_settings(dict(raw))
    except (cli.UsageError, SettingsError, config.ConfigError, OSError):
        return None
    control = settings.control
    if control is None or has_secret:
        return None
    if control.hosts and all(_is_loopback(host) for host in control.hosts):
        return None
    return (f"refusing to open the control port on {control.describe()} without {SECRET_OPTION}: "
            f"anyone on the container network could publish.  Mount the secret at {SECRET_FILE} "
            f"(or set PYHASSES_CONTROL_SECRET_FILE or PYHASSES_CONTROL_SECRET), or publish over "
            f"HTTP with {PUBLISHER_KEY_OPTION}")


def _secret_from_variable(environ: Mapping[str, str]) -> Optional[str]:
    """PYHASSES_CONTROL_SECRET written to a private file, for
    --control-secret-file; None without the variable."""
    secret = environ.get("PYHASSES_CONTROL_SECRET", "")
    if not secret:
        return None
    fd, path = tempfile.mkstemp(prefix="pyhasses-control-secret-")  # mode 0600
    with os.fdopen(fd, "w") as out:
        out.write(secret)
    return path


def healthcheck(environ: Mapping[str, str], timeout: float = 4.0) -> int:
    """0 when the metrics port answers ``GET /healthz`` with 200, else 1."""
    spec = _get(environ, "PYHASSES_METRICS_PORT")
    if not spec:
        print(f"{NAME}: no health check: PYHASSES_METRICS_PORT is empty", file=sys.stderr)
        return 1
    host, _, port = spec.rpartition(":")
    host = host.strip("[]")
    if host in ("", "*", "0.0.0.0", "::", "localhost"):
        host = "127.0.0.1"
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        body = response.read(4096)
    except OSError as exc:
        print(f"{NAME}: health check on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    print(body.decode("utf-8", "replace").strip())
    return 0 if response.status == 200 else 1


def main(argv: Optional[Sequence[str]] = None, environ: Optional[Mapping[str, str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    environ = dict(os.environ if environ is None else environ)
    if args == ["--healthcheck"]:
        return healthcheck(environ)
    if args and not args[0].startswith("-"):
        os.execvp(args[0], args)
    try:
        secret_file = _secret_from_variable(environ) or credential_file(
            environ, "PYHASSES_CONTROL_SECRET_FILE", SECRET_FILE)
        publisher_key = credential_file(environ, "PYHASSES_PUBLISHER_KEY_FILE", PUBLISHER_KEY_FILE)
        daemon_argv = command_line(environ, args, secret_file, publisher_key)
        reason = exposure_refusal(daemon_argv)
        if reason:
            raise Refusal(reason)
    except Refusal as exc:
        print(f"{NAME}: {exc}", file=sys.stderr)
        return cli.EXIT_USAGE
    environ.pop("PYHASSES_CONTROL_SECRET", None)  # the daemon needs only the file
    print(f"{NAME}: {shlex.join(daemon_argv)}", flush=True)
    os.execve(*_daemon_program(daemon_argv), environ)
    return 1  # not reached: exec replaced this process


def _daemon_program(daemon_argv: List[str]):
    """The ``pyhasses`` script installed beside this interpreter (so that
    the process is named pyhasses), else this interpreter's ``-m pyhasses``."""
    script = os.path.join(os.path.dirname(sys.executable), "pyhasses")
    if os.access(script, os.X_OK):
        return script, [script, *daemon_argv[1:]]
    return sys.executable, [sys.executable, "-m", "pyhasses", *daemon_argv[1:]]


if __name__ == "__main__":
    sys.exit(main())
