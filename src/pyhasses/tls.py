"""TLS for the SSE port: one sans-IO state machine per client, the server
context, and the certificate checks made before any port is opened.

Owns: ``TlsPump`` (ciphertext in -> plaintext and events out, plaintext in ->
ciphertext out, over ``ssl.MemoryBIO`` and ``SSLContext.wrap_bio``), the
allowed state changes, building the ``SSLContext`` (TLS 1.2 minimum, ALPN
``http/1.1``, OpenSSL's default ciphers), and validating a certificate and
key with ``cryptography`` into one-line reasons.  Must not touch: sockets,
epoll, timers, the hub.  ``connections.py`` moves the ciphertext.

A pump never raises for what the peer sends: a failed handshake or a broken
record becomes a ``TlsFailed`` event, and the connection decides what to log.
Ciphertext leaves through exactly one method, ``outgoing()``.
"""

from __future__ import annotations

import dataclasses
import datetime
import ssl
from typing import List, Optional

#: How many plaintext bytes one ``read`` asks the TLS object for.
READ_SIZE = 65536
#: A certificate this close to its end starts with a warning in the log.
EXPIRY_WARNING_DAYS = 14


# -- states ------------------------------------------------------------------
HANDSHAKE = "handshake"   # waiting for the peer to finish the TLS handshake
OPEN = "open"             # application data flows both ways
CLOSING = "closing"       # one side sent close_notify
CLOSED = "closed"         # both did, or the session failed: nothing more flows

#: The only state changes a pump makes; anything else is a bug in this module.
TRANSITIONS = {
    HANDSHAKE: frozenset({OPEN, CLOSED}),
    OPEN: frozenset({CLOSING, CLOSED}),
    CLOSING: frozenset({CLOSED}),
    CLOSED: frozenset(),
}


class TlsStateError(RuntimeError):
    """A state change outside ``TRANSITIONS``: a programming error."""


# -- events ------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TlsEstablished:
    """The handshake completed."""

    version: str
    cipher: str
    alpn: Optional[str]


@dataclasses.dataclass(frozen=True)
class Plaintext:
    data: bytes


@dataclasses.dataclass(frozen=True)
class PeerClosed:
    """The peer sent close_notify: it will send nothing more."""


@dataclasses.dataclass(frozen=True)
class TlsFailed:
    """The handshake or a record failed; ``reason`` is for the log."""

    reason: str
    during_handshake: bool


def describe_ssl_error(exc: Exception) -> str:
    """OpenSSL's reason in words (``wrong version number``), without the
    file and line noise of ``str(exc)``."""
    reason = getattr(exc, "reason", None)
    if reason:
        return reason.lower().replace("_", " ")
    return str(exc) or type(exc).__name__


