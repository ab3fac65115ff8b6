"""StreamSession with bytes only: what a browser sends in, actions out; no
socket, no reactor, no hub."""

import random

from pyhasses import http, session
from pyhasses.hub import Counters
from pyhasses.outbox import Outbox
from pyhasses.session import Answer, Close, Ignored, Reinit, StreamRules, StreamSession, Subscribe, Write
from pyhasses.settings import Endpoint, Settings
from pyhasses.sse import LAST_CHUNK, encode_event

GET = b"GET /sse?subscribe=a-b&id=u1 HTTP/1.1\r\nConnection: keep-alive\r\nUser-Agent: t\r\n\r\n"


class Runtime:
    reinit = False


class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def make(reinit=False, clock=None, rng=None, oldest=None, **settings):
    s = Settings(sse=Endpoint((), 8080), match_url="/sse", **settings)
    runtime = Runtime()
    runtime.reinit = reinit
    counters = Counters()
    rules = StreamRules(s, runtime, b"*", counters, lambda: oldest, clock=clock or Clock(),
                        rng=rng or random.Random(1))
    return StreamSession(rules), counters


def test_a_whole_request_subscribes_with_the_greeting():
    sess, _ = make(retry=0)
    [action] = sess.receive(GET)
    assert isinstance(action, Subscribe)
    assert action.request.tokens == ["a", "b"] and action.request.uniq_id == "u1"
    assert action.request.agent == "t" and action.request.last_event_id is None
    assert action.greeting.startswith(b"HTTP/1.1 200 OK\r\n") and b"Transfer-Encoding: chunked" in action.greeting
    assert sess.state == session.STREAM and sess.established and sess.reader is None


def test_the_greeting_carries_the_retry_hint_in_the_same_object():
    sess, _ = make(retry=3000)
    [action] = sess.receive(GET)
    head, _, hint = action.greeting.partition(b"\r\n\r\n")
    assert head.endswith(b"X-Accel-Buffering: no") and b"\r\nretry: " in hint


def test_a_head_split_byte_by_byte_waits_then_subscribes():
    sess, _ = make()
    actions = []
    for i in range(len(GET) - 1):
        actions += sess.receive(GET[i:i + 1])
    assert actions == [] and sess.state == session.HEADER
    [action] = sess.receive(GET[-1:])
    assert isinstance(action, Subscribe)


def test_last_event_id_is_handed_on_for_the_resume():
    sess, _ = make()
    [action] = sess.receive(GET.replace(b"\r\n\r\n", b"\r\nLast-Event-ID: 42\r\n\r\n"))
    assert action.request.last_event_id == "42"


def test_bad_heads_are_answered_and_closed():
    for data, status, start in [
        (b"\x16\x03\x01junk", 400, b"HTTP/1.1 400 Bad Request\r\n"),
        (b"GET /nope?subscribe=a HTTP/1.1\r\nConnection: keep-alive\r\n\r\n", 404, b"HTTP/1.1 404 Not Found\r\n"),
        (b"GET /sse?subscribe=a HTTP/1.1\r\n\r\n", 400, b"HTTP/1.1 400 "),
        (b"POST /sse HTTP/1.1\r\n\r\n", 501, b"HTTP/1.1 501 Not Implemented\r\n"),
        (b"HEAD /sse HTTP/1.1\r\n\r\n", 200, b"HTTP/1.1 200 OK\r\n"),
        (b"OPTIONS * HTTP/1.1\r\n\r\n", 200, b"HTTP/1.1 200 OK\r\n"),
    ]:
        sess, _ = make()
        [action] = sess.receive(data)
        assert isinstance(action, Answer), data
        assert action.status == status and action.data.startswith(start), (data, action)
        assert b"Connection: close\r\n" in action.data
        assert sess.state == session.END
        assert sess.receive(GET) == []  # answered: nothing more is read


def test_the_head_answer_and_the_options_answer_differ():
    head, _ = make()
    options, _ = make()
    [a] = head.receive(b"HEAD /sse HTTP/1.1\r\n\r\n")
    [b] = options.receive(b"OPTIONS /sse HTTP/1.1\r\n\r\n")
    assert b"Content-Type: text/event-stream" in a.data and b"Content-Length: 0" in b.data


def test_an_oversize_head_is_431():
    sess, _ = make(max_head_bytes=1024)
    [action] = sess.receive(b"GET /sse?subscribe=" + b"a" * 2000)
    assert action.status == 431


