"""Who may subscribe and who may publish: JWT keys, verification, grants.

Owns: reading a key file (PROTOCOL.md 9), verifying a token with PyJWT (a
reviewed implementation, not our own), what a token's ``pyhasses`` claim
grants and whether it covers the tokens a request names, where a stream's
token is found in a request head, the decision on an HTTP publish (head and
body to a parsed ``control.Message`` or a refusal), and minting tokens for
tools and tests.  Must not touch: sockets, the hub, timers; the connection
layer asks and acts on the answer.

Time: ``exp`` and ``nbf`` are checked with no leeway.  The daemon and the
signing backend are expected to share a clock (NTP); a leeway would keep a
revoked-by-expiry stream open longer than its issuer asked, and the browser
reconnects with a fresh cookie anyway.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import itertools
import json
import math
import time
from typing import Iterable, List, Optional, Union
from urllib.parse import parse_qsl

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from . import control
from .http import origin_form, parse_query

DEFAULT_COOKIE = "pyhassesAuthorization"
DEFAULT_PUBLISH_URL = "/publish"
CLAIM = "pyhasses"
#: A JWT longer than this is not read (a head holds it; 8 KB is generous).
MAX_TOKEN_BYTES = 8192


class KeyFileError(ValueError):
    """A key file the daemon cannot use; the text is the one-line reason."""


@dataclasses.dataclass(frozen=True)
class Key:
    """A verification (or signing) key and the one algorithm it allows."""

    algorithm: str   # "HS256", "ES256" or "RS256"
    key: object      # bytes for HS256, a cryptography key object otherwise
    path: str = ""

    @property
    def can_sign(self) -> bool:
        return self.algorithm == "HS256" or isinstance(
            self.key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey))


def load_key(path: str, private: bool = False) -> Key:
    """A PEM public key (or, with ``private``, a PEM private key, for
    minting) means ES256 or RS256 by its type; anything else is an HS256
    shared secret, its trailing newline stripped."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from None
    return key_from_bytes(data, path, private)


def key_from_bytes(data: bytes, path: str = "", private: bool = False) -> Key:
    stripped = data.strip()
    if stripped.startswith(b"-----BEGIN"):
        return _pem_key(stripped, path, private)
    secret = data[:-1] if data.endswith(b"\n") else data
    secret = secret[:-1] if secret.endswith(b"\r") else secret
    if len(secret) < 32:
        # RFC 7518 3.2: an HS256 key of at least 256 bits.
        raise KeyFileError(f"key file {path}: an HS256 secret must be at least 32 bytes (openssl rand -hex 32)")
    return Key("HS256", secret, path)


