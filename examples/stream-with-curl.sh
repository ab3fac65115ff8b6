#!/bin/sh
# Watch a stream as a browser gets it: -N prints each event as it arrives,
# -sS is quiet but says why when nothing answers;
# the Connection header is required, as by hasses (browsers always send it).
# PYHASSES_STREAM overrides the URL.
exec curl -sSN -H 'Connection: keep-alive' "${PYHASSES_STREAM:-http://127.0.0.1:8080/sse?subscribe=room1}"
