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
    assert h._by_token._sorted.starting_with("") == sorted(token for token, _ in h._by_token.items())


# -- the sorted prefix index (issue 12 point 7) ----------------------------------


def test_a_prefix_publish_looks_only_at_the_tokens_it_matches():
    """PREFIX* finds its tokens by bisection: the sorted index is made once,
    at the first prefix message, and from then on the hub's token dict is
    never walked (it is replaced here by one that refuses iteration)."""
    from pyhasses.hub import Hub, parse_target

    class NoScan(dict):
        def items(self):
            raise AssertionError("scanned every token")

        __iter__ = keys = values = items

    hub = Hub()
    early = subscribed(hub, "early", ["newsflash"])
    assert hub._by_token._sorted is None  # no prefix message yet: nothing paid for it
    assert set(hub.recipients(parse_target("news*", 128))) == {early}
    hub._by_token._by_token = NoScan(hub._by_token._by_token)
    hub.disconnected(early)
    a = subscribed(hub, "a", ["news1", "other"])
    b = subscribed(hub, "b", ["news2", "newt"])
    c = subscribed(hub, "c", ["new"])
    everyone = subscribed(hub, "all", ["*"])
    assert set(hub.recipients(parse_target("news*", 128))) == {a, b, everyone}
    assert set(hub.recipients(parse_target("new*", 128))) == {a, b, c, everyone}
    assert set(hub.recipients(parse_target("zz*", 128))) == {everyone}
    hub.disconnected(a)
    assert set(hub.recipients(parse_target("news*", 128))) == {b, everyone}


def test_the_prefix_index_follows_subscribe_and_unsubscribe():
    from pyhasses.hub import Hub, PrefixIndex

    hub = Hub()
    x = subscribed(hub, "x", ["b", "a"])
    list(hub._by_token.starting_with("z"))  # the first prefix query makes the index
    y = subscribed(hub, "y", ["a", "c"])    # from then on it follows every change
    assert hub._by_token._sorted.starting_with("") == ["a", "b", "c"]
    hub.disconnected(x)
    assert hub._by_token._sorted.starting_with("") == ["a", "c"]
    hub.disconnected(y)
    assert len(hub._by_token._sorted) == 0
    index = PrefixIndex()
    for t in ["ab", "a", "abc", "b", "a\U0010ffff", "\U0010ffff"]:
        index.add(t)
    assert index.starting_with("a") == ["a", "ab", "abc", "a\U0010ffff"]
    assert index.starting_with("\U0010ffff") == ["\U0010ffff"]
    index.discard("zz")
    assert len(index) == 6


def test_holders_are_the_exact_subscribers():
    from pyhasses.hub import Hub

    hub = Hub()
    a = subscribed(hub, "a", ["room1"])
    b = subscribed(hub, "b", ["room1", "room2"])
    star = subscribed(hub, "s", ["*"])
    assert set(hub.holders("room1")) == {a, b}
    assert hub.holders("room2") == [b]
    assert hub.holders("*") == [star]
    assert hub.holders("none") == []


def test_distinct_targets_reach_exactly_whom_the_targets_reach():
    """Merging repeated addresses and prefixes covered by shorter ones
    changes nobody's delivery: random targets, random subscribers, the
    recipients with and without the merge compared."""
    import random

    from pyhasses.hub import distinct_targets

    rng = random.Random(15)
    words = ["r", "ro", "room", "room1", "room12", "rook", "other", "o"]
    ids = ["", "u1", "u2", "u3"]
    for _ in range(300):
        hub = Hub()
        for n in range(12):
            subscribed(hub, f"c{n}", rng.sample(words + ["*"], rng.randint(1, 3)), rng.choice(ids))
        texts = [rng.choice(words + ["*"]) + rng.choice(["", "*"]) for _ in range(rng.randint(2, 8))]
        targets = [parse_target(t.replace("**", "*") + ("-" + rng.choice(ids[1:]) if rng.random() < 0.5 else ""), 128)
                   for t in texts]
        plain = set()
        for target in targets:
            plain.update(hub.recipients(target))
        merged = distinct_targets(targets)
        assert len(merged) <= len(targets)
        assert hub.publish(targets, b"x") == len(plain), targets
        together = set()
        for target in merged:
            together.update(hub.recipients(target))
        assert together == plain, (targets, merged)


def test_a_thousand_copies_of_a_prefix_are_looked_up_once():
    from pyhasses.hub import distinct_targets

    room = parse_target("room*", 128)
    assert distinct_targets([room] * 1000) == [room]
    variants = [parse_target(f"room*-u{n}", 128) for n in range(1000)]
    assert distinct_targets(variants) == [Target("room", True, frozenset())]
    nested = [parse_target(t, 128) for t in ("r*", "ro*", "room*", "room1*-u1", "x")]
    assert distinct_targets(nested) == [Target("r", True), Target("x")]
    assert distinct_targets([parse_target("*", 128), *nested]) == [Target("*")]
    # A shorter prefix that excludes someone the longer one reaches: both stay.
    kept = [parse_target("r*-u1", 128), parse_target("room*", 128)]
    assert distinct_targets(kept) == kept
