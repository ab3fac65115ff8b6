"""The Redis protocol without I/O: URLs, command bytes, replies matched to
the commands that asked, and the cluster's message field, with bytes only."""

import pytest

from pyhasses import cluster, resp
from pyhasses.hub import Target


def test_tcp_url_with_user_password_and_db():
    a = resp.parse_url("redis://alice:s%40cret@10.1.2.3:6380/2")
    assert (a.host, a.port, a.db, a.user, a.password, a.path) == ("10.1.2.3", 6380, 2, "alice", "s@cret", None)
    assert a.login_commands() == [("AUTH", "alice", "s@cret"), ("SELECT", "2")]
    assert "s@cret" not in a.describe()


def test_password_alone_and_defaults():
    a = resp.parse_url("redis://:pw@localhost")
    assert (a.host, a.port, a.db, a.user, a.password) == ("localhost", 6379, 0, None, "pw")
    assert a.login_commands() == [("AUTH", "pw")]
    assert resp.parse_url("redis://127.0.0.1:7000").login_commands() == []


def test_unix_socket_url():
    a = resp.parse_url("unix:///run/redis/redis.sock?db=3")
    assert (a.path, a.db, a.host) == ("/run/redis/redis.sock", 3, None)


@pytest.mark.parametrize("url, words", [
    ("http://127.0.0.1:6379", "scheme"),
    ("redis://", "no host"),
    ("redis://127.0.0.1:99999", "out of range"),
    ("redis://127.0.0.1:6379/zero", "database"),
    ("unix://relative.sock", "absolute path"),
    ("unix://run/redis/redis.sock", "absolute path"),  # not /redis/redis.sock
    ("rediss://h:1", "scheme"),
])
def test_bad_urls_say_why(url, words):
    with pytest.raises(resp.UrlError) as caught:
        resp.parse_url(url)
    assert words in str(caught.value) and url in str(caught.value)


def test_command_is_an_array_of_bulk_strings():
    assert resp.encode("XADD", "k", 5, b"\x00\xff") == b"*4\r\n$4\r\nXADD\r\n$1\r\nk\r\n$1\r\n5\r\n$2\r\n\x00\xff\r\n"


def test_replies_reach_their_commands_in_order_across_any_split():
    talk = resp.Conversation()
    got = []
    talk.ask(lambda r: got.append(("a", r)), "PING")
    talk.ask(lambda r: got.append(("b", r)), "GET", "x")
    talk.ask(lambda r: got.append(("c", r)), "XREAD")
    stream = b"+PONG\r\n$-1\r\n*1\r\n*2\r\n$1\r\nk\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nm\r\n$2\r\nhi\r\n"
    answers = []
    for i in range(len(stream)):  # one byte at a time: nothing lost, nothing early
        answers += talk.feed(stream[i:i + 1])
    for callback, reply in answers:
        callback(reply)
    assert got == [("a", b"PONG"), ("b", None), ("c", [[b"k", [[b"1-0", [b"m", b"hi"]]]]])]
    assert talk.outstanding == 0


def test_error_reply_is_an_object_and_garbage_is_a_fault():
    talk = resp.Conversation()
    talk.ask(None, "AUTH", "x")
    [(callback, reply)] = talk.feed(b"-WRONGPASS invalid username-password pair\r\n")
    assert isinstance(reply, resp.ReplyError) and "WRONGPASS" in str(reply)
    with pytest.raises(resp.ProtocolFault):
        resp.Conversation().feed(b"+unasked\r\n")
    talk = resp.Conversation()
    talk.ask(None, "PING")
    with pytest.raises(resp.ProtocolFault):
        talk.feed(b"!nonsense\r\n")


def test_abandon_hands_back_every_waiting_callback():
    talk = resp.Conversation()
    talk.ask("first", "PING")
    talk.ask("second", "PING")
    assert talk.abandon() == ["first", "second"] and talk.outstanding == 0


def test_stream_field_round_trip_keeps_targets_and_fields():
    targets = [Target("room1"), Target("news", True, frozenset({"u2", "u1"})), Target("other", True, frozenset({"u1", "u2"}))]
    payload = cluster.encode_message(targets, "a;b=c\nd \u00e9", "chat", 500)
    assert cluster.decode_message(payload) == (targets, "a;b=c\nd \u00e9", "chat", 500)
    assert cluster.decode_message(cluster.encode_message([Target("t")], "x", None, None)) == ([Target("t")], "x", None, None)


def test_an_exclusion_list_is_written_once_and_copies_of_an_address_once():
    """4,096 copies of ``amp*`` excluding 256 ids: a 35 KB message was a 7 MB entry."""
    excepts = frozenset(f"u{n}" for n in range(256))
    targets = [Target("amp", True, excepts)] * 4096 + [Target(f"room{n}", False, excepts) for n in range(100)]
    payload = cluster.encode_message(targets, "amp", None, None)
    assert len(payload) < 5000 and payload.count(b'"u255"') == 1
    decoded, *_ = cluster.decode_message(payload)
    assert decoded == [Target("amp", True, excepts)] + [Target(f"room{n}", False, excepts) for n in range(100)]


def test_an_entry_written_before_shared_lists_is_still_read():
    old = b'{"to":[["room1",false],["news",true,["u1","u2"]]],"data":"x"}'
    assert cluster.decode_message(old) == ([Target("room1"), Target("news", True, frozenset({"u1", "u2"}))], "x",
                                           None, None)


def test_cluster_ids_grow_with_the_stream_and_across_epochs():
    ids = cluster.ClusterIds()
    assert ids.key_of("1") is None  # no epoch known yet: no id is ours
    ids.begin_epoch(1700000000)
    start = ids.last_key
    a = ids.of_stream_id(b"1764304232000-0")
    b = ids.of_stream_id(b"1764304232000-1")
    c = ids.of_stream_id(b"1764304232001-0")
    assert start < a < b < c
    assert ids.stream_id_of(b) == "1764304232000-1"
    assert ids.key_of(str(c)) == c and ids.key_of(ids.last_text) == start
    assert ids.key_of("abc") is None and ids.key_of("") is None and ids.key_of("9" * 41) is None
    ids.begin_epoch(1700000001)
    assert ids.of_stream_id(b"1-0") > c  # a later epoch is above everything before it
    assert ids.key_of(str(c)) is None  # another epoch's id is not one of ours: a reset
