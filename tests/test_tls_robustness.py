"""Bad input on the HTTPS port, slow TLS readers and certificate reload: each
bad connection is closed with one log line while another TLS stream on the
same daemon keeps receiving."""

import random
import re
import shutil
import signal
import socket
import ssl
import struct
import time

import pytest

from support import read_to_close
from tls_support import TlsSseClient, client_hello, open_stream, ssl_args, write_pair


@pytest.fixture
def pair(tmp_path):
    return write_pair(tmp_path / "certs")


def local_peer(sock) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def lines_about(daemon, peer: str) -> list:
    """Log lines naming this peer (``127.0.0.1:PORT`` followed by a space)."""
    mentions = re.compile(re.escape(peer) + r"[ :]")
    return [line for line in daemon.log().splitlines() if mentions.search(line)]


def expect_closed_with_one_line(daemon, sock, pattern: str, timeout=5.0):
    """The daemon logs the connect and exactly one line for the close."""
    peer = local_peer(sock)
    daemon.wait_log(rf"Closed connection <\d+> {re.escape(peer)}: {pattern}", timeout)
    about = lines_about(daemon, peer)
    assert len(about) == 2, about
    assert "Connect from" in about[0] and "Closed connection" in about[1], about


def drain(sock, quiet=0.3):
    """Read until nothing came for ``quiet`` seconds (bounded)."""
    sock.settimeout(quiet)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if not sock.recv(65536):
                return
        except (socket.timeout, TimeoutError):
            return


def still_receives(daemon, watcher, text):
    daemon.control(f"room1={text}\n")
    assert watcher.read_event()["data"] == text


@pytest.fixture
def https(daemon_factory, pair):
    def start(*extra):
        daemon = daemon_factory(*ssl_args(*pair), "--handshake-timeout", "1.5", *extra)
        watcher = open_stream(daemon, pair[0])
        daemon.wait_clients(1)
        return daemon, watcher
    return start


def test_plain_http_on_the_tls_port(https):
    daemon, watcher = https()
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as s:
        s.sendall(b"GET /sse?subscribe=room1 HTTP/1.1\r\nConnection: keep-alive\r\n\r\n")
        read_to_close(s)
        expect_closed_with_one_line(daemon, s, "TLS handshake failed: http request")
    still_receives(daemon, watcher, "after plain http")


def test_random_bytes_on_the_tls_port(https):
    daemon, watcher = https()
    junk = random.Random(7).randbytes(2000)
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as s:
        s.sendall(junk)
        read_to_close(s)
        expect_closed_with_one_line(daemon, s, "TLS handshake failed: ")
    still_receives(daemon, watcher, "after junk")


