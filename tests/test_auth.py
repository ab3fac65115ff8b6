"""The auth module with bytes only: key files, verification, grants, the
token's place in a request head, and HTTP publish bodies (PROTOCOL.md 9)."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pyhasses import auth, control, http

SECRET = b"a shared secret of at least 32 bytes, and more\n"


def hs_key():
    return auth.key_from_bytes(SECRET, "secret")


def pem_pair(kind="ec"):
    private = ec.generate_private_key(ec.SECP256R1()) if kind == "ec" else rsa.generate_private_key(65537, 2048)
    priv_pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
    pub_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    return priv_pem, pub_pem


def head(text: str) -> http.RequestHead:
    parsed = http.parse_head(text.replace("\n", "\r\n").encode() + b"\r\n")
    assert isinstance(parsed, http.RequestHead), parsed
    return parsed


def stream_head(extra="", query="subscribe=room1"):
    return head(f"GET /sse?{query} HTTP/1.1\nHost: x\nConnection: keep-alive\n{extra}")


# -- keys ----------------------------------------------------------------------


def test_a_secret_file_is_hs256_without_its_trailing_newline():
    key = hs_key()
    assert key.algorithm == "HS256" and key.key == SECRET[:-1]


def test_a_short_secret_is_refused():
    with pytest.raises(auth.KeyFileError, match="at least 32"):
        auth.key_from_bytes(b"short\n")


@pytest.mark.parametrize("kind, alg", [("ec", "ES256"), ("rsa", "RS256")])
def test_a_pem_public_key_means_its_algorithm(kind, alg):
    _, pub = pem_pair(kind)
    assert auth.key_from_bytes(pub).algorithm == alg


def test_the_daemon_refuses_a_private_key_and_the_minting_tool_takes_it(tmp_path):
    priv, _ = pem_pair()
    path = tmp_path / "key.pem"
    path.write_bytes(priv)
    with pytest.raises(auth.KeyFileError, match="public key"):
        auth.load_key(str(path))
    assert auth.load_key(str(path), private=True).can_sign


def test_a_missing_key_file_says_so(tmp_path):
    with pytest.raises(auth.KeyFileError, match="cannot read key file"):
        auth.load_key(str(tmp_path / "nope"))


def test_a_broken_pem_is_refused_with_a_reason():
    with pytest.raises(auth.KeyFileError, match="not a usable PEM key"):
        auth.key_from_bytes(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")


# -- verification ----------------------------------------------------------------


def test_a_good_token_gives_its_grants_and_expiry():
    key = hs_key()
    now = time.time()
    grants = auth.verify(auth.mint(key, ["room1", "news*"], ["*"], ttl=60, now=now), key)
    assert grants.subscribe == ("room1", "news*") and grants.publish == ("*",)
    assert grants.expires == int(now + 60)


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_asymmetric_tokens_verify_with_the_public_key_only(kind):
    priv, pub = pem_pair(kind)
    token = auth.mint(auth.key_from_bytes(priv, private=True), ["room1"])
    assert auth.verify(token, auth.key_from_bytes(pub)).subscribe == ("room1",)


def test_an_expired_token_is_refused():
    key = hs_key()
    token = auth.mint(key, ["room1"], ttl=10, now=time.time() - 60)
    with pytest.raises(auth.Refused, match="expired"):
        auth.verify(token, key)


def test_exp_has_no_leeway():
    key = hs_key()
    token = auth.mint(key, ["room1"], ttl=10, now=1000)
    assert auth.verify(token, key, now=1009.5)
    with pytest.raises(auth.Refused, match="expired"):
        auth.verify(token, key, now=1010)


def test_a_token_before_its_nbf_is_refused():
    key = hs_key()
    token = auth.mint(key, ["room1"], nbf=int(time.time()) + 60)
    with pytest.raises(auth.Refused, match="not valid yet"):
        auth.verify(token, key)


def test_a_token_signed_with_another_secret_is_refused():
    other = auth.key_from_bytes(b"another secret of at least thirty-two bytes")
    with pytest.raises(auth.Refused, match="bad signature"):
        auth.verify(auth.mint(other, ["room1"]), hs_key())


def test_a_token_signed_with_another_ec_key_is_refused():
    priv, _ = pem_pair()
    _, pub = pem_pair()
    with pytest.raises(auth.Refused, match="bad signature"):
        auth.verify(auth.mint(auth.key_from_bytes(priv, private=True), ["room1"]), auth.key_from_bytes(pub))


def _b64(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
def test_alg_none_is_refused(alg):
    token = f'{_b64({"alg": alg, "typ": "JWT"})}.{_b64({"pyhasses": {"subscribe": ["*"]}})}.'
    with pytest.raises(auth.Refused, match="not accepted"):
        auth.verify(token, hs_key())


def test_hs256_signed_with_the_public_key_bytes_is_refused():
    """The classic confusion: the public key's PEM used as an HMAC secret."""
    import hashlib
    import hmac

    _, pub = pem_pair()
    signing_input = f'{_b64({"alg": "HS256", "typ": "JWT"})}.{_b64({"pyhasses": {"subscribe": ["*"]}})}'
    sig = base64.urlsafe_b64encode(hmac.new(pub, signing_input.encode(), hashlib.sha256).digest()).rstrip(b"=")
    with pytest.raises(auth.Refused, match="not accepted"):
        auth.verify(f"{signing_input}.{sig.decode()}", auth.key_from_bytes(pub))


