"""Listening sockets: what every accepted connection inherits from them."""

import socket

from pyhasses.service import bind_endpoint
from pyhasses.settings import Endpoint


def test_accepted_connections_inherit_nodelay_and_user_timeout_from_the_listener():
    # Streams and acknowledgements rely on TCP_NODELAY, and streams on
    # TCP_USER_TIMEOUT, without a system call per connection: the kernel
    # copies both from the listener.
    socks = bind_endpoint(Endpoint(0, ("127.0.0.1", "::1")), user_timeout=4500)
    try:
        for listener in socks:
            assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            host, port = listener.getsockname()[:2]
            with socket.create_connection((host, port), timeout=5):
                listener.setblocking(True)
                accepted, _ = listener.accept()
                with accepted:
                    assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                    assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 4500
    finally:
        for s in socks:
            s.close()
