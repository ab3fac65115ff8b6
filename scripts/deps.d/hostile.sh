#!/bin/sh
# libfaketime: tests/test_hostile.py restarts the daemon under a stepped-back
# and a frozen wall clock (event ids of two runs must never meet).
exec "$(dirname "$0")/../apt-install" --optional "clock tests (issue 15)" faketime