@pytest.mark.parametrize("exp", ["NaN", "Infinity", "1e999", '"soon"', "true"])
def test_a_non_finite_or_non_numeric_exp_is_refused(exp):
    import hashlib
    import hmac

    payload = base64.urlsafe_b64encode(('{"pyhasses": {"subscribe": ["a"]}, "exp": %s}' % exp).encode()).rstrip(b"=")
    signing_input = f'{_b64({"alg": "HS256", "typ": "JWT"})}.{payload.decode()}'
    sig = base64.urlsafe_b64encode(hmac.new(SECRET[:-1], signing_input.encode(), hashlib.sha256).digest()).rstrip(b"=")
    with pytest.raises(auth.Refused):
        auth.verify(f"{signing_input}.{sig.decode()}", hs_key())


def test_another_algorithm_than_the_keys_is_refused():
    token = jwt.encode({"pyhasses": {"subscribe": ["*"]}}, SECRET[:-1] * 2, algorithm="HS512")
    with pytest.raises(auth.Refused, match="HS512"):
        auth.verify(token, hs_key())


@pytest.mark.parametrize("cut", [1, 5, 20, -1, -10])
def test_a_truncated_token_is_refused(cut):
    token = auth.mint(hs_key(), ["room1"])
    with pytest.raises(auth.Refused):
        auth.verify(token[:cut] if cut > 0 else token[:cut], hs_key())


@pytest.mark.parametrize("junk", ["", "x", "a.b.c", "....", "\x00\xff", "eyJ.eyJ.sig", "Bearer"])
def test_junk_is_refused(junk):
    with pytest.raises(auth.Refused):
        auth.verify(junk, hs_key())


def test_a_token_whose_payload_was_changed_is_refused():
    key = hs_key()
    h, _, sig = auth.mint(key, ["room1"]).split(".")
    forged = f"{h}.{_b64({'pyhasses': {'subscribe': ['*']}})}.{sig}"
    with pytest.raises(auth.Refused, match="bad signature"):
        auth.verify(forged, key)


@pytest.mark.parametrize("claim", [None, "x", {"subscribe": "room1"}, {"subscribe": [1]}, {"subscribe": [""]}])
def test_a_token_without_a_usable_claim_is_refused(claim):
    payload = {} if claim is None else {"pyhasses": claim}
    token = jwt.encode(payload, SECRET[:-1], algorithm="HS256")
    with pytest.raises(auth.Refused):
        auth.verify(token, hs_key())


