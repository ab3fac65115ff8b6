"""The test helpers' ports: free on both loopback addresses, and a daemon
whose port was taken meanwhile starts again on another."""

import socket

import pytest

from support import Daemon, free_port


def bind(family, host, port):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.bind((host, port))
    s.listen()
    return s


def test_free_port_is_free_on_both_loopbacks():
    for _ in range(20):
        port = free_port()
        socks = [bind(socket.AF_INET, "127.0.0.1", port)]
        try:
            socks.append(bind(socket.AF_INET6, "::1", port))
        except OSError as exc:
            pytest.fail(f"port {port} free on 127.0.0.1 but not on ::1: {exc}")
        finally:
            for s in socks:
                s.close()


def test_daemon_starts_again_when_its_port_was_taken(tmp_path):
    d = Daemon(tmp_path, start=False)
    taken = d.port
    blocker = bind(socket.AF_INET6, "::1", taken)  # the daemon binds [::]:PORT, dual-stack
    try:
        d.start()
        assert d.port != taken and d.alive()
        client = d.sse("room1")
        d.control("room1=on the second port\n")
        assert client.read_event()["data"] == "on the second port"
        client.close()
    finally:
        blocker.close()
        d.stop()