class TlsPump:
    """One server-side TLS session, bytes only.

    ``receive(ciphertext)`` returns the events it caused; ``send(plaintext)``
    encrypts; ``close()`` queues close_notify; ``outgoing()`` returns (and
    forgets) every ciphertext byte produced so far, in order.
    """

    __slots__ = ("state", "_incoming", "_outgoing", "_tls", "_sent_notify")

    def __init__(self, context: ssl.SSLContext):
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self.state = HANDSHAKE
        self._sent_notify = False

    # -- state ----------------------------------------------------------------
    def _move(self, new: str) -> None:
        if new not in TRANSITIONS[self.state]:
            raise TlsStateError(f"TLS state {self.state} cannot become {new}")
        self.state = new

    def _fail(self, exc: Exception) -> List:
        during_handshake = self.state == HANDSHAKE
        self._move(CLOSED)
        return [TlsFailed(describe_ssl_error(exc), during_handshake)]

    # -- ciphertext in ------------------------------------------------------
    def receive(self, ciphertext: bytes) -> List:
        """Feed bytes from the peer; return the events they complete."""
        if self.state == CLOSED:
            return []
        self._incoming.write(ciphertext)
        events: List = []
        if self.state == HANDSHAKE:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                return events
            except (ssl.SSLError, ValueError) as exc:
                return self._fail(exc)
            self._move(OPEN)
            events.append(TlsEstablished(self.version(), self.cipher(), self._tls.selected_alpn_protocol()))
        events += self._read_plaintext()
        return events

    def end_of_input(self) -> List:
        """The transport ended.  Before the handshake finished it is a failure;
        after it, an end without close_notify is (as for browsers) a close."""
        if self.state == HANDSHAKE:
            return self._fail(ConnectionAbortedError("peer closed the connection during the TLS handshake"))
        return []

    def _read_plaintext(self) -> List:
        events: List = []
        while self.state in (OPEN, CLOSING):
            try:
                data = self._tls.read(READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                data = b""
            except (ssl.SSLError, ValueError) as exc:
                events += self._fail(exc)
                break
            if not data:  # close_notify (a memory BIO never just runs dry here)
                events.append(PeerClosed())
                self._peer_closed()
                break
            events.append(Plaintext(data))
        return events

    def _peer_closed(self) -> None:
        """Answer the peer's close_notify with ours; the session is done."""
        if self.state == OPEN:
            self._move(CLOSING)
        self._send_close_notify()
        if self.state != CLOSED:
            self._move(CLOSED)

    # -- plaintext in -------------------------------------------------------
    def send(self, plaintext) -> bool:
        """Encrypt ``plaintext`` (one TLS write, records as OpenSSL cuts
        them).  False when the session no longer carries data."""
        if self.state != OPEN:
            return False
        view = memoryview(plaintext)
        try:
            while view:
                written = self._tls.write(view)
                view = view[written:]
        except (ssl.SSLError, ValueError):
            self._move(CLOSED)
            return False
        return True

    def close(self) -> None:
        """Queue our close_notify (once).  We do not wait for the peer's."""
        if self.state == OPEN:
            self._move(CLOSING)
            self._send_close_notify()
        elif self.state == HANDSHAKE:
            self._move(CLOSED)  # nothing to close politely yet

    def _send_close_notify(self) -> None:
        if self._sent_notify:
            return
        self._sent_notify = True
        try:
            self._tls.unwrap()
        except ssl.SSLWantReadError:
            pass  # ours is queued; the peer's has not come yet
        except (ssl.SSLError, ValueError):
            if self.state != CLOSED:
                self._move(CLOSED)

    # -- ciphertext out -----------------------------------------------------
    def outgoing(self) -> bytes:
        """The single exit of ciphertext: everything produced so far."""
        return self._outgoing.read() if self._outgoing.pending else b""

    @property
    def has_outgoing(self) -> bool:
        return self._outgoing.pending > 0

    # -- what the client list shows ------------------------------------------
    def version(self) -> str:
        if self.state == HANDSHAKE:
            return ""
        return self._tls.version() or ""

    def cipher(self) -> str:
        if self.state == HANDSHAKE:
            return ""
        cipher = self._tls.cipher()
        return cipher[0] if cipher else ""


# -- the server context --------------------------------------------------------
def server_context(cert_file: str, key_file: str, password: Optional[bytes] = None) -> ssl.SSLContext:
    """TLS 1.2 or later, ALPN ``http/1.1``, OpenSSL's default cipher list.
    Raises ``CertificateError`` with a one-line reason."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # A client-started TLS 1.2 renegotiation costs us a handshake for nothing.
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(cert_file, key_file, password=(lambda: password) if password else None)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise CertificateError(
            f"cannot use certificate {cert_file} with key {key_file}: {describe_ssl_error(exc)}") from None
    return context


# -- certificate checks --------------------------------------------------------
class CertificateError(ValueError):
    """An unusable certificate or key; the text is the one-line reason."""


@dataclasses.dataclass(frozen=True)
class CertificateInfo:
    subject: str
    not_before: datetime.datetime
    not_after: datetime.datetime

    def expiry_text(self) -> str:
        return self.not_after.strftime("%Y-%m-%d %H:%M:%S UTC")

    def days_left(self, now: datetime.datetime) -> float:
        return (self.not_after - now).total_seconds() / 86400


@dataclasses.dataclass
class TlsSetup:
    """A checked certificate and key, and the context built from them."""

    context: ssl.SSLContext
    info: CertificateInfo
    warning: str = ""


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise CertificateError(f"cannot read {what} {path}: {exc.strerror}") from None


def _utc(cert, name: str) -> datetime.datetime:
    """``not_valid_after_utc`` (cryptography >= 42) or the naive UTC of older ones."""
    value = getattr(cert, name + "_utc", None)
    if value is None:
        value = getattr(cert, name).replace(tzinfo=datetime.timezone.utc)
    return value


def load_certificate(path: str):
    from cryptography import x509

    data = _read(path, "certificate file")
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise CertificateError(f"certificate file {path} is not a PEM certificate")
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise CertificateError(f"certificate file {path} holds a broken PEM certificate ({exc})") from None


def load_private_key(path: str, password: Optional[bytes]):
    from cryptography.hazmat.primitives import serialization

    data = _read(path, "private key file")
    if b"-----BEGIN" not in data or b"PRIVATE KEY-----" not in data:
        raise CertificateError(f"private key file {path} is not a PEM private key")
    try:
        return serialization.load_pem_private_key(data, password=password)
    except TypeError:
        if password is None:
            raise CertificateError(
                f"private key {path} is encrypted; give its passphrase with --key-passphrase-file=PATH") from None
        raise CertificateError(f"private key {path} is not encrypted, but a passphrase was given") from None
    except ValueError:
        if password is not None and b"ENCRYPTED" in data:
            raise CertificateError(f"cannot decrypt private key {path}: wrong passphrase") from None
        raise CertificateError(f"private key file {path} holds a broken PEM private key") from None
    except Exception as exc:  # e.g. UnsupportedAlgorithm
        raise CertificateError(f"private key file {path}: unusable key ({exc})") from None


def _public_der(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def read_passphrase(path: Optional[str]) -> Optional[bytes]:
    """The first line of the passphrase file, without its line end."""
    if not path:
        return None
    data = _read(path, "passphrase file")
    return data.splitlines()[0] if data.strip() else b""


def check_pair(cert_file: str, key_file: str, password: Optional[bytes] = None,
               now: Optional[datetime.datetime] = None) -> CertificateInfo:
    """Everything an operator can get wrong, each with its own reason."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    cert = load_certificate(cert_file)
    key = load_private_key(key_file, password)
    if _public_der(cert.public_key()) != _public_der(key.public_key()):
        raise CertificateError(f"private key {key_file} does not match certificate {cert_file}")
    info = CertificateInfo(cert.subject.rfc4514_string(), _utc(cert, "not_valid_before"), _utc(cert, "not_valid_after"))
    if now < info.not_before:
        raise CertificateError(
            f"certificate {cert_file} is not valid before {info.not_before:%Y-%m-%d %H:%M:%S} UTC")
    if now > info.not_after:
        raise CertificateError(f"certificate {cert_file} expired on {info.expiry_text()}")
    return info


def prepare(cert_file: str, key_file: str, passphrase_file: Optional[str] = None,
            now: Optional[datetime.datetime] = None) -> TlsSetup:
    """Check the pair and build the server context; ``warning`` is set when
    the certificate ends within ``EXPIRY_WARNING_DAYS``."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    password = read_passphrase(passphrase_file)
    info = check_pair(cert_file, key_file, password, now)
    context = server_context(cert_file, key_file, password)
    warning = ""
    days = info.days_left(now)
    if days < EXPIRY_WARNING_DAYS:
        warning = (f"WARNING: certificate {cert_file} expires in {days:.1f} days "
                   f"(on {info.expiry_text()})")
    return TlsSetup(context, info, warning)