def _pem_key(pem: bytes, path: str, private: bool) -> Key:
    try:
        if b"PRIVATE KEY" in pem.split(b"\n", 1)[0]:
            if not private:
                # The daemon needs only the public half (PROTOCOL.md 9):
                # holding the signing key would let a break-in mint tokens.
                raise KeyFileError(f"key file {path}: a private key; give the daemon the public key "
                                   "(openssl pkey -in KEY -pubout)")
            obj = serialization.load_pem_private_key(pem, password=None)
        else:
            obj = serialization.load_pem_public_key(pem)
    except KeyFileError:
        raise
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"key file {path}: not a usable PEM key ({exc})") from None
    if isinstance(obj, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        if obj.curve.name != "secp256r1":
            raise KeyFileError(f"key file {path}: ES256 needs a P-256 key, not {obj.curve.name}")
        return Key("ES256", obj, path)
    if isinstance(obj, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        if obj.key_size < 2048:
            raise KeyFileError(f"key file {path}: an RSA key needs at least 2048 bits")
        return Key("RS256", obj, path)
    raise KeyFileError(f"key file {path}: only P-256 (ES256) and RSA (RS256) keys are supported")


# -- verification ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Grants:
    """What a verified token allows: ``subscribe`` and ``publish`` entries
    (a token, ``PREFIX*`` or ``*``), and when it ends (None: never)."""

    subscribe: tuple
    publish: tuple
    expires: Optional[float]


class Refused(Exception):
    """A token that is not valid; the text is the one-line reason."""


def verify(token: Union[str, bytes], key: Key, now: Optional[float] = None) -> Grants:
    """The grants of a valid token, or ``Refused`` with the reason."""
    if isinstance(token, str):
        token = token.encode("ascii", "replace")
    if len(token) > MAX_TOKEN_BYTES:
        raise Refused(f"token over {MAX_TOKEN_BYTES} bytes")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise Refused(f"malformed token: {exc}") from None
    alg = header.get("alg")
    if alg != key.algorithm:
        # alg "none" and an HS256 token signed with a public key's bytes
        # end here, before any signature code runs.
        raise Refused(f"algorithm {str(alg)[:20]!r} not accepted (the key is {key.algorithm})")
    verify_key = key.key
    if key.algorithm != "HS256" and hasattr(verify_key, "public_key"):
        verify_key = verify_key.public_key()
    try:
        claims = jwt.decode(token, verify_key, algorithms=[key.algorithm],
                            options={"require": [], "verify_aud": False, "verify_iat": False,
                                     "verify_exp": False, "verify_nbf": False})
    except jwt.InvalidSignatureError:
        raise Refused("bad signature") from None
    except jwt.PyJWTError as exc:
        raise Refused(f"invalid token: {exc}") from None
    return _grants(claims, time.time() if now is None else now)


def _grants(claims: dict, now: float) -> Grants:
    """exp and nbf checked here, against ``now``, so that tests and the
    stream's end use one clock and one rule."""
    exp = claims.get("exp")
    nbf = claims.get("nbf")
    for name, value in (("exp", exp), ("nbf", nbf)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value)):
            raise Refused(f'"{name}" must be a number')
    if exp is not None and now >= exp:
        raise Refused("token expired")
    if nbf is not None and now < nbf:
        raise Refused("token not valid yet")
    claim = claims.get(CLAIM)
    if not isinstance(claim, dict):
        raise Refused(f'no "{CLAIM}" claim')
    lists = []
    for name in ("subscribe", "publish"):
        entries = claim.get(name, [])
        if not isinstance(entries, list) or not all(isinstance(e, str) and e for e in entries):
            raise Refused(f'"{CLAIM}.{name}" must be a list of tokens')
        lists.append(tuple(entries))
    return Grants(lists[0], lists[1], float(exp) if exp is not None else None)


class GrantSet:
    """A token's grants, arranged so that each token asked for costs a set
    lookup and a binary search, not a pass over every grant: an HTTP
    publish may name a hundred thousand targets under a token of a
    thousand grants, and the loop must not stall on it.

    ``*`` allows all, ``news*`` every token starting with ``news``
    (``news*`` itself included, as an address), an exact entry only that
    token.  Asking for ``*`` needs ``*``."""

    def __init__(self, grants: Iterable[str]):
        grants = set(grants)
        self.everything = "*" in grants
        self.exact = frozenset(g for g in grants if not g.endswith("*"))
        # Only the prefixes no shorter one covers: in sorted order the
        # strings that start with a prefix follow it at once, so the
        # greatest prefix not above a token is the one that can cover it.
        self.prefixes: List[str] = []
        for prefix in sorted(g[:-1] for g in grants if g.endswith("*") and g != "*"):
            if not (self.prefixes and prefix.startswith(self.prefixes[-1])):
                self.prefixes.append(prefix)

    def covers(self, token: str) -> bool:
        if self.everything or token in self.exact:
            return True
        if token == "*" or not self.prefixes:
            return False
        i = bisect.bisect_right(self.prefixes, token) - 1
        return i >= 0 and token.startswith(self.prefixes[i])


def covers(grants: Iterable[str], token: str) -> bool:
    """Does one of ``grants`` allow ``token``?  (See GrantSet.)"""
    return GrantSet(grants).covers(token)


def uncovered(grants: Iterable[str], tokens: Iterable[str]) -> List[str]:
    allowed = GrantSet(grants)
    return [t for t in tokens if not allowed.covers(t)]


# -- streams -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Accept:
    """The stream may open; it ends at ``expires`` (None: the token has no exp)."""

    expires: Optional[float]


@dataclasses.dataclass(frozen=True)
class Deny:
    """Answer ``status`` (401, 403, 400, 413) and close; ``reason`` for the log."""

    status: int
    reason: str


def token_of(head, cookie_name: str = DEFAULT_COOKIE, query: Optional[dict] = None) -> Optional[bytes]:
    """The token a stream request carries: ``Authorization: Bearer``, else
    the cookie, else the ``authorization`` query parameter."""
    value = head.header(b"authorization")
    if value is not None:
        scheme, _, rest = value.strip().partition(b" ")
        if scheme.lower() == b"bearer" and rest.strip():
            return rest.strip()
    cookies = head.header(b"cookie")
    if cookies is not None:
        wanted = cookie_name.encode("latin-1")
        # Repeated Cookie fields were joined with ", " by the head reader.
        for item in cookies.replace(b",", b";").split(b";"):
            name, eq, val = item.strip().partition(b"=")
            if eq and name == wanted and val.strip(b'" '):
                return val.strip(b'" ')
    if query is None:
        query = parse_query(origin_form(head.target).partition(b"?")[2])
    param = query.get("authorization")
    if param:
        return param.encode("latin-1", "replace")
    return None


def check_stream(head, tokens: Iterable[str], key: Key, cookie_name: str = DEFAULT_COOKIE,
                 query: Optional[dict] = None, now: Optional[float] = None) -> Union[Accept, Deny]:
    """May this request subscribe to ``tokens`` (as ``http.decide`` found
    them; ``*`` for everything)?"""
    raw = token_of(head, cookie_name, query)
    if raw is None:
        return Deny(401, "no token (Authorization: Bearer, the cookie or ?authorization=)")
    try:
        grants = verify(raw, key, now)
    except Refused as exc:
        return Deny(401, str(exc))
    missing = uncovered(grants.subscribe, tokens)
    if missing:
        return Deny(403, f"token does not grant subscribing to {', '.join(repr(t[:80]) for t in missing[:5])}")
    return Accept(grants.expires)


# -- publishing over HTTP ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Publish:
    """A publish the token allows: run ``message`` as the control channel
    runs its JSON form, then answer with the acknowledgement."""

    message: control.Message


FORM_FIELDS = ("to", "data", "event", "except", "retry")


def bearer(head) -> Optional[bytes]:
    """A publisher's token comes only from the Authorization header (a
    backend can always send one; cookies and URLs are for browsers)."""
    value = head.header(b"authorization")
    if value is None:
        return None
    scheme, _, rest = value.strip().partition(b" ")
    return rest.strip() if scheme.lower() == b"bearer" and rest.strip() else None


def publisher(head, key: Key, now: Optional[float] = None) -> Union[Grants, Deny]:
    """The grants of an HTTP publish's bearer token, or 401: asked at the
    head, before a body is read."""
    raw = bearer(head)
    if raw is None:
        return Deny(401, "no token (Authorization: Bearer)")
    try:
        return verify(raw, key, now)
    except Refused as exc:
        return Deny(401, str(exc))


def check_publish(head, body: bytes, key: Key, max_token_length: int, max_message_bytes: int,
                  max_part_bytes: int, now: Optional[float] = None, **limits) -> Union[Publish, Deny]:
    """An HTTP publish: the token first (401/403), then the body (400/413)."""
    grants = publisher(head, key, now)
    if isinstance(grants, Deny):
        return grants
    return publish_body(grants, head, body, max_token_length, max_message_bytes, max_part_bytes, **limits)


def publish_body(grants: Grants, head, body: bytes, max_token_length: int, max_message_bytes: int,
                 max_part_bytes: int, **limits) -> Union[Publish, Deny]:
    """The body of an HTTP publish whose token gave ``grants`` (``publisher``,
    asked once, at the head): 400/413, or 403 for a target not granted.
    ``limits``: ``max_except`` and ``max_targets``, as the control channel has them."""
    if len(body) > max_part_bytes:
        return Deny(413, f"body over {max_part_bytes} bytes")
    parsed = parse_publish_body(head, body, max_token_length, max_message_bytes, **limits)
    if isinstance(parsed, Deny):
        return parsed
    missing = uncovered(grants.publish, [_address(t) for t in parsed.targets])
    if missing:
        return Deny(403, f"token does not grant publishing to {', '.join(repr(t[:80]) for t in missing[:5])}")
    return Publish(parsed)


def _address(target) -> str:
    """The token a target reaches, as a grant must cover it: ``news*`` for a
    prefix, ``*`` for everyone."""
    if target.token == "*" and not target.prefix:
        return "*"
    return target.token + "*" if target.prefix else target.token


def parse_publish_body(head, body: bytes, max_token_length: int, max_message_bytes: int,
                       max_except: int = control.DEFAULT_MAX_EXCEPT,
                       max_targets: int = control.DEFAULT_MAX_TARGETS) -> Union[control.Message, Deny]:
    """A form or JSON body to the Message the control channel's JSON form
    gives, through the same validation."""
    ctype = (head.header(b"content-type") or b"").split(b";")[0].strip().lower()
    if ctype == b"application/json":
        text = body.decode("utf-8", "surrogateescape").strip()
        if not text.startswith("{"):
            return Deny(400, "JSON body must be an object")
    elif ctype == b"application/x-www-form-urlencoded":
        text = _form_to_json(body)
        if isinstance(text, Deny):
            return text
    else:
        return Deny(400, "Content-Type must be application/x-www-form-urlencoded or application/json")
    parsed = control.interpret(text.encode("utf-8", "surrogateescape"), max_token_length, max_message_bytes,
                               max_except, max_targets)
    if isinstance(parsed, control.Invalid):
        return Deny(400, parsed.reason)
    if not isinstance(parsed, control.Message):
        return Deny(400, "not a message")
    return parsed


def _form_to_json(body: bytes) -> Union[str, Deny]:
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body),
                          errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        return Deny(400, f"malformed form body: {exc}")
    obj: dict = {}
    for name, value in pairs:
        if name not in FORM_FIELDS:
            return Deny(400, f"unknown form field {name[:40]!r}")
        if name in ("to", "except"):
            obj.setdefault(name, []).append(value)
        elif name in obj:
            return Deny(400, f"form field {name!r} given twice")
        elif name == "retry":
            # ASCII digits only ("²" is a digit to str.isdigit, not to int),
            # and no more of them than the limit has: int() of thousands
            # of digits raises, and costs.
            if not (value.isascii() and value.isdigit()) or len(value) > len(str(control.MAX_RETRY_MS)):
                return Deny(400, control.RETRY_RULE)
            obj[name] = int(value)
        else:
            obj[name] = value
    if "data" not in obj:
        return Deny(400, 'missing "data"')
    return json.dumps(obj)


