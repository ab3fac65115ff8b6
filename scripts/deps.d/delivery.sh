#!/bin/sh
# nginx and Apache, for tests/test_proxy_snippets.py: it checks the README's
# reverse-proxy snippets and proxies a stream through each, on loopback, with
# its own configuration.  No system web server is started: while installing,
# policy-rc.d (if none exists) forbids starting services.
set -eu
missing=""
[ -x /usr/sbin/nginx ] || missing="$missing nginx"
[ -x /usr/sbin/apache2 ] || missing="$missing apache2"
[ -n "$missing" ] || exit 0
if [ "$(id -u)" != 0 ]; then
    echo "delivery.sh: need root to install:$missing (proxy snippet tests will be skipped)" >&2
    exit 0
fi
made_policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
fi
trap '[ -z "$made_policy" ] || rm -f /usr/sbin/policy-rc.d' EXIT
export DEBIAN_FRONTEND=noninteractive
# shellcheck disable=SC2086
apt-get install -y --no-install-recommends $missing >/dev/null || {
    apt-get update >/dev/null
    apt-get install -y --no-install-recommends $missing >/dev/null
}
