#!/bin/sh
# System packages for the service tests (issue 4): the Debian build tools and
# Debian's own python3 modules (the .deb is built and tested against them),
# lintian, curl for the integration script, man-db for the man page check.
exec "$(dirname "$0")/../apt-install" "Debian package tests" \
    debhelper dh-python python3-all python3-setuptools python3-pytest \
    python3-pytest-timeout python3-cryptography python3-daemon python3-httptools python3-jwt python3-hiredis \
    lintian curl man-db fakeroot build-essential adduser logrotate
