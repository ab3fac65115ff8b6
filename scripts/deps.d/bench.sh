#!/bin/sh
# The benchmark's smoke test (tests/test_bench_smoke.py) compiles
# bench/loadgen.c with gcc (and OpenSSL for TLS) and compares pyhasses with nginx and its nchan
# module (Debian packages).  Installs only what is missing; without network
# the smoke test still runs pyhasses alone, so a failed install is a warning.
set -u
missing=""
for p in gcc libssl-dev openssl nginx libnginx-mod-nchan; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
export DEBIAN_FRONTEND=noninteractive
# Installing nginx must not start the system's nginx: forbid service starts
# while installing, as delivery.sh does.
made_policy=""
if [ ! -e /usr/sbin/policy-rc.d ] && [ "$(id -u)" = 0 ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
fi
trap '[ -z "$made_policy" ] || rm -f /usr/sbin/policy-rc.d' EXIT
if ! { apt-get update -qq && apt-get install -y -qq $missing >/dev/null; }; then
    echo "scripts/deps.d/bench.sh: could not install$missing" >&2
fi
exit 0
