#!/bin/sh
# Debian's Chromium for tests/test_browser.py and PHP for the PHP example in
# tests/test_examples.py (those tests skip without them).  Safe to run again:
# does nothing when both are installed, else one apt-get update and install.
set -eu
missing=""
for pkg in chromium php-cli; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing="$missing $pkg"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "clients.sh: not root; cannot install$missing (browser and PHP tests will be skipped)" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt_get() { apt-get -o DPkg::Lock::Timeout=600 "$@"; }
apt_get update -qq
apt_get install -y -qq --no-install-recommends $missing >/dev/null