def body_length(head, limit: int) -> Union[int, Deny]:
    """How many body bytes an HTTP publish carries (Content-Length), or why
    it is refused: a publisher must say its length (no chunked bodies), and
    a body above ``limit`` is 413 before any of it is read."""
    if head.header(b"transfer-encoding") is not None:
        return Deny(400, "chunked bodies are not accepted: send Content-Length")
    value = head.header(b"content-length")
    if value is None:
        return Deny(400, "Content-Length required")
    text = value.strip()
    if not text.isdigit() or len(text) > 18:
        return Deny(400, f"bad Content-Length {value[:40]!r}")
    length = int(text)
    if length > limit:
        return Deny(413, f"body of {length} bytes over {limit}")
    return length


@dataclasses.dataclass(frozen=True)
class AccessPolicy:
    """The daemon's access settings, read at start, as the SSE port's glue
    asks them: ``None`` keys mean that check is off (hasses' behaviour)."""

    subscriber_key: Optional[Key] = None
    publisher_key: Optional[Key] = None
    cookie_name: str = DEFAULT_COOKIE
    publish_url: str = DEFAULT_PUBLISH_URL

    def check_stream(self, head, tokens: Iterable[str], query: Optional[dict] = None,
                     now: Optional[float] = None) -> Union[Accept, Deny]:
        if self.subscriber_key is None:
            return Accept(None)
        return check_stream(head, tokens, self.subscriber_key, self.cookie_name, query, now)

    def is_publish(self, head) -> bool:
        """A POST to the publish URL, while HTTP publishing is on."""
        if self.publisher_key is None or head.method != b"POST":
            return False
        return origin_form(head.target).partition(b"?")[0].decode("latin-1") == self.publish_url


