#!/bin/sh
# Debian's Chromium for tests/test_browser.py and PHP for the PHP example in
# tests/test_examples.py (those tests skip without them).
exec "$(dirname "$0")/../apt-install" "browser and PHP tests" chromium php-cli
