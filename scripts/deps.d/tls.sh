#!/bin/sh
# tests/test_tls_streams.py checks that curl --cacert receives an event.
set -eu
command -v curl >/dev/null 2>&1 && exit 0
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends curl ca-certificates