def test_truncated_handshake_then_close(https):
    daemon, watcher = https()
    hello = client_hello()
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as s:
        s.sendall(hello[: len(hello) // 2])
        s.shutdown(socket.SHUT_WR)
        read_to_close(s)
        expect_closed_with_one_line(daemon, s, "closed by peer during the TLS handshake")
    still_receives(daemon, watcher, "after truncated")


@pytest.mark.parametrize("first_bytes", ["nothing", "half a hello"])
def test_stalled_handshake_is_closed_by_the_handshake_timeout(https, first_bytes):
    daemon, watcher = https()
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as s:
        if first_bytes != "nothing":
            hello = client_hello()
            s.sendall(hello[: len(hello) // 2])
        started = time.monotonic()
        still_receives(daemon, watcher, "while one stalls")
        assert read_to_close(s) == b""
        assert 1.0 < time.monotonic() - started < 4.5
        expect_closed_with_one_line(daemon, s, r"TLS handshake not completed within 1\.5 s")
    still_receives(daemon, watcher, "after the stall")


@pytest.mark.parametrize("how", ["fin", "reset"])
def test_client_vanishing_mid_handshake(https, how):
    daemon, watcher = https()
    s = socket.create_connection(("127.0.0.1", daemon.port), timeout=5)
    s.sendall(client_hello())
    assert s.recv(5)[:1] == b"\x16"  # the server's handshake is on its way
    peer = local_peer(s)
    if how == "reset":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    else:
        drain(s)  # unread bytes would turn our FIN into a reset
    s.close()
    reason = "closed by peer during the TLS handshake" if how == "fin" else \
        "(closed by peer during the TLS handshake|connection reset by peer)"
    daemon.wait_log(rf"Closed connection <\d+> {re.escape(peer)}: {reason}")
    about = lines_about(daemon, peer)
    assert len(about) == 2, about
    still_receives(daemon, watcher, f"after {how}")


def test_slow_tls_reader_is_closed_by_the_queue_limit(https, pair):
    daemon, watcher = https("--max-queue-bytes", "64K")
    slow = open_stream(daemon, pair[0], subscribe="flood", rcvbuf=4096)
    daemon.wait_clients(2)
    peer = local_peer(slow.sock)
    payload = "y" * 8000
    for _ in range(40):
        daemon.control("".join(f"flood={payload}\n" for _ in range(50)))
        still_receives(daemon, watcher, "calm")
        if re.search(rf"{re.escape(peer)} is too slow", daemon.log()):
            break
    daemon.wait_log(rf"Client <\d+> {re.escape(peer)} is too slow: \d+ bytes queued, limit 65536; closing")
    daemon.wait_log(rf"Closed connection <\d+> {re.escape(peer)}: write queue over its limit")
    still_receives(daemon, watcher, "still here")
    assert daemon.control_json("tcpstatus")["sseconncli"] == 1
    slow.close()


def peer_certificate(daemon, cafile) -> bytes:
    client = TlsSseClient("127.0.0.1", daemon.port, cafile)
    try:
        return client.sock.getpeercert(binary_form=True)
    finally:
        client.close()


def pem_to_der(path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def test_sighup_reloads_the_certificate_and_keeps_streams(https, pair, tmp_path):
    cert, key = pair
    daemon, watcher = https()
    old_der = pem_to_der(cert)
    new_cert, new_key = write_pair(tmp_path / "new", common_name="localhost")
    shutil.copy(cert, tmp_path / "old-cert.pem")
    shutil.copy(new_cert, cert)
    shutil.copy(new_key, key)
    daemon.signal(signal.SIGHUP)
    daemon.wait_log(r"SIGHUP: certificate reloaded: ")
    # new connections get the new certificate; the old one no longer verifies
    assert peer_certificate(daemon, new_cert) == pem_to_der(new_cert) != old_der
    with pytest.raises(ssl.SSLCertVerificationError):
        peer_certificate(daemon, tmp_path / "old-cert.pem")
    # the stream opened before the reload is undisturbed
    still_receives(daemon, watcher, "after reload")
    assert watcher.sock.getpeercert(binary_form=True) == old_der


def test_sighup_with_a_bad_pair_keeps_the_old_one(https, pair, tmp_path):
    cert, key = pair
    daemon, watcher = https()
    trusted = tmp_path / "trusted.pem"
    shutil.copy(cert, trusted)
    other_cert, other_key = write_pair(tmp_path / "other")
    shutil.copy(other_key, key)  # the key no longer matches the certificate
    daemon.signal(signal.SIGHUP)
    daemon.wait_log(rf"SIGHUP: certificate not reloaded, keeping the old one: "
                    rf"private key {re.escape(str(key))} does not match certificate {re.escape(str(cert))}")
    assert peer_certificate(daemon, trusted) == pem_to_der(trusted)
    still_receives(daemon, watcher, "after refused reload")
    cert.write_text("garbage\n")
    daemon.signal(signal.SIGHUP)
    daemon.wait_log(rf"keeping the old one: certificate file {re.escape(str(cert))} is not a PEM certificate")
    assert peer_certificate(daemon, trusted) == pem_to_der(trusted)
    still_receives(daemon, watcher, "after garbage")


def test_tampered_record_after_the_handshake(https, pair):
    daemon, watcher = https()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context(cafile=str(pair[0])).wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as s:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                s.sendall(outgoing.read())
                incoming.write(s.recv(65536))
        s.sendall(outgoing.read())
        tls.write(b"GET /sse?subscribe=room1 HTTP/1.1\r\nConnection: keep-alive\r\n\r\n")
        record = bytearray(outgoing.read())
        record[-3] ^= 0xFF  # breaks the record's authentication tag
        s.sendall(bytes(record))
        read_to_close(s)
        expect_closed_with_one_line(daemon, s, "TLS error: ")
    still_receives(daemon, watcher, "after a tampered record")


def test_refusal_above_max_clients_sends_no_plaintext_on_the_tls_port(https, pair):
    daemon, watcher = https("--max-clients", "1")
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as s:
        s.sendall(client_hello())
        assert read_to_close(s) == b""  # a plaintext 503 here would be garbage to a TLS client
        daemon.wait_log(rf"Refused {re.escape(local_peer(s))}: 1 clients already connected \(--max-clients\); "
                        r"closed before the TLS handshake")
    still_receives(daemon, watcher, "after a refusal")


def read_flood(slow) -> list:
    """The slow reader reads at last: its events up to the one saying stop."""
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    events = []
    while not events or events[-1].get("data") != "stop":
        events.append(slow.read_event(timeout=10))
    return events


def flood_numbers(events) -> list:
    """The numbers of the flood's events ("#N payload") that arrived, in order."""
    return [int(e["data"][1:].split()[0]) for e in events if e["data"].startswith("#")]


def test_drop_policy_on_a_slow_tls_reader_keeps_the_stream_well_formed(https, pair):
    # The drop policy removes queued events; with TLS it must only touch
    # plaintext not yet sealed, or the records would no longer decrypt.
    daemon, watcher = https("--max-queue-bytes", "64K", "--heartbeat", "0", "--slow-client-policy", "drop")
    slow = open_stream(daemon, pair[0], subscribe="flood", rcvbuf=4096)
    daemon.wait_clients(2)
    payload = "z" * 8000
    for batch in range(40):  # until the kernel's buffers are full and events are dropped
        daemon.control("".join(f"flood=#{batch * 50 + i} {payload}\n" for i in range(50)))
        still_receives(daemon, watcher, f"calm {batch}")
        if daemon.control_json("tcpstatus")["droppedevents"] > 20:
            break
    last = batch * 50 + 49
    daemon.control("flood=stop\n")
    status = daemon.control_json("tcpstatus")
    assert status["droppedevents"] > 0 and status["sseconncli"] == 2
    events = read_flood(slow)
    assert any(e.get("event") == "reset" for e in events)
    numbers = flood_numbers(events)
    assert numbers == sorted(numbers) and numbers[-1] == last
    slow.close()


def test_drop_policy_keeps_the_newest_events_of_a_tls_reader_whose_socket_just_filled(https, pair):
    # Once the kernel stops taking a slow reader's bytes, what TLS sealed
    # can no longer be dropped.  Were a whole queue sealed at that moment,
    # the next events would find no room and be the ones dropped: the
    # newest.  The moment depends on how full the kernel's buffers were, so
    # several event sizes try several moments.
    daemon, watcher = https("--max-queue-bytes", "64K", "--heartbeat", "0", "--slow-client-policy", "drop")
    for size in range(6000, 9001, 600):
        token = f"flood{size}"
        slow = open_stream(daemon, pair[0], subscribe=token, rcvbuf=4096)
        daemon.wait_clients(2)
        payload = "z" * size
        sent = 0

        def batch():  # seven events: all of them fit in the queue
            nonlocal sent
            daemon.control("".join(f"{token}=#{sent + i} {payload}\n" for i in range(7)))
            sent += 7
            still_receives(daemon, watcher, f"calm {size} {sent}")

        dropped = daemon.control_json("tcpstatus")["droppedevents"]
        while daemon.control_json("tcpstatus")["droppedevents"] == dropped:
            assert sent < 10_000, "the kernel's buffers never filled"
            batch()
        batch()  # just after the socket filled: these must all arrive
        daemon.control(f"{token}=stop\n")
        numbers = flood_numbers(read_flood(slow))
        assert numbers[-7:] == list(range(sent - 7, sent)), size
        slow.close()
        daemon.wait_clients(1)
