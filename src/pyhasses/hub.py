"""Clients, their subscriptions, routing and the counters.

Owns: which connection is subscribed to what, the token syntax of a
message's address (PROTOCOL.md 5), choosing recipients through an index, and
the counters ``tcpstatus`` reports.  Must not touch: any I/O.  A client is
any object with the attributes of ``Subscriber`` and a ``deliver(bytes)``
method that queues without sending or closing synchronously.

Cost: an exact token costs its recipients and nothing else (hasses scanned
every client for every message); ``PREFIX*`` costs a bisection of the sorted
token index plus the tokens that match and their recipients, never a scan
of every token held (issue 12: one anonymous client must not cost everyone).
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
from typing import Callable, Iterable, Sequence


class RoutingError(ValueError):
    """A message address that is not in the token syntax; text says why."""


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a message goes.  ``token == "*"``: everyone; ``prefix``: every
    subscription starting with ``token``; ``except_ids``: skip clients that
    connected with one of these uniq ids."""

    token: str
    prefix: bool = False
    except_ids: frozenset = frozenset()

    def text(self) -> str:
        t = "*" if self.token == "*" else self.token + ("*" if self.prefix else "")
        return "-".join([t, *sorted(self.except_ids)])


@functools.lru_cache(maxsize=16384)
def parse_target(text: str, max_token_length: int) -> Target:
    """``TOKEN``, ``PREFIX*``, ``*``, ``TOKEN-UNIQ``, ``PREFIX*-UNIQ``.

    Cached: publishers address the same tokens over and over, and a Target
    is immutable, so every message to a token can share one."""
    star = text.find("*")
    dash = text.find("-")
    except_id = ""
    if dash >= 0:
        if 0 <= star and dash < star:
            raise RoutingError(f"'-' before '*' in {text[:80]!r}")
        text, except_id = text[:dash], text[dash + 1:]
        if not except_id:
            raise RoutingError("empty id after '-'")
        if len(except_id) > max_token_length:
            # Held with the event (and in this cache): as bounded as a token.
            raise RoutingError(f"id after '-' longer than {max_token_length} characters")
    if not text:
        raise RoutingError("empty token")
    if len(text) > max_token_length:
        raise RoutingError(f"token longer than {max_token_length} characters")
    skip = frozenset([except_id]) if except_id else frozenset()
    if text == "*":
        return Target("*", False, skip)
    if star >= 0:
        # hasses compares up to the '*' and ignores what follows it.
        return Target(text[:star], True, skip)
    return Target(text, False, skip)


def distinct_targets(targets: Sequence[Target]) -> list:
    """Targets that reach the same clients as ``targets`` together, each
    address looked up once: the same address given twice (or with other
    exclusions) is one target excluding only what every copy excludes, and
    a prefix that a shorter one covers, excluding no more, goes.  One
    message of a thousand ``room*`` copies scanned the matching tokens a
    thousand times while every stream waited (issue 15).  A message's
    addresses are merged when it is made (``control``), so that everything
    downstream sees each once."""
    if len(targets) < 2:
        return list(targets)  # the usual message: one address, nothing to merge
    merged: dict = {}
    for target in targets:
        key = (target.token, target.prefix)
        held = merged.get(key)
        if held is None or target.except_ids <= held.except_ids:
            merged[key] = target
        elif not held.except_ids <= target.except_ids:
            merged[key] = dataclasses.replace(held, except_ids=held.except_ids & target.except_ids)
    everyone = merged.get(("*", False))
    if everyone is not None and not everyone.except_ids:
        return [everyone]
    # Only the lengths some prefix has can cover: at most one lookup per
    # length, not per character of every prefix.
    lengths = sorted({len(token) for token, prefix in merged if prefix})
    kept = []
    for (token, prefix), target in merged.items():
        if everyone is not None and target is not everyone and everyone.except_ids <= target.except_ids:
            continue
        if prefix and len(lengths) > 1 and any(
                (cover := merged.get((token[:n], True))) is not None and cover.except_ids <= target.except_ids
                for n in lengths if n < len(token)):
            continue
        kept.append(target)
    return kept


class PrefixIndex:
    """The distinct subscribed tokens, kept sorted, so that a prefix finds
    its tokens by bisection.  A token is added when its first subscriber
    comes and removed when its last one goes; both cost a bisection and a
    memory move of the list's tail (tens of microseconds at 100,000 tokens),
    paid once per token, not per message."""

    __slots__ = ("_sorted",)

    def __init__(self, tokens=()):
        self._sorted: list = sorted(tokens)

    def __len__(self) -> int:
        return len(self._sorted)

    def add(self, token: str) -> None:
        at = bisect.bisect_left(self._sorted, token)
        if at == len(self._sorted) or self._sorted[at] != token:
            self._sorted.insert(at, token)

    def discard(self, token: str) -> None:
        at = bisect.bisect_left(self._sorted, token)
        if at < len(self._sorted) and self._sorted[at] == token:
            del self._sorted[at]

    def starting_with(self, prefix: str) -> list:
        """Every token that starts with ``prefix``, in order."""
        tokens = self._sorted
        start = bisect.bisect_left(tokens, prefix)
        if not prefix:
            return tokens[:]
        # The first string after every string that starts with ``prefix``.
        end = bisect.bisect_left(tokens, prefix[:-1] + chr(ord(prefix[-1]) + 1), start) \
            if ord(prefix[-1]) < 0x10FFFF else len(tokens)
        return tokens[start:end]