def test_a_non_numeric_exp_is_refused():
    token = jwt.encode({"pyhasses": {"subscribe": ["a"]}}, SECRET[:-1], algorithm="HS256")
    h, _, _ = token.split(".")
    bad = jwt.api_jws.encode(json.dumps({"pyhasses": {"subscribe": ["a"]}, "exp": "soon"}).encode(),
                             SECRET[:-1], algorithm="HS256")
    with pytest.raises(auth.Refused):
        auth.verify(bad, hs_key())


def test_an_oversize_token_is_refused_before_parsing():
    with pytest.raises(auth.Refused, match="over"):
        auth.verify("a" * (auth.MAX_TOKEN_BYTES + 1), hs_key())


# -- grants ----------------------------------------------------------------------


@pytest.mark.parametrize("grants, token, ok", [
    (["room1"], "room1", True),
    (["room1"], "room12", False),
    (["room1"], "room", False),
    (["news*"], "news", True),
    (["news*"], "newsroom", True),
    (["news*"], "new", False),
    (["news*"], "news*", True),
    (["*"], "anything", True),
    (["*"], "*", True),
    (["news*"], "*", False),
    (["room1"], "*", False),
    ([], "room1", False),
])
def test_coverage(grants, token, ok):
    assert auth.covers(grants, token) is ok


def _covers_by_scan(grants, token):
    """The rule, one grant at a time, as PROTOCOL.md 9 words it."""
    for grant in grants:
        if grant == "*" or (grant.endswith("*") and token.startswith(grant[:-1]) and token != "*") \
                or grant == token:
            return True
    return False


def test_the_arranged_grants_cover_what_a_scan_of_them_covers():
    import random
    rng = random.Random(12)
    words = ["", "a", "ab", "abc", "b", "ba", "*", "a*", "**", "*a", "room1", "room", "news"]
    for _ in range(3000):
        grants = [rng.choice(words) + rng.choice(["", "*"]) for _ in range(rng.randrange(0, 6))]
        grants = [g for g in grants if g]
        token = rng.choice(words) + rng.choice(["", "x", "*", "b"])
        assert auth.covers(grants, token) is _covers_by_scan(grants, token), (grants, token)


# -- streams ---------------------------------------------------------------------


def test_a_stream_takes_the_bearer_header_first():
    key = hs_key()
    good = auth.mint(key, ["room1"])
    bad = auth.mint(key, ["other"])
    h = stream_head(f"Authorization: Bearer {good}\nCookie: pyhassesAuthorization={bad}\n",
                    f"subscribe=room1&authorization={bad}")
    assert isinstance(auth.check_stream(h, ["room1"], key), auth.Accept)


def test_a_stream_takes_the_cookie_before_the_query():
    key = hs_key()
    good = auth.mint(key, ["room1"], ttl=30)
    bad = auth.mint(key, ["other"])
    h = stream_head(f"Cookie: theme=dark; pyhassesAuthorization={good}; x=y\n",
                    f"subscribe=room1&authorization={bad}")
    decision = auth.check_stream(h, ["room1"], key)
    assert isinstance(decision, auth.Accept) and decision.expires > time.time()


def test_the_cookie_name_is_configurable():
    key = hs_key()
    good = auth.mint(key, ["room1"])
    h = stream_head(f"Cookie: sseToken={good}\n")
    assert isinstance(auth.check_stream(h, ["room1"], key, cookie_name="sseToken"), auth.Accept)
    assert auth.check_stream(h, ["room1"], key).status == 401


def test_a_stream_takes_the_query_parameter_last():
    key = hs_key()
    h = stream_head(query=f"subscribe=room1&authorization={auth.mint(key, ['room1'])}")
    assert isinstance(auth.check_stream(h, ["room1"], key), auth.Accept)


def test_no_token_is_401():
    decision = auth.check_stream(stream_head(), ["room1"], hs_key())
    assert decision.status == 401 and "no token" in decision.reason


def test_a_bad_token_is_401():
    decision = auth.check_stream(stream_head("Authorization: Bearer abc.def.ghi\n"), ["room1"], hs_key())
    assert decision.status == 401


