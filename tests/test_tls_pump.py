"""TlsPump with bytes only: a real client SSLObject over two MemoryBIOs talks
to the server pump in-process; no socket anywhere."""

import ssl

import pytest

from pyhasses import tls
from tls_support import client_context, write_pair


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return write_pair(tmp_path_factory.mktemp("pump"))


@pytest.fixture(scope="module")
def server_setup(pair):
    cert, key = pair
    return tls.prepare(str(cert), str(key))


class Client:
    """The browser's side, bytes only."""

    def __init__(self, cafile, version=None):
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = client_context(cafile, version).wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")

    def step(self) -> bool:
        try:
            self.tls.do_handshake()
            return True
        except ssl.SSLWantReadError:
            return False


def got_close_notify(obj) -> bool:
    """A memory BIO reads b"" only at close_notify (no data raises WantRead)."""
    try:
        return obj.read(100) == b""
    except ssl.SSLZeroReturnError:
        return True
    except ssl.SSLWantReadError:
        return False


def connect(pump, client, rounds=6):
    """Shuttle bytes until both sides are done; return the server's events."""
    events = []
    for _ in range(rounds):
        done = client.step()
        events += pump.receive(client.outgoing.read())
        client.incoming.write(pump.outgoing())
        if done and pump.state == tls.OPEN:
            return events
    raise AssertionError(f"no handshake; events {events}")


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_handshake_reports_version_cipher_and_alpn(server_setup, pair, version):
    pump = tls.TlsPump(server_setup.context)
    client = Client(pair[0], version)
    assert pump.state == tls.HANDSHAKE
    events = connect(pump, client)
    established = [e for e in events if isinstance(e, tls.TlsEstablished)]
    expected = "TLSv1.2" if version == ssl.TLSVersion.TLSv1_2 else "TLSv1.3"
    assert established == [tls.TlsEstablished(expected, client.tls.cipher()[0], "http/1.1")]
    assert pump.version() == client.tls.version() == expected
    assert pump.cipher() == client.tls.cipher()[0]


def test_plaintext_flows_both_ways(server_setup, pair):
    pump = tls.TlsPump(server_setup.context)
    client = Client(pair[0])
    connect(pump, client)
    client.tls.write(b"GET /sse HTTP/1.1\r\n\r\n")
    assert pump.receive(client.outgoing.read()) == [tls.Plaintext(b"GET /sse HTTP/1.1\r\n\r\n")]
    big = bytes(range(256)) * 1000  # several records
    assert pump.send(b"head" + big)
    client.incoming.write(pump.outgoing())
    received = b""
    while len(received) < len(big) + 4:
        received += client.tls.read(1 << 20)
    assert received == b"head" + big
    assert pump.outgoing() == b"" and not pump.has_outgoing


def test_send_before_handshake_is_refused(server_setup):
    pump = tls.TlsPump(server_setup.context)
    assert pump.send(b"too early") is False
    assert pump.outgoing() == b""


def test_server_close_sends_close_notify_and_waits_for_the_peers(server_setup, pair):
    pump = tls.TlsPump(server_setup.context)
    client = Client(pair[0])
    connect(pump, client)
    pump.send(b"last")
    pump.close()
    assert pump.state == tls.CLOSING
    client.incoming.write(pump.outgoing())
    assert client.tls.read(100) == b"last"
    assert got_close_notify(client.tls)
    assert pump.send(b"after close") is False
    client.tls.unwrap()  # the client answers with its close_notify
    assert pump.receive(client.outgoing.read()) == [tls.PeerClosed()]
    assert pump.state == tls.CLOSED


def test_peer_close_is_answered_with_close_notify(server_setup, pair):
    pump = tls.TlsPump(server_setup.context)
    client = Client(pair[0])
    connect(pump, client)
    try:
        client.tls.unwrap()
    except ssl.SSLWantReadError:
        pass
    assert pump.receive(client.outgoing.read()) == [tls.PeerClosed()]
    assert pump.state == tls.CLOSED
    client.incoming.write(pump.outgoing())
    client.tls.unwrap()  # completes only if the server's close_notify arrived


@pytest.mark.parametrize("junk, reason", [
    (b"GET /sse?subscribe=a HTTP/1.1\r\nHost: x\r\n\r\n", "http request"),
    (b"\x16\x03\x01\x00\x05hello", ""),
    (bytes(range(256)) * 2, ""),
])
def test_bad_bytes_fail_the_handshake_as_an_event(server_setup, junk, reason):
    pump = tls.TlsPump(server_setup.context)
    events = pump.receive(junk)
    assert len(events) == 1 and isinstance(events[0], tls.TlsFailed), events
    assert events[0].during_handshake
    assert reason in events[0].reason and events[0].reason
    assert pump.state == tls.CLOSED
    assert pump.receive(b"more") == []


def test_truncated_handshake_then_end_of_input(server_setup, pair):
    pump = tls.TlsPump(server_setup.context)
    client = Client(pair[0])
    client.step()
    hello = client.outgoing.read()
    assert pump.receive(hello[: len(hello) // 2]) == []
    assert pump.state == tls.HANDSHAKE
    events = pump.end_of_input()
    assert [type(e) for e in events] == [tls.TlsFailed] and events[0].during_handshake
    assert pump.state == tls.CLOSED


def test_end_of_input_after_handshake_is_a_plain_close(server_setup, pair):
    pump = tls.TlsPump(server_setup.context)
    connect(pump, Client(pair[0]))
    assert pump.end_of_input() == []
    assert pump.state == tls.OPEN


def test_tampered_record_fails_after_the_handshake(server_setup, pair):
    pump = tls.TlsPump(server_setup.context)
    client = Client(pair[0])
    connect(pump, client)
    client.tls.write(b"GET / HTTP/1.1\r\n\r\n")
    record = bytearray(client.outgoing.read())
    record[-3] ^= 0xFF
    events = pump.receive(bytes(record))
    assert [type(e) for e in events] == [tls.TlsFailed]
    assert not events[0].during_handshake
    assert pump.state == tls.CLOSED


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tls_1_1_client_is_refused(server_setup, pair):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
        context.set_ciphers("ALL:@SECLEVEL=0")
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        client = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
        client.do_handshake()
    except ssl.SSLWantReadError:
        pass
    except (ssl.SSLError, ValueError) as exc:
        pytest.skip(f"this OpenSSL cannot even offer TLS 1.1: {exc}")
    pump = tls.TlsPump(server_setup.context)
    events = pump.receive(outgoing.read())
    assert [type(e) for e in events] == [tls.TlsFailed], events
    assert pump.state == tls.CLOSED


def test_state_changes_follow_the_allow_list(server_setup):
    assert tls.TRANSITIONS[tls.CLOSED] == frozenset()
    pump = tls.TlsPump(server_setup.context)
    pump.receive(b"junk that is not TLS at all......")
    assert pump.state == tls.CLOSED
    with pytest.raises(tls.TlsStateError):
        pump._move(tls.OPEN)
    pump.close()  # closing a closed pump is a no-op, not an error
    assert pump.state == tls.CLOSED
