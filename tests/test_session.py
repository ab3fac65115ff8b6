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