class ExpiryWatch:
    """Streams that must end when their token's ``exp`` passes: ``due(now)``
    gives those whose time has come, each once.  A heap ordered by expiry
    with lazy removal: a stream that closes first only drops its entry
    (``discard``), and the heap is swept when its dead entries outnumber
    the live ones."""

    def __init__(self):
        self._heap: list = []
        self._live: dict = {}           # stream -> its entry
        self._order = itertools.count()  # ties never compare streams

    def __len__(self) -> int:
        return len(self._live)

    def add(self, stream, expires: Optional[float]) -> None:
        self.discard(stream)
        if expires is None:
            return
        entry = [expires, next(self._order), stream]
        self._live[stream] = entry
        heapq.heappush(self._heap, entry)

    def discard(self, stream) -> None:
        entry = self._live.pop(stream, None)
        if entry is not None:
            entry[2] = None
            if len(self._heap) > 64 and len(self._heap) > 2 * len(self._live):
                self._heap = [e for e in self._heap if e[2] is not None]
                heapq.heapify(self._heap)

    def next_expiry(self) -> Optional[float]:
        while self._heap and self._heap[0][2] is None:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def due(self, now: float) -> list:
        out = []
        heap = self._heap
        while heap and (heap[0][2] is None or heap[0][0] <= now):
            _, _, stream = heapq.heappop(heap)
            if stream is not None:
                del self._live[stream]
                out.append(stream)
        return out


# -- minting (tools, tests, backends) ----------------------------------------------


def mint(key: Key, subscribe: Iterable[str] = (), publish: Iterable[str] = (),
         ttl: Optional[float] = 3600, now: Optional[float] = None, **extra) -> str:
    """A signed token granting ``subscribe`` and ``publish``, ending in
    ``ttl`` seconds (None: never)."""
    if not key.can_sign:
        raise KeyFileError(f"key file {key.path}: a public key cannot sign; give the private key")
    now = time.time() if now is None else now
    claims = {CLAIM: {"subscribe": list(subscribe), "publish": list(publish)}, "iat": int(now), **extra}
    if ttl is not None:
        claims["exp"] = int(now + ttl)
    return jwt.encode(claims, key.key, algorithm=key.algorithm)
