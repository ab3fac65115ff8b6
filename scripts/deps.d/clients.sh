#!/bin/sh
# Debian's Chromium and ChromeDriver for tests/test_browser.py (the browser
# tests skip without them).  Safe to run again: installs only what is missing,
# and refreshes the package lists only when a package is not known yet.
set -eu
missing=""
for pkg in chromium chromium-driver; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing="$missing $pkg"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "clients.sh: not root; cannot install$missing (browser tests will be skipped)" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt_get() { apt-get -o DPkg::Lock::Timeout=600 "$@"; }
apt_get update -qq
apt_get install -y -qq --no-install-recommends $missing >/dev/null