def test_bytes_after_the_handshake_are_ignored_without_reinit():
    sess, counters = make(reinit=False)
    actions = sess.receive(GET + GET)
    assert [type(a) for a in actions] == [Subscribe, Ignored]
    assert actions[1].data == GET and counters.reinits == 0


def test_a_new_get_reinitialises_under_reinit():
    sess, _ = make(reinit=True)
    actions = sess.receive(GET + b"\r\n" + GET.replace(b"a-b", b"c"))
    assert [type(a) for a in actions] == [Subscribe, Reinit, Subscribe]
    assert actions[2].request.tokens == ["c"]
    assert sess.state == session.STREAM


def test_reinit_takes_only_a_get():
    sess, _ = make(reinit=True)
    sess.receive(GET)
    [action] = sess.receive(b"PING\r\n")
    assert isinstance(action, Ignored) and sess.state == session.STREAM


def test_reinit_follows_the_runtime_switch():
    sess, _ = make(reinit=False)
    sess.receive(GET)
    assert isinstance(sess.receive(GET)[0], Ignored)
    sess.rules.runtime.reinit = True
    assert [type(a) for a in sess.receive(GET)] == [Reinit, Subscribe]


def test_handshake_expiry_closes_a_half_request_and_spares_a_stream():
    sess, _ = make(handshake_timeout=7)
    sess.receive(GET[:10])
    [action] = sess.handshake_expired()
    assert isinstance(action, Close) and "within 7 s" in action.reason
    stream, _ = make()
    stream.receive(GET)
    assert stream.handshake_expired() == []


def test_end_sends_the_last_chunk_only_on_a_stream():
    sess, _ = make()
    sess.receive(GET)
    assert sess.end() == [Write(LAST_CHUNK)]
    half, _ = make()
    half.receive(GET[:5])
    assert half.end() == [Write(b"")]


def test_lifetime_is_monotonic_with_ten_percent_jitter():
    clock = Clock(500.0)
    ends = []
    for seed in range(200):
        sess, _ = make(clock=clock, rng=random.Random(seed), stream_lifetime=100)
        assert sess.ends_at == float("inf")  # no stream, no lifetime
        sess.receive(GET)
        ends.append(sess.ends_at - 500.0)
        assert not sess.expired(500.0 + 89.9) and sess.expired(500.0 + 110.1)
    assert min(ends) >= 90 and max(ends) <= 110
    assert max(ends) - min(ends) > 15  # spread, not all at one instant


def test_make_room_drops_oldest_and_puts_one_reset_in_their_place():
    sess, counters = make(oldest=7)
    sess.receive(GET)
    e = [encode_event(i, "x" * 100) for i in range(1, 6)]
    box = Outbox(3 * len(e[0]) + 50)
    box.append(b"HEAD")
    for data in e[:3]:
        assert box.offer(data)
    assert not box.offer(e[3])
    assert sess.make_room(box, e[3], pinned=1)
    chunks = box.take_head()
    assert chunks[0] == b"HEAD" and b"event: reset" in chunks[1] and b'"oldest":"7"' in chunks[1]
    assert chunks[-1] is e[3]
    assert sess.dropped == counters.dropped_events >= 1 and counters.resets == 1


def test_make_room_keeps_one_pending_reset_and_counts_on():
    sess, counters = make()
    sess.receive(GET)
    e = [encode_event(i, "y" * 200) for i in range(1, 10)]
    box = Outbox(2 * len(e[0]) + 200)
    box.append(b"HEAD")
    box.offer(e[0])
    for data in e[1:]:
        if not box.offer(data):
            sess.make_room(box, data, pinned=1)
    chunks = box.take_head()
    resets = [c for c in chunks if b"event: reset" in c]
    assert len(resets) == 1 and counters.resets == 1
    assert b'"dropped":%d' % sess.dropped in resets[0]
    assert chunks[-1] is e[-1]


def test_an_event_too_big_for_the_queue_is_counted_and_not_queued():
    sess, counters = make()
    sess.receive(GET)
    box = Outbox(300)
    big = encode_event(1, "z" * 1000)
    assert not box.offer(big)
    assert not sess.make_room(box, big, pinned=0)
    assert big not in box.take_head() and counters.dropped_events == 1


