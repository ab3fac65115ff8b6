#!/bin/sh
# nginx and Apache, for tests/test_proxy_snippets.py: it checks the README's
# reverse-proxy snippets and proxies a stream through each, on loopback, with
# its own configuration.  No system web server is started.
exec "$(dirname "$0")/../apt-install" --no-services "proxy snippet tests" nginx apache2
