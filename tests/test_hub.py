"""Routing rules and the index, without I/O (PROTOCOL.md 5)."""

import pytest

from pyhasses.hub import Hub, RoutingError, Target, parse_target
from support import HubClient, subscribed


def names(found):
    return sorted(c.name for c in found)


@pytest.fixture
def hub():
    h = Hub()
    subscribed(h, "a", ["room1", "room2"], "u1")
    subscribed(h, "b", ["room1"], "u2")
    subscribed(h, "c", ["room10", "other"])
    subscribed(h, "star", ["*"])
    return h


def route(hub, text):
    return names(hub.recipients(parse_target(text, 128)))


def test_exact(hub):
    assert route(hub, "room1") == ["a", "b", "star"]
    assert route(hub, "nobody") == ["star"]


def test_prefix(hub):
    assert route(hub, "room*") == ["a", "b", "c", "star"]
    assert route(hub, "room1*") == ["a", "b", "c", "star"]
    assert route(hub, "oth*") == ["c", "star"]


def test_everyone(hub):
    assert route(hub, "*") == ["a", "b", "c", "star"]


def test_exclusion(hub):
    assert route(hub, "room1-u1") == ["b", "star"]
    assert route(hub, "room*-u2") == ["a", "c", "star"]
    assert route(hub, "*-u1") == ["b", "c", "star"]


def test_dash_before_star_is_error():
    with pytest.raises(RoutingError):
        parse_target("ro-om*", 128)


def test_bad_targets():
    for bad in ("", "-x", "room-", "a" * 129):
        with pytest.raises(RoutingError):
            parse_target(bad, 128)
    assert parse_target("a" * 128, 128).token == "a" * 128


def test_target_text_round_trip():
    for text in ("room1", "room*", "*", "room1-u1", "ro*-u1"):
        assert parse_target(text, 128).text() == text


def test_unestablished_clients_get_nothing():
    h = Hub()
    c = HubClient("new")
    h.connected(c)
    assert h.publish([Target("*")], b"x") == 0
    assert c.got == []


def test_publish_same_bytes_to_all_and_counts(hub):
    data = b"event bytes"
    n = hub.publish([parse_target("room1", 128)], data)
    assert n == 3
    got = [c for c in hub.streams if c.got]
    assert all(c.got[0] is data for c in got)  # one object, not copies
    assert hub.counters.msgproccnt == 1 and hub.counters.msgsendcnt == 3


def test_several_targets_deliver_once(hub):
    n = hub.publish([parse_target("room1", 128), parse_target("room2", 128)], b"x")
    assert n == 3
    assert [len(c.got) for c in sorted(hub.streams, key=lambda c: c.name)] == [1, 1, 0, 1]


def test_unsubscribe_and_disconnect(hub):
    a = next(c for c in hub.streams if c.name == "a")
    hub.disconnected(a)
    assert route(hub, "room2") == ["star"]
    assert hub.subscribed_count("room1") == 1
    assert "room2" not in hub._by_token  # empty sets do not pile up


def test_subscribed_count(hub):
    assert hub.subscribed_count("room1") == 2
    assert hub.subscribed_count("*") == 1
    assert hub.subscribed_count("room") == 0


def test_exact_cost_independent_of_other_clients():
    """The index: an exact token touches its own subscribers only."""
    h = Hub()
    for i in range(5000):
        subscribed(h, f"c{i}", [f"t{i}"])
    found = h.recipients(parse_target("t42", 128))
    # the token's own members, straight from the index: no scan
    assert [c.name for c in found] == ["c42"]
    subscribed(h, "second", ["t42"])
    found = h.recipients(parse_target("t42", 128))
    assert found is h._by_token.members("t42") and len(found) == 2


def test_index_agrees_with_a_plain_model_through_joins_and_leaves():
    # A token held by one stream is stored as that stream, by two or more
    # as a dict: every transition between the two must keep routing exact.
    import random

    rng = random.Random(6)
    h = Hub()
    model = {}  # name -> set of tokens
    clients = {}
    words = ["a", "ab", "b", "bc", "c"]
    for step in range(3000):
        name = f"c{rng.randrange(12)}"
        if name in clients and rng.random() < 0.4:
            c = clients.pop(name)
            del model[name]
            if rng.random() < 0.5:
                h.disconnected(c)
            else:
                h.unsubscribe(c)  # still connected, no longer a stream
        else:
            tokens = rng.sample(words + ["*"], rng.randint(1, 3))
            c = clients.get(name) or HubClient(name)
            if name not in clients:
                h.connected(c)
            clients[name] = c
            h.subscribe(c, tokens, "")
            model[name] = set(tokens)
        for word in words:
            expect = sorted(n for n, ts in model.items() if word in ts or "*" in ts)
            assert names(h.recipients(parse_target(word, 128))) == expect, (step, word)
            expect = sorted(n for n, ts in model.items() if "*" in ts or any(t.startswith(word) for t in ts))
            assert names(h.recipients(parse_target(word + "*", 128))) == expect, (step, word)
            assert h.subscribed_count(word) == sum(word in ts for ts in model.values())
    assert {token for token, _ in h._by_token.items()} <= set(words)


def test_a_prefix_finds_tokens_added_and_skips_tokens_gone_across_merges():
    """PREFIX* by bisection (TokenIndex.add_starting_with): the same
    recipients as a scan, whatever came and went since the sorted list was
    built."""
    from pyhasses.hub import TokenIndex

    def starting_with(index, prefix):
        found = set()
        index.add_starting_with(prefix, found)
        return found

    index = TokenIndex()
    limit = TokenIndex.FRESH_LIMIT
    clients = [HubClient(f"c{n}") for n in range(3)]
    index.add("news1", clients[0])
    assert starting_with(index, "news") == {clients[0]}  # builds the sorted list
    for n in range(limit + 10):  # past the limit: merged into the sorted list
        index.add(f"news/{n}", clients[1])
    index.add("news/x", clients[2])
    index.add("other", clients[2])
    index.discard("news1", clients[0])
    for n in range(limit + 10):  # churn: gone and back, the list does not grow
        index.discard("news/7", clients[1])
        index.add("news/7", clients[1])
    assert starting_with(index, "news") == {clients[1], clients[2]}
    assert starting_with(index, "news/7") == {clients[1]}
    assert starting_with(index, "oth") == {clients[2]}
    assert starting_with(index, "nope") == set()
    assert len(index._up_to_date()) <= limit + 14
