#!/bin/sh
# The Debian package end to end, as an operator meets it: build the .deb from
# a copy of this tree with Debian's own python3 (the build runs the test
# suite), lintian, apt-get install, run the unit's ExecStart line as the
# pyhasses user (systemd is not running here), publish through the FIFO in
# /run/pyhasses and receive the event with curl, then remove and purge and
# check that nothing is left but what policy allows (the system user).
#
# Needs root and the build dependencies (scripts/deps.d/service.sh).  Exits
# 77 (skip) when it cannot run here, 0 when every step passed.  Every wait
# has a deadline; the whole run is bounded by the timeouts below.
set -eu

SKIP=77
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PATH=/usr/sbin:/usr/bin:/sbin:/bin   # Debian's python3 and pytest, not a venv's
export PATH DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8

APT="-o DPkg::Lock::Timeout=300"   # other jobs on the machine may hold apt's lock
say() { echo "integration: $*"; }
fail() { echo "integration: FAILED: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || { say "skipped: needs root (apt-get install, runuser)"; exit $SKIP; }
for tool in dpkg-buildpackage apt-get lintian curl setpriv flock; do
    command -v "$tool" >/dev/null || { say "skipped: $tool is missing (scripts/deps.d/service.sh installs it)"; exit $SKIP; }
done
# One run at a time on a machine: two runs would install and purge the same
# package under each other.
exec 9>/var/lock/pyhasses-integration.lock
flock -w 1200 9 || fail "another integration run holds /var/lock/pyhasses-integration.lock"
if dpkg-query -W -f='${Status}' pyhasses 2>/dev/null | grep -q "installed"; then
    say "skipped: pyhasses is installed on this machine; not touching it"
    exit $SKIP
fi
if [ -e /run/pyhasses ]; then
    say "skipped: /run/pyhasses exists (a pyhasses service may be running here)"
    exit $SKIP
fi

WORK=$(mktemp -d /tmp/pyhasses-deb.XXXXXX)
DPID=""
CURL=""
INSTALLED=""
cleanup() {
    [ -n "$CURL" ] && kill "$CURL" 2>/dev/null || true
    [ -n "$DPID" ] && kill "$DPID" 2>/dev/null || true
    rm -rf /run/pyhasses
    if [ -n "$INSTALLED" ]; then
        apt-get $APT purge -y -qq pyhasses >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    limit=$1; what=$2; shift 2
    tries=$((limit * 10))
    while ! "$@" 2>/dev/null; do
        tries=$((tries - 1))
        [ "$tries" -gt 0 ] || fail "timed out after ${limit} s waiting for $what"
        sleep 0.1
    done
}

# -- build, in a copy: the worktree stays clean ---------------------------------
say "building in $WORK"
mkdir "$WORK/src"
(cd "$ROOT" && tar --exclude=./.venv --exclude=./.git --exclude=__pycache__ --exclude=.pytest_cache \
    --exclude=./.pybuild --exclude=./build -cf - .) | tar -xf - -C "$WORK/src"
# The copy is a git tree, so that what the build leaves behind shows.
(cd "$WORK/src" && git init -q && git add -A && git -c user.name=t -c user.email=t@localhost commit -qm copy) \
    || fail "git init in the copy"
# A python3 that is not Debian's first in PATH (pyenv, a venv), as on a
# developer's machine: the build must not use it.
mkdir "$WORK/other-python"
printf '#!/bin/sh\necho "not Debian python3" >&2\nexit 97\n' >"$WORK/other-python/python3"
chmod +x "$WORK/other-python/python3"
cp "$WORK/other-python/python3" "$WORK/other-python/python3.11"
if ! (cd "$WORK/src" && PATH="$WORK/other-python:$PATH" timeout 1200 dpkg-buildpackage -us -uc -b \
        >"$WORK/build.log" 2>&1); then
    tail -60 "$WORK/build.log"
    fail "dpkg-buildpackage"
fi
! grep -q "not Debian python3" "$WORK/build.log" || fail "the build ran a python3 that is not Debian's"
left=$(cd "$WORK/src" && git status --porcelain --untracked-files=all)
[ -z "$left" ] || fail "the build left files that .gitignore does not cover: $left"
grep -E "^(platform |=+ .*(passed|failed).* in )" "$WORK/build.log" | sed 's/^/integration: build tests: /' || true
say "build tests ran with Debian's httptools $(python3 -c 'import httptools; print(httptools.__version__)')"
VERSION=$(cd "$WORK/src" && dpkg-parsechangelog -S Version)
DEB="$WORK/pyhasses_${VERSION}_all.deb"
[ -f "$DEB" ] || fail "no $DEB"
stray=$(dpkg-deb -c "$DEB" | grep -E 'dist-packages/(man|conf|tests)/' || true)
[ -z "$stray" ] || fail "test-only files in the package: $stray"
say "built $(basename "$DEB")"

lintian --fail-on error "$DEB" >"$WORK/lintian.log" 2>&1 || { cat "$WORK/lintian.log"; fail "lintian reports errors"; }
sed -n '/^[EW]:/p' "$WORK/lintian.log" | sed 's/^/integration: lintian: /'

# -- install --------------------------------------------------------------------
INSTALLED=yes
(cd "$WORK" && timeout 600 apt-get $APT install -y -qq "./$(basename "$DEB")" >"$WORK/apt.log" 2>&1) \
    || { cat "$WORK/apt.log"; fail "apt-get install"; }
[ "$(/usr/bin/pyhasses -v)" = "pyhasses ${VERSION}" ] || fail "/usr/bin/pyhasses -v says $(/usr/bin/pyhasses -v)"
head -1 /usr/bin/pyhasses | grep -qx '#! */usr/bin/python3' || fail "/usr/bin/pyhasses does not run the system python3"
getent passwd pyhasses >/dev/null || fail "no pyhasses user after install"
[ "$(stat -c %U /var/log/pyhasses)" = pyhasses ] || fail "/var/log/pyhasses is not the pyhasses user's"
dpkg-query -W -f='${Conffiles}\n' pyhasses | grep -q " /etc/pyhasses/pyhasses.conf " || fail "pyhasses.conf is not a conffile"
for f in /etc/default/pyhasses /etc/logrotate.d/pyhasses /lib/systemd/system/pyhasses.service \
         /usr/share/man/man8/pyhasses.8.gz; do
    [ -f "$f" ] || fail "$f not installed"
done
if command -v systemd-analyze >/dev/null; then
    out=$(timeout 60 systemd-analyze verify /lib/systemd/system/pyhasses.service 2>&1) || true
    [ -z "$out" ] || fail "systemd-analyze verify: $out"
fi
ls /usr/share/doc/pyhasses/README.rst* >/dev/null 2>&1 || fail "README not in /usr/share/doc/pyhasses"
[ -f /usr/share/doc/pyhasses/examples/publish.py ] || fail "examples not in /usr/share/doc/pyhasses/examples"
grep -qx -- "-cp=8085" /etc/pyhasses/pyhasses.conf || fail "the packaged config has no control port"
say "installed: /usr/bin/pyhasses -v = pyhasses ${VERSION}"

# -- run the unit's ExecStart line as systemd would ---------------------------
UNIT=/lib/systemd/system/pyhasses.service
EXEC=$(sed -n 's/^ExecStart=//p' "$UNIT")
USER_=$(sed -n 's/^User=//p' "$UNIT")
[ "$(sed -n 's/^RuntimeDirectory=//p' "$UNIT")" = pyhasses ] || fail "the unit has no RuntimeDirectory=pyhasses"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
PYHASSES_OPTS=""
. /etc/default/pyhasses
# The operator's way to change the port: PYHASSES_OPTS wins over the config.
PYHASSES_OPTS="$PYHASSES_OPTS --port 127.0.0.1:$PORT"
# The packaged control port when it is free here, else another (the same
# option, given later, wins).
CPORT=8085
if ! python3 -c 'import socket; socket.create_server(("127.0.0.1", 8085)).close()' 2>/dev/null; then
    CPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    PYHASSES_OPTS="$PYHASSES_OPTS --control-port $CPORT"
fi
install -d -o "$USER_" -g "$USER_" -m 0750 /run/pyhasses   # RuntimeDirectory=
eval "set -- $EXEC"
say "starting as $USER_: $*"
setpriv --reuid="$USER_" --regid="$USER_" --init-groups "$@" >"$WORK/daemon.log" 2>&1 &
DPID=$!
alive() { kill -0 "$DPID" 2>/dev/null; }
serving() { alive || { cat "$WORK/daemon.log"; fail "the daemon exited"; }; grep -q "serving SSE" "$WORK/daemon.log"; }
wait_for 15 "the daemon to serve" serving
[ "$(cat /run/pyhasses/pyhasses.pid)" = "$DPID" ] || fail "pid file does not hold $DPID"
[ "$(ps -o user= -p "$DPID")" = "$USER_" ] || fail "the daemon does not run as $USER_"
[ "$(stat -c '%a %U %G' /run/pyhasses/fifo)" = "660 $USER_ $USER_" ] || fail "FIFO is $(stat -c '%a %U %G' /run/pyhasses/fifo)"
grep -q "Control port listens on 127.0.0.1:$CPORT, \[::1\]:$CPORT (loopback only)" "$WORK/daemon.log" \
    || { cat "$WORK/daemon.log"; fail "the control port is not on loopback"; }
ctl_out=$(timeout 30 /usr/bin/pyhasses-ctl --port "$CPORT" status) || fail "pyhasses-ctl status: $ctl_out"
echo "$ctl_out" | grep -q "^version: $VERSION" || fail "pyhasses-ctl status said: $ctl_out"
say "pyhasses-ctl status answers on the packaged control port ($CPORT)"

curl -sN --max-time 20 -H 'Connection: keep-alive' "http://127.0.0.1:$PORT/sse?subscribe=room1" >"$WORK/events" 2>&1 &
CURL=$!
connected() { grep -q "Connect from" "$WORK/daemon.log"; }
wait_for 10 "curl to connect" connected
echo 'room1=hello through the FIFO' >/run/pyhasses/fifo
received() { grep -q "^data: hello through the FIFO" "$WORK/events"; }
wait_for 10 "curl to receive the event" received
kill "$CURL" 2>/dev/null || true
wait "$CURL" 2>/dev/null || true
CURL=""
say "curl received: $(grep '^data:' "$WORK/events")"

kill -HUP "$DPID"   # ExecReload: reload, keep serving
sleep 0.3
alive || { cat "$WORK/daemon.log"; fail "SIGHUP ended the daemon"; }
kill -TERM "$DPID"
status=0
wait "$DPID" || status=$?
DPID=""
[ "$status" = 0 ] || { cat "$WORK/daemon.log"; fail "the daemon exited $status on SIGTERM"; }
[ ! -e /run/pyhasses/pyhasses.pid ] || fail "pid file left after SIGTERM"
rm -rf /run/pyhasses   # systemd removes RuntimeDirectory on stop
say "stopped cleanly"

# -- daemon mode as a sysvinit script would start it, and logrotate ---------------
if command -v logrotate >/dev/null; then
    install -d -o "$USER_" -g "$USER_" -m 0750 /run/pyhasses
    LOG=/var/log/pyhasses/pyhasses.log
    timeout 60 /usr/bin/pyhasses -config=/etc/pyhasses/pyhasses.conf -user="$USER_" --port "127.0.0.1:$PORT" \
        --control-port "127.0.0.1:$CPORT" \
        || fail "daemon mode did not start"
    DPID=$(cat /run/pyhasses/pyhasses.pid)
    [ "$(ps -o user= -p "$DPID")" = "$USER_" ] || fail "the daemon does not run as $USER_"
    grep -q "pyhasses: pyhasses .* serving SSE" "$LOG" || fail "no serving line in $LOG"
    timeout 60 logrotate -f -s "$WORK/logrotate.state" /etc/logrotate.d/pyhasses || fail "logrotate"
    [ -f "$LOG.1" ] || fail "logrotate did not rotate $LOG"
    reopened() { grep -q "SIGHUP: log file reopened" "$LOG"; }
    wait_for 10 "the daemon to reopen $LOG after logrotate's HUP" reopened
    echo 'status' >/run/pyhasses/fifo
    status_logged() { grep -q "status of pyhasses" "$LOG"; }
    wait_for 10 "the status block in the new log" status_logged
    kill -TERM "$DPID"
    gone() { ! kill -0 "$DPID" 2>/dev/null || grep -q '^State:.*Z' "/proc/$DPID/status"; }
    wait_for 10 "the daemon to end" gone
    DPID=""
    [ ! -e /run/pyhasses/pyhasses.pid ] || fail "pid file left after SIGTERM"
    rm -rf /run/pyhasses
    say "daemon mode: logrotate moved the log and the HUP made the daemon write a new one"
fi

# -- remove, purge, and what is left ----------------------------------------------
timeout 300 apt-get $APT remove -y -qq pyhasses >"$WORK/apt.log" 2>&1 || { cat "$WORK/apt.log"; fail "apt-get remove"; }
[ ! -e /usr/bin/pyhasses ] || fail "/usr/bin/pyhasses left after remove"
[ -f /etc/pyhasses/pyhasses.conf ] || fail "remove must keep the conffiles"
timeout 300 apt-get $APT purge -y -qq pyhasses >"$WORK/apt.log" 2>&1 || { cat "$WORK/apt.log"; fail "apt-get purge"; }
INSTALLED=""
for f in /etc/pyhasses /etc/default/pyhasses /etc/logrotate.d/pyhasses /var/log/pyhasses \
         /lib/systemd/system/pyhasses.service /usr/lib/python3/dist-packages/pyhasses \
         /usr/share/man/man8/pyhasses.8.gz /usr/share/doc/pyhasses /run/pyhasses; do
    [ ! -e "$f" ] || fail "$f left after purge"
done
left=$(find /etc /var/lib/systemd /usr /var/log -name '*pyhasses*' 2>/dev/null || true)
[ -z "$left" ] || fail "left after purge: $left"
dpkg-query -W -f='${Status}' pyhasses 2>/dev/null | grep -q "installed" && fail "dpkg still knows pyhasses as installed"
say "purged; left, as policy allows: the system user $(getent passwd pyhasses | cut -d: -f1,3)"
say "OK"
