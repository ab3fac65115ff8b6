"""The write queue against a real socketpair with a small send buffer."""

import socket

from pyhasses.outbox import Outbox


def pair():
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    a.setblocking(False)
    b.settimeout(2)
    return a, b


def drain(sock, n):
    got = b""
    while len(got) < n:
        got += sock.recv(65536)
    return got


def test_partial_send_keeps_rest_in_order():
    a, b = pair()
    box = Outbox(10 << 20)
    chunks = [bytes([65 + i % 26]) * 1000 for i in range(500)]
    for c in chunks:
        box.append(c)
    assert box.flush(a) is False  # the kernel took only part of it
    assert 0 < len(box) < 500_000
    received = b""
    while len(box):
        received += b.recv(65536)
        box.flush(a)
    received += drain(b, 500_000 - len(received))
    assert received == b"".join(chunks)
    a.close(), b.close()


def test_flush_empty_is_done():
    a, b = pair()
    assert Outbox(100).flush(a) is True
    a.close(), b.close()


def test_limit_checked_by_fits():
    box = Outbox(100)
    box.append(b"x" * 60)
    assert box.fits(40) and not box.fits(41)


def test_same_object_queued_not_copied():
    data = b"y" * 100
    boxes = [Outbox(1000) for _ in range(3)]
    for box in boxes:
        box.append(data)
    assert all(box._chunks[0] is data for box in boxes)


def test_peer_gone_raises_for_connection_to_decide():
    a, b = pair()
    b.close()
    box = Outbox(1000)
    box.append(b"x" * 10)
    try:
        box.flush(a)
        box.append(b"x" * 10)
        box.flush(a)
    except OSError as exc:
        assert isinstance(exc, (BrokenPipeError, ConnectionResetError))
    else:
        raise AssertionError("sending to a closed peer must fail")
    a.close()
