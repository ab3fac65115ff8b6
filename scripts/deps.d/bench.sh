#!/bin/sh
# The benchmark's smoke test (tests/test_bench_smoke.py) compiles
# bench/loadgen.c with gcc (and OpenSSL for TLS) and compares pyhasses with
# nginx and its nchan module.  Without them the smoke test still runs
# pyhasses alone, so a failed install is a warning.  Installing nginx must
# not start the system's nginx.
exec "$(dirname "$0")/../apt-install" --optional --no-services "benchmark smoke test" \
    gcc libssl-dev openssl nginx libnginx-mod-nchan
