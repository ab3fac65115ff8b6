#!/bin/sh
# Podman and what tests/test_container.py needs to build the image with no
# registry: debootstrap makes the Debian 12 base from Debian's mirror.  runc
# is named because podman takes crun or runc, and crun refuses the cgroup
# set-up of some machines (the tests run podman --runtime runc).  The tests
# run podman as root with --network host and podman's own overlay storage,
# so rootless helpers (uidmap, slirp4netns, fuse-overlayfs) are not needed.
# podman-compose reads examples/compose/ (its files must parse); the dnsname
# plugin lets containers on a podman network reach each other by name.
# Optional: without them the container tests skip and say why.
exec "$(dirname "$0")/../apt-install" --optional "container tests" podman runc debootstrap podman-compose \
    golang-github-containernetworking-plugin-dnsname
