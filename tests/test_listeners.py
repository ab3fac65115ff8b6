"""Listening sockets: what every accepted connection inherits from them."""

import socket

from pyhasses.service import bind_endpoint
from pyhasses.settings import Endpoint


def test_accepted_connections_inherit_nodelay_from_the_listener():
    # Streams and acknowledgements rely on TCP_NODELAY without a system
    # call per connection: the kernel copies it from the listener.
    socks = bind_endpoint(Endpoint(0, ("127.0.0.1", "::1")))
    try:
        for listener in socks:
            assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            host, port = listener.getsockname()[:2]
            with socket.create_connection((host, port), timeout=5):
                listener.setblocking(True)
                accepted, _ = listener.accept()
                with accepted:
                    assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        for s in socks:
            s.close()