def test_fixed_answer_bytes_match_http():
    decision = http.FixedAnswer(404, "error", "x")
    assert http.fixed_answer(decision, b"*")[:24] == http.error(404, b"*")[:24]


# -- access control (PROTOCOL.md 9) through the session's seams --------------------

KEY = b"k" * 32


def make_access(subscriber=True, publisher=True, clock=None, wall=None, **settings):
    from pyhasses import auth

    key = auth.key_from_bytes(KEY)
    s = Settings(sse=Endpoint((), 8080), match_url="/sse", **settings)
    policy = auth.AccessPolicy(key if subscriber else None, key if publisher else None)
    rules = StreamRules(s, Runtime(), b"https://app.example", Counters(), lambda: None, clock=clock or Clock(),
                        rng=random.Random(1), policy=policy, wall=wall or (lambda: 1_800_000_000.0))
    return StreamSession(rules), key


def token(key, now=1_800_000_000.0, ttl=60, **grants):
    from pyhasses import auth

    return auth.mint(key, ttl=ttl, now=now, **grants)


def stream_get(tok, tokens=b"a-b"):
    return (b"GET /sse?subscribe=" + tokens + b" HTTP/1.1\r\nConnection: keep-alive\r\n"
            b"Authorization: Bearer " + tok.encode() + b"\r\n\r\n")


def test_a_stream_without_a_valid_token_is_401_with_the_cors_block():
    sess, key = make_access()
    [action] = sess.receive(GET)
    assert isinstance(action, Answer) and action.status == 401 and sess.state == session.END
    assert action.data.startswith(b"HTTP/1.1 401 Unauthorized\r\n")
    assert b"Access-Control-Allow-Origin: https://app.example\r\nAccess-Control-Allow-Methods: GET\r\n" in action.data
    assert action.data.endswith(b"\r\n\r\nno token (Authorization: Bearer, the cookie or ?authorization=)\n")


def test_a_token_not_covering_every_subscription_is_403():
    sess, key = make_access()
    [action] = sess.receive(stream_get(token(key, subscribe=["a"])))
    assert action.status == 403 and b"'b'" in action.data and b"Access-Control-Allow-Headers" in action.data


def test_an_accepted_token_ends_the_stream_at_its_exp_on_the_monotonic_clock():
    clock = Clock(500.0)
    sess, key = make_access(clock=clock)
    [action] = sess.receive(stream_get(token(key, ttl=30, subscribe=["a", "b"])))
    assert isinstance(action, Subscribe) and sess.token_ends == 530.0
    assert not sess.expired(529.9) and sess.expired(530.0) and sess.token_expired(530.0)
    assert sess.ends_at == 530.0


def test_without_a_subscriber_key_streams_open_as_before():
    sess, _ = make_access(subscriber=False)
    [action] = sess.receive(GET)
    assert isinstance(action, Subscribe) and sess.token_ends is None


def post(tok, body: bytes, ctype=b"application/x-www-form-urlencoded", extra=b""):
    auth_line = b"Authorization: Bearer " + tok.encode() + b"\r\n" if tok else b""
    return (b"POST /publish HTTP/1.1\r\nHost: x\r\n" + auth_line + b"Content-Type: " + ctype + b"\r\n" + extra +
            b"Content-Length: %d\r\n\r\n" % len(body) + body)


def test_posts_on_one_connection_each_give_a_publish_and_the_session_waits_for_the_next():
    sess, key = make_access()
    tok = token(key, publish=["room*"])
    data = post(tok, b"to=room1&data=one") + post(tok, b'{"to": "room2", "data": "two"}', b"application/json")
    actions = []
    for i in range(0, len(data), 7):  # split anywhere: heads and bodies across reads
        actions += sess.receive(data[i:i + 7])
    assert [type(a).__name__ for a in actions] == ["Publish", "Publish"]
    assert [a.message.data for a in actions] == ["one", "two"] and all(a.keep_alive for a in actions)
    assert sess.state in (session.NEW, session.HEADER)
    reply = sess.publish_reply(b'{"ok": true}\n')
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n") and reply.endswith(b"\r\n\r\n{\"ok\": true}\n")


def test_connection_close_on_a_publish_ends_the_session_after_the_answer():
    sess, key = make_access()
    [action] = sess.receive(post(token(key, publish=["*"]), b"to=a&data=x", extra=b"Connection: close\r\n"))
    assert isinstance(action, session.Publish) and not action.keep_alive and sess.state == session.END