def test_a_token_that_does_not_cover_every_token_is_403():
    key = hs_key()
    h = stream_head(f"Authorization: Bearer {auth.mint(key, ['room1', 'news*'])}\n")
    decision = auth.check_stream(h, ["room1", "newsfeed", "user42"], key)
    assert decision.status == 403 and "user42" in decision.reason and "newsfeed" not in decision.reason


def test_subscribing_to_everything_needs_the_star_grant():
    key = hs_key()
    h = stream_head(f"Authorization: Bearer {auth.mint(key, ['a*'])}\n")
    assert auth.check_stream(h, ["*"], key).status == 403


def test_the_401_and_403_answers_carry_a_one_line_reason():
    answer = http.denied(401, "token expired\r\nInjected: yes", b"*")
    head_part, _, body = answer.partition(b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 401 Unauthorized\r\n")
    assert b"Connection: close\r\n" in head_part and b"WWW-Authenticate: Bearer" in head_part
    assert body.count(b"\n") == 1 and b"Injected" not in head_part
    assert f"Content-Length: {len(body)}".encode() in head_part
    assert http.denied(403, "no", b"*").startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert http.denied(413, "big", b"*").startswith(b"HTTP/1.1 413 Content Too Large\r\n")


# -- HTTP publish ------------------------------------------------------------------


def publish_head(token, ctype="application/x-www-form-urlencoded"):
    auth_line = f"Authorization: Bearer {token}\n" if token else ""
    return head(f"POST /publish HTTP/1.1\nHost: x\n{auth_line}Content-Type: {ctype}\n")


def check(h, body, key=None):
    return auth.check_publish(h, body, key or hs_key(), 128, 1 << 20, 1 << 21)


def test_a_form_publish_gives_the_message_the_json_form_gives():
    key = hs_key()
    token = auth.mint(key, publish=["room1", "news*"])
    result = check(publish_head(token), b"to=room1&to=news*&data=a%3Bb%0Ac&event=chat&except=alice&retry=500", key)
    assert isinstance(result, auth.Publish)
    same = control.interpret(json.dumps({"to": ["room1", "news*"], "data": "a;b\nc", "event": "chat",
                                         "except": ["alice"], "retry": 500}).encode(), 128, 1 << 20)
    assert result.message.targets == same.targets
    assert (result.message.data, result.message.event, result.message.retry) == ("a;b\nc", "chat", 500)


def test_a_json_publish_runs_through_the_control_channels_validation():
    key = hs_key()
    token = auth.mint(key, publish=["room1"])
    result = check(publish_head(token, "application/json; charset=utf-8"),
                   b'{"to": "room1", "data": "x", "ack": true}', key)
    assert isinstance(result, auth.Publish) and result.message.data == "x"
    bad = check(publish_head(token, "application/json"), b'{"to": "room1", "data": 5}', key)
    assert bad.status == 400 and '"data" must be a string' in bad.reason


@pytest.mark.parametrize("body, reason", [
    (b"to=room1", 'missing "data"'),
    (b"data=x", '"to"'),
    (b"to=room1&data=x&bogus=1", "unknown form field"),
    (b"to=room1&data=x&retry=soon", "retry"),
    (b"to=room1&data=x&data=y", "twice"),
    (b"to=room1&data=%ff", "malformed"),
    (b"to=a-*&data=x", "bad address"),
])
def test_a_malformed_form_body_is_400(body, reason):
    key = hs_key()
    result = check(publish_head(auth.mint(key, publish=["*"])), body, key)
    assert result.status == 400 and reason in result.reason


def test_an_unknown_content_type_is_400():
    key = hs_key()
    assert check(publish_head(auth.mint(key, publish=["*"]), "text/plain"), b"room1=x", key).status == 400


def test_publish_needs_a_bearer_token():
    assert check(publish_head(None), b"to=room1&data=x").status == 401


def test_a_subscribe_grant_does_not_allow_publishing():
    key = hs_key()
    result = check(publish_head(auth.mint(key, subscribe=["*"])), b"to=room1&data=x", key)
    assert result.status == 403


@pytest.mark.parametrize("grants, to, ok", [
    (["room1"], "room1", True),
    (["room1"], "room1-alice", True),
    (["room*"], "room*", True),
    (["room*"], "r*", False),
    (["room1"], "*", False),
    (["*"], "*", True),
])
def test_publish_coverage_of_prefix_and_star_addresses(grants, to, ok):
    key = hs_key()
    result = check(publish_head(auth.mint(key, publish=grants)), f"to={to}&data=x".encode(), key)
    assert isinstance(result, auth.Publish) is ok, result


def test_a_body_above_the_part_limit_is_413():
    key = hs_key()
    result = auth.check_publish(publish_head(auth.mint(key, publish=["*"])), b"data=" + b"x" * 2000, key,
                                128, 1 << 20, 1024)
    assert result.status == 413


def test_the_publish_reply_is_the_acknowledgement_json():
    body = b'{"ok": true,"id": "1","delivered": 2}\n'
    answer = http.publish_reply(body, b"*")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\n" + body)
    assert b"Content-Type: application/json\r\n" in answer and b"Connection: close" not in answer


# -- what the SSE port's glue asks ---------------------------------------------------


def test_body_length():
    assert auth.body_length(head("POST /publish HTTP/1.1\nContent-Length: 12\n"), 100) == 12
    assert auth.body_length(head("POST /publish HTTP/1.1\nContent-Length: 101\n"), 100).status == 413
    assert auth.body_length(head("POST /publish HTTP/1.1\n"), 100).status == 400
    for value in (b"-1", b"1, 2", b"0x10", b"9" * 30):
        # httptools refuses most of these already; the check does not rely on it.
        raw = http.RequestHead(b"POST", b"/publish", "1.1", [(b"content-length", value)], {b"content-length": value})
        assert auth.body_length(raw, 100).status in (400, 413)
    assert auth.body_length(head("POST /publish HTTP/1.1\nTransfer-Encoding: chunked\n"), 100).status == 400


def test_policy_without_keys_accepts_everything_and_sees_no_publish():
    policy = auth.AccessPolicy()
    assert policy.check_stream(stream_head(), ["room1"]) == auth.Accept(None)
    assert not policy.is_publish(publish_head("x"))


def test_policy_with_keys():
    key = hs_key()
    policy = auth.AccessPolicy(key, key, "c", "/pub")
    assert policy.check_stream(stream_head(), ["room1"]).status == 401
    assert isinstance(policy.check_stream(stream_head(f"Cookie: c={auth.mint(key, ['room1'])}\n"), ["room1"]),
                      auth.Accept)
    assert policy.is_publish(head("POST /pub?x=1 HTTP/1.1\n"))
    assert not policy.is_publish(head("POST /publish HTTP/1.1\n"))
    assert not policy.is_publish(head("GET /pub HTTP/1.1\n"))


def test_expiry_watch_gives_each_stream_once_in_order():
    watch = auth.ExpiryWatch()
    a, b, c, d = object(), object(), object(), object()
    watch.add(a, 10)
    watch.add(b, 5)
    watch.add(c, 5)
    watch.add(d, None)  # no exp: never due
    assert watch.next_expiry() == 5 and len(watch) == 3
    assert watch.due(4) == []
    assert set(watch.due(5)) == {b, c}
    watch.add(a, 20)  # a renewed stream (re-init with a fresh token)
    assert watch.due(15) == []
    watch.discard(a)  # closed before its time
    assert watch.due(100) == [] and len(watch) == 0 and watch.next_expiry() is None


def test_expiry_watch_sweeps_its_dead_entries():
    watch = auth.ExpiryWatch()
    streams = [object() for _ in range(1000)]
    for i, s in enumerate(streams):
        watch.add(s, i)
    for s in streams[:900]:
        watch.discard(s)
    assert len(watch._heap) <= 2 * len(watch) + 1
    assert watch.due(2000) == streams[900:]
