#!/bin/sh
# redis-server for the cluster tests (issue 13): the tests start their own
# instance on a free port in a temporary directory, never the system one, so
# installing must not start the system's redis-server.
exec "$(dirname "$0")/../apt-install" --no-services "Redis cluster tests" redis-server