class Subscriber:
    """The attributes the hub reads and writes on a client (documentation;
    connections define their own class with these slots)."""

    tokens: tuple = ()
    everything: bool = False
    uniq_id: str = ""
    established: bool = False
    messages: int = 0

    def deliver(self, data: bytes) -> None:  # pragma: no cover - interface
        raise NotImplementedError


def subscriptions(client) -> list:
    """What ``client`` subscribed to, as it asked: ``*`` first if at all."""
    return (["*"] if client.everything else []) + list(client.tokens)


@dataclasses.dataclass
class Counters:
    """hasses' statistics, under the names tcpstatus uses (PROTOCOL.md 6)."""

    maxconncli: int = 0     # highest number of open SSE connections seen
    msgproccnt: int = 0     # messages taken in
    msgsendcnt: int = 0     # deliveries, one per recipient
    handshakes: int = 0     # streams established since start
    reinits: int = 0        # streams re-initialised
    slow_closed: int = 0    # clients closed for a full write queue (disconnect policy)
    dropped_events: int = 0  # events dropped from full write queues (drop policy)
    refused: int = 0        # connections answered 503 above the cap
    replayed: int = 0       # held events sent again to resuming clients
    resets: int = 0         # reset events sent


_NOBODY = ()


class TokenIndex:
    """token -> its subscribers.  A token's one subscriber is held as itself,
    two or more as ``{client: None}``: a dict of one costs ~220 bytes, and
    most tokens (a user's own) have one subscriber (issue 6: memory per idle
    stream).  That choice is known here and nowhere else."""

    __slots__ = ("_by_token", "_sorted")

    def __init__(self):
        self._by_token: dict = {}
        # The keys of _by_token, sorted, for PREFIX* routing: made at the
        # first such message and kept from then on.  Until then a handshake
        # pays nothing for it (most sites never publish to a prefix; an
        # insertion costs a memory move of the list's tail).
        self._sorted = None

    def add(self, token: str, client) -> None:
        by_token = self._by_token
        members = by_token.get(token)
        if members is None:
            by_token[token] = client
            if self._sorted is not None:
                self._sorted.add(token)
        elif type(members) is dict:
            members[client] = None
        else:
            by_token[token] = {members: None, client: None}

    def discard(self, token: str, client) -> None:
        by_token = self._by_token
        members = by_token.get(token)
        if members is client:
            del by_token[token]
            if self._sorted is not None:
                self._sorted.discard(token)
        elif type(members) is dict:
            members.pop(client, None)
            if len(members) == 1:
                by_token[token] = next(iter(members))

    def __contains__(self, token: str) -> bool:
        """Has ``token`` a subscriber?  (A token without one is not kept.)"""
        return token in self._by_token

    def members(self, token: str):
        """The subscribers of ``token``: a tuple of one, a dict of several
        (iterate it, take its ``len``; do not change it), or ``()``."""
        members = self._by_token.get(token, _NOBODY)
        return members if type(members) is dict or members is _NOBODY else (members,)

    def starting_with(self, prefix: str):
        """The members (as ``members`` gives them) of every token that starts
        with ``prefix``, found by bisection, not by a scan of every token."""
        by_token = self._by_token
        if self._sorted is None:
            self._sorted = PrefixIndex(by_token)
        for token in self._sorted.starting_with(prefix):
            members = by_token[token]
            yield members if type(members) is dict else (members,)

    def items(self):
        """``(token, members)`` for every token, members as ``members`` gives them."""
        for token, members in self._by_token.items():
            yield token, members if type(members) is dict else (members,)


