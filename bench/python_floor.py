"""What one Python thread can do at all: a bare epoll server that answers
every request head with a fixed event-stream head and does nothing else (no
parsing, no hub, no logging).  A reference for the connection storm (e),
not a server: run the load generator against it to see how far pyhasses'
handshake is from the cost of Python's socket calls themselves.

    python3 bench/python_floor.py PORT CONTROL_PORT SECONDS

It stops by itself after SECONDS.  The control port only accepts (the load
generator connects to it before the storm).  bench/README.md shows the
load generator's command line and the figures.
"""

import select
import socket
import sys
import time

HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: Keep-Alive\r\n\r\n")


def listen(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def main() -> None:
    port, control_port, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    listeners = {s.fileno(): s for s in (listen(port), listen(control_port))}
    ep = select.epoll()
    for fd in listeners:
        ep.register(fd, select.EPOLLIN)
    conns = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for fd, _ in ep.poll(0.5):
            if fd in listeners:
                for _ in range(64):
                    try:
                        conn, _addr = listeners[fd].accept()
                    except BlockingIOError:
                        break
                    conn.setblocking(False)
                    conns[conn.fileno()] = conn
                    ep.register(conn.fileno(), select.EPOLLIN)
                continue
            conn = conns[fd]
            try:
                data = conn.recv(4096)
            except OSError:
                data = b""
            if not data:
                ep.unregister(fd)
                conn.close()
                del conns[fd]
            elif data.endswith(b"\r\n\r\n"):
                conn.send(HEAD)
    for conn in conns.values():
        conn.close()


if __name__ == "__main__":
    main()
