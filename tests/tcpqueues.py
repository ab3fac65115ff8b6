"""What the kernel says about a loopback TCP connection, for tests that
must know the daemon read some bytes before they send the next ones (a
message or a head split over reads), instead of sleeping and hoping."""

import socket


def peer_has_read(client: socket.socket) -> bool:
    """Has the peer (the daemon) read everything ``client`` sent?  All of
    it was acknowledged (our end's send queue is empty), so it reached the
    daemon's end, and that end's receive queue is empty.  Both ends are on
    loopback, so their ports alone name them (the daemon's end may be an
    IPv6 socket holding an IPv4-mapped address: /proc/net/tcp6)."""
    ours, theirs = client.getsockname()[1], client.getpeername()[1]
    queues = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).read().splitlines()[1:]:
            fields = line.split()
            local, remote = (int(f.rsplit(":", 1)[1], 16) for f in fields[1:3])
            queues[local, remote] = [int(x, 16) for x in fields[4].split(":")]
    unacked, _ = queues[ours, theirs]
    _, unread = queues[theirs, ours]
    return unacked == 0 and unread == 0
