"""The outbox operations TLS uses to swap queued plaintext for ciphertext,
over a real socketpair whose small buffer leaves part of a chunk unsent."""

import socket

from pyhasses.outbox import Outbox


def test_take_tail_keeps_the_unsent_head_and_its_order():
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    a.setblocking(False)
    try:
        box = Outbox(1 << 20)
        sealed = b"C" * 200_000
        box.append(sealed)
        assert box.flush(a) is False  # partly sent: the rest waits
        left = len(box)
        assert 0 < left < len(sealed)
        box.append(b"plain-1")
        box.append(b"plain-2")
        assert box.unsent_chunks() == 3
        assert box.take_tail(1) == [b"plain-1", b"plain-2"]
        assert len(box) == left and box.unsent_chunks() == 1
        box.append(b"sealed-2")
        received = b""
        b.settimeout(5)
        while len(received) < len(sealed) + 8:
            received += b.recv(1 << 20)
            box.flush(a)
        assert received == sealed + b"sealed-2"
        assert len(box) == 0 and box.unsent_chunks() == 0 and box.take_tail(0) == []
    finally:
        a.close()
        b.close()
