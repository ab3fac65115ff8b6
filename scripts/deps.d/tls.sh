#!/bin/sh
# tests/test_tls_streams.py checks that curl --cacert receives an event.
exec "$(dirname "$0")/../apt-install" "TLS curl test" curl ca-certificates