class Hub:
    def __init__(self):
        # Membership is kept in dicts used as ordered sets ({client: None}):
        # a set grows its table fourfold and costs up to ~105 bytes a member
        # (5,000 members), a dict ~30: memory per idle stream (issue 6).
        self.clients: dict = {}        # every open SSE connection
        self.streams: dict = {}        # established ones
        self._by_token = TokenIndex()
        self._everything: dict = {}    # clients that subscribed to "*"
        self.counters = Counters()
        self._held = None              # while holding: [(targets, recipients, [data, ...]), ...]

    # -- membership ---------------------------------------------------------
    def connected(self, client) -> None:
        self.clients[client] = None
        if len(self.clients) > self.counters.maxconncli:
            self.counters.maxconncli = len(self.clients)

    def disconnected(self, client) -> None:
        self.unsubscribe(client)
        self.clients.pop(client, None)

    def subscribe(self, client, tokens: Iterable[str], uniq_id: str) -> None:
        """Make ``client`` an established stream with these subscriptions."""
        self.unsubscribe(client)
        tokens = tuple(dict.fromkeys(tokens))
        client.everything = "*" in tokens
        client.tokens = tuple(t for t in tokens if t != "*")
        client.uniq_id = uniq_id
        for token in client.tokens:
            self._by_token.add(token, client)
        if client.everything:
            self._everything[client] = None
        client.established = True
        self.streams[client] = None
        self.counters.handshakes += 1

    def unsubscribe(self, client) -> None:
        if not client.established:
            return
        for token in client.tokens:
            self._by_token.discard(token, client)
        self._everything.pop(client, None)
        self.streams.pop(client, None)
        client.established = False
        client.tokens = ()
        client.everything = False

    # -- routing ------------------------------------------------------------
    def recipients(self, target: Target) -> Iterable:
        """Established clients ``target`` reaches, each once."""
        if target.token == "*" and not target.prefix:
            found: Iterable = self.streams
        elif target.prefix:
            found = set(self._everything)
            for members in self._by_token.starting_with(target.token):
                found.update(members)
        else:
            members = self._by_token.members(target.token)
            everything = self._everything
            if not everything:
                found = members
            elif type(members) is dict:
                found = members | everything
            else:
                found = {**dict.fromkeys(members), **everything}
        if target.except_ids:
            skip = target.except_ids
            return [c for c in found if c.uniq_id not in skip]
        return found

    def reach(self, client) -> Callable[[Iterable[Target]], bool]:
        """Would a message to ``targets`` be delivered to ``client`` now?  The
        same rules as ``recipients``, asked about one client (replay), and
        prepared once for many questions: a client may hold thousands of
        tokens and a history thousands of events, so a token is found in a
        set and a prefix by bisection, not by a scan each."""
        if not client.established:
            return lambda targets: False
        everything, uniq_id = client.everything, client.uniq_id
        exact = frozenset(client.tokens)
        ordered = sorted(exact)

        def reaches(targets: Iterable[Target]) -> bool:
            for target in targets:
                if target.except_ids and uniq_id in target.except_ids:
                    continue
                token = target.token
                if (token == "*" and not target.prefix) or everything:
                    return True
                if target.prefix:
                    at = bisect.bisect_left(ordered, token)
                    if at < len(ordered) and ordered[at].startswith(token):
                        return True
                elif token in exact:
                    return True
            return False

        return reaches

    def publish(self, targets: Sequence[Target], data: bytes) -> int:
        """Queue ``data`` (one encoded event) for every recipient; returns
        how many.  The same bytes object goes to each of them."""
        self.counters.msgproccnt += 1
        if len(targets) == 1:
            found = self.recipients(targets[0])
        else:
            found = set()
            for target in targets:
                found.update(self.recipients(target))
        count = len(found)
        self.counters.msgsendcnt += count
        held = self._held
        if held is None:
            _deliver(found, data, 1)
        elif held and held[-1][0] == targets:
            held[-1][2].append(data)
        else:
            held.append((targets, found, [data]))
        return count

    # -- batches ------------------------------------------------------------
    def hold(self) -> None:
        """Until ``release``, consecutive messages to the same targets are
        joined into one bytes object per run, so a batch of events (one
        control write) costs each recipient one queue step, not one per
        event.  Callers hold only around input that cannot change who is
        subscribed (control input), and release before the pass ends."""
        if self._held is None:
            self._held = []

    def release(self) -> None:
        """Deliver what was held, in publishing order."""
        held, self._held = self._held, None
        for _targets, found, datas in held or ():
            _deliver(found, datas[0] if len(datas) == 1 else b"".join(datas), len(datas))

    # -- questions ----------------------------------------------------------
    def holders(self, token: str) -> list:
        """Established clients holding exactly this subscription (``*``:
        those subscribed to everything); what ``kicktoken`` closes."""
        if token == "*":
            return list(self._everything)
        return list(self._by_token.members(token))

    def subscribed_count(self, token: str) -> int:
        """Clients holding exactly this subscription."""
        if token == "*":
            return len(self._everything)
        return len(self._by_token.members(token))


def _deliver(found, data: bytes, events: int) -> None:
    """The fan-out: the same bytes object to every recipient, one queue step
    each, however many events ``data`` joins (``deliver`` counts one)."""
    for client in found:
        client.deliver(data)
    if events > 1:
        for client in found:
            client.messages += events - 1