def test_publish_refusals():
    sess, key = make_access()
    cases = [
        (post(None, b"to=a&data=x"), 401),
        (post("not.a.token", b"to=a&data=x"), 401),
        (post(token(key, subscribe=["a"]), b"to=a&data=x"), 403),
        (post(token(key, publish=["a"]), b"to=a&nope=x"), 400),
        (post(token(key, publish=["a"]), b"to=a&data=x", b"text/plain"), 400),
        (b"POST /publish HTTP/1.1\r\nAuthorization: Bearer " + token(key, publish=["a"]).encode() +
         b"\r\nContent-Length: 99999999\r\n\r\n", 413),
    ]
    for data, status in cases:
        sess, _ = make_access()
        actions = sess.receive(data)
        assert [(type(a).__name__, a.status) for a in actions] == [("Answer", status)], data
        assert sess.state == session.END


def test_a_publish_without_a_token_is_refused_before_its_body_is_read():
    sess, key = make_access()
    [action] = sess.receive(b"POST /publish HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n")
    assert action.status == 401 and sess.reader is None


def test_without_a_publisher_key_a_post_is_501_as_before():
    sess, key = make_access(publisher=False)
    [action] = sess.receive(post(token(key, publish=["*"]), b"to=a&data=x"))
    assert action.status == 501


def test_a_reinit_checks_the_new_requests_token_and_keeps_only_its_expiry():
    from pyhasses import auth

    sess, key = make_access()
    sess.rules.runtime.reinit = True
    [first] = sess.receive(stream_get(token(key, ttl=30, subscribe=["a", "b"])))
    assert isinstance(first, Subscribe) and sess.token_ends is not None
    actions = sess.receive(stream_get(auth.mint(key, ttl=None, subscribe=["*"])))
    assert [type(a) for a in actions] == [Reinit, Subscribe] and sess.token_ends is None
    actions = sess.receive(stream_get(token(key, subscribe=["x"])))
    assert [type(a) for a in actions] == [Reinit, Answer] and actions[1].status == 403


def test_a_publish_that_expects_100_continue_gets_it_once_its_token_and_length_pass():
    sess, key = make_access()
    head = post(token(key, publish=["a"]), b"", extra=b"Expect: 100-continue\r\n").replace(
        b"Content-Length: 0", b"Content-Length: 11")
    [interim] = sess.receive(head)
    assert isinstance(interim, session.Interim) and interim.data == b"HTTP/1.1 100 Continue\r\n\r\n"
    [action] = sess.receive(b"to=a&data=x")
    assert isinstance(action, session.Publish) and action.message.data == "x"
    sess, _ = make_access()
    [refused] = sess.receive(head.replace(b"Authorization: Bearer", b"X-Nothing:"))
    assert isinstance(refused, Answer) and refused.status == 401


def test_a_stream_request_with_a_body_is_400_with_or_without_reinit():
    """Issue 15 point 4: one request is one request."""
    head = GET[:-2]
    for reinit in (False, True):
        for fields in (b"Content-Length: 5\r\n", b"Content-Length: 05\r\n", b"Transfer-Encoding: chunked\r\n"):
            for request in (head, b"HEAD /sse HTTP/1.1\r\n", b"OPTIONS /sse HTTP/1.1\r\n"):
                sess, _ = make(reinit=reinit)
                [action] = sess.receive(request + fields + b"\r\nhello")
                assert isinstance(action, Answer) and action.status == 400, (reinit, fields, request)
                assert b"Connection: close\r\n" in action.data and sess.state == session.END


def test_a_get_whose_body_holds_a_second_request_is_answered_once_and_never_subscribes():
    """The issue's exploit: under -ra the body's GET used to re-subscribe
    the stream to a token the outer request never named."""
    inner = GET.replace(b"a-b", b"secret")
    outer = GET[:-2] + b"Content-Length: %d\r\n\r\n" % len(inner) + inner
    sess, _ = make(reinit=True)
    actions = sess.receive(outer)
    assert [type(a) for a in actions] == [Answer] and actions[0].status == 400
    assert sess.receive(inner) == []  # answered: nothing more is read


def test_content_length_zero_is_no_body():
    sess, _ = make()
    [action] = sess.receive(GET[:-2] + b"Content-Length: 0\r\n\r\n")
    assert isinstance(action, Subscribe)
