#!/bin/sh
# System packages for the service tests (issue 4): the Debian build tools and
# Debian's own python3 modules (the .deb is built and tested against them),
# lintian, curl for the integration script, man-db for the man page check.
# Idempotent: apt-get update runs only when something is missing.
set -eu
PKGS="debhelper dh-python python3-all python3-setuptools python3-pytest
python3-pytest-timeout python3-cryptography python3-daemon python3-httptools
lintian curl man-db fakeroot build-essential adduser logrotate"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "scripts/deps.d/service.sh: missing packages:$missing (run as root to install)" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
