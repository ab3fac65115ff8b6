"""A node of a cluster joined through one Redis stream (``--redis``).

Owns: what goes into the stream and how it comes back (``XADD`` of every
accepted message, ``XREAD BLOCK`` of every message by every node), event
ids made of the stream id and an epoch kept in Redis, the spool of
publishes while Redis is away, reconnecting with backoff, the node's
registration, acknowledgements on a cluster, and the link's figures for
``tcpstatus`` and ``/metrics``.  Must not touch: sockets (``redislink``
owns them), the hub's index, HTTP.  Without ``--redis`` none of this runs.

Keys, under ``--redis-prefix`` P:

- ``P:events``: the stream.  An entry's fields are ``n`` (the publishing
  node's run id), ``s`` (that node's publish sequence, from 1), ``m``
  (the message as JSON: ``to``, ``data``, optional ``event``, ``retry``,
  and ``x``, its distinct exclusion lists) and ``e`` (the epoch it was
  stored in: every node gives it its id from that, whenever it learns
  that Redis lost its data).
  The appends of one loop pass (one control write) go as one ``MULTI``/
  ``EXEC``: Redis answers blocked readers after the whole transaction.
  A node that lost its link sends again what Redis never confirmed; a Lua
  script appends only if ``s`` is above the node's last stored sequence
  (``P:seq:<node>``, kept a day), so each message is stored once, in the
  node's order.  Readers skip an ``(n, s)`` they have seen, and a jump in a
  node's ``s`` tells them its messages between are gone (trimmed while they
  were not reading, or lost by Redis): every stream then gets a ``reset``
  (reason ``dropped``).
- ``P:epoch``: Redis' clock (seconds) when the epoch began, set with
  ``NX``.  It is gone after Redis lost its data; the first node to notice
  (or the first append after the loss) sets a new one, which is always
  larger.
- ``P:nodes``: a hash, one field per live node (JSON: streams, clients,
  host, pid, time), refreshed every second; the key expires 5 s after the
  last refresh and a field older than 5 s is ignored and removed.

Event ids: ``epoch * 10**19 + ms * 10**6 + seq`` for stream id ``ms-seq``,
written in decimal.  They only grow, within an epoch and across epochs, and
every node derives the same id for the same entry, so any node can resume
any other node's client.  ``ClusterIds`` has the interface of the
single-node id source (``sse.EventIds``): ``last_key``, ``last_text`` and
``key_of(text)``.
"""

from __future__ import annotations

import functools
import json
import os
import random
import socket
import time
from typing import Optional

from . import resp, sse
from .control import _json_line  # one form for every acknowledgement
from .delivery import reset_event
from .hub import Target, distinct_targets
from .redislink import LinkDown, RedisConnection

EPOCH_SCALE = 10 ** 19
MS_SCALE = 10 ** 6
#: Entries asked for in one XREAD: a burst arrives in batches of this.
READ_BATCH = 1000
#: How long one XREAD waits in Redis before answering "nothing".
READ_BLOCK_MS = 1000
#: Registration period and expiry of a node that stopped refreshing.
REGISTER_EVERY = 1.0
NODE_EXPIRY = 5.0
#: Each entry carries the epoch it was stored in (``e``), made here when Redis
#: lost it (above the epoch the appending node knew): every node labels an
#: entry by its own epoch, wherever in its reading it learns of a new one.
#: Appends a message unless this node's sequence number says Redis has it
#: already: a message sent again after a broken link is stored once, so every
#: node's entries stand in the stream in the order the node accepted them
#: (a reader skipping second copies could not restore that order once
#: trimming had taken the first copies).  Returns the new entry's id, or for
#: a second copy a list holding the stream's newest id: the first copy is at
#: or before it, so a reader past it has read that copy or found it gone.
APPEND_SCRIPT = """
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = tostring(math.max(tonumber(redis.call('TIME')[1]), tonumber(ARGV[5]) + 1))
  redis.call('SET', KEYS[3], epoch)
end
local seq = tonumber(ARGV[2])
if seq <= tonumber(redis.call('GET', KEYS[2]) or '0') then
  local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
  return {newest and newest[1] or '0-0'}
end
redis.call('SET', KEYS[2], ARGV[2], 'EX', 86400)
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'n', ARGV[3], 's', ARGV[2], 'm', ARGV[4],
                  'e', epoch)
"""
#: How long a stream that resumes after an id this node has not read yet
#: waits for this node to read it (the node lags the one that served the
#: client) before it gets a reset instead.
AHEAD_WAIT = 3.0
#: A connection that owes an answer and has heard nothing for this long
#: (past an XREAD's own BLOCK time) is taken for dead and made again: a
#: Redis that accepts and never answers, or a link gone silent without a
#: reset, would otherwise leave the node "connecting" or "up" for ever.
LINK_SILENCE = READ_BLOCK_MS / 1000 + 4.0
#: Reconnect delays: doubled each failure from MIN to MAX, times 0.5-1.5.
BACKOFF_MIN = 0.1
BACKOFF_MAX = 5.0


class ClusterIds:
    """Event ids on a cluster (see the module docstring), with the interface
    of ``sse.EventIds`` that history and resume use: an id's key is the id
    itself as an int, its text is ``str(key)``; ``key_of`` takes only ids
    of this epoch (another epoch's id gets a reset as an unknown id)."""

    __slots__ = ("epoch", "last")

    #: Digits of the largest id (epoch of 10 digits and 19 below it): a
    #: longer Last-Event-ID is not ours, and is not turned into an int.
    MAX_DIGITS = 40

    def __init__(self):
        self.epoch = 0
        self.last = 0  # key of the newest event this node read (the epoch's start before the first)

    def begin_epoch(self, epoch: int) -> None:
        """Ids of ``epoch`` from now on; none read yet."""
        self.epoch = epoch
        self.last = epoch * EPOCH_SCALE

    def of_stream_id(self, stream_id: bytes) -> int:
        ms, _, seq = stream_id.partition(b"-")
        return self.epoch * EPOCH_SCALE + int(ms) * MS_SCALE + int(seq or 0)

    def stream_id_of(self, key: int) -> str:
        """The Redis stream id of an id of this epoch."""
        rest = key - self.epoch * EPOCH_SCALE
        return f"{rest // MS_SCALE}-{rest % MS_SCALE}"

    def next_id(self):  # pragma: no cover - ids come from the stream
        raise RuntimeError("on a cluster, ids come from the Redis stream")

    def key_of(self, text: Optional[str]) -> Optional[int]:
        if (not text or len(text) > self.MAX_DIGITS or not text.isascii() or not text.isdigit()
                or not self.epoch):
            return None
        key = int(text)
        return key if key // EPOCH_SCALE == self.epoch else None

    @property
    def last_key(self) -> int:
        return self.last

    @property
    def last_text(self) -> str:
        return str(self.last)


def encode_message(targets, data: str, event: Optional[str], retry: Optional[int]) -> bytes:
    """The ``m`` field: who it goes to and what it says, as compact JSON.
    Each distinct exclusion list is written once (``x``) and its targets
    name it by position: a JSON message's ``except`` applies to all of its
    addresses, and written with each it made one 35 KB message a 7 MB
    entry that every node then read."""
    lists: dict = {}
    to = []
    for t in distinct_targets(targets):
        if t.except_ids:
            to.append([t.token, t.prefix, lists.setdefault(t.except_ids, len(lists))])
        else:
            to.append([t.token, t.prefix])
    obj = {"to": to, "data": data}
    if lists:
        obj["x"] = [sorted(ids) for ids in lists]
    if event is not None:
        obj["event"] = event
    if retry is not None:
        obj["retry"] = retry
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogateescape")


@functools.lru_cache(maxsize=4096)
def _target(token: str, prefix: bool, excepts: tuple) -> Target:
    return Target(token, prefix, frozenset(excepts))


def decode_message(payload: bytes):
    """(targets, data, event, retry) from an ``m`` field."""
    obj = json.loads(payload.decode("utf-8", "surrogateescape"))
    lists = [tuple(ids) for ids in obj.get("x", ())]
    # An entry written before ``x`` holds its list in place of the position.
    targets = [_target(t[0], bool(t[1]), () if len(t) < 3 else tuple(t[2]) if isinstance(t[2], list) else lists[t[2]])
               for t in obj["to"]]
    return targets, obj["data"], obj.get("event"), obj.get("retry")


class Cluster:
    """The node's side of the cluster.  ``ctx`` is the daemon: its reactor,
    hub, history, log and settings are used."""

    def __init__(self, ctx, address: resp.RedisAddress):
        self.ctx = ctx
        self.address = address
        s = ctx.settings
        self.prefix = s.redis_prefix
        self.stream_key = f"{self.prefix}:events"
        self.epoch_key = f"{self.prefix}:epoch"
        self.nodes_key = f"{self.prefix}:nodes"
        self.maxlen = max(1000, s.history_count)
        self.spool_limit = s.redis_spool
        self.node_id = f"{socket.gethostname()}:{os.getpid()}:{random.getrandbits(32):08x}"
        self.seq_key = f"{self.prefix}:seq:{self.node_id}"
        self._script = b""
        self.ids = ClusterIds()
        self.commands: Optional[RedisConnection] = None
        self.reader: Optional[RedisConnection] = None
        self.link = "connecting"       # "up", "down" or "connecting"
        self.last_stream_id: Optional[bytes] = None  # None: not read yet (fill history first)
        self._seq = 0
        self._spool: list = []         # (seq, append args), oldest first
        self._sent: dict = {}          # seq -> append args, sent and not yet confirmed
        self._batch: list = []         # seqs of this pass's appends, sent at its end
        self._acks: dict = {}          # seq -> reply function waiting for the read-back
        self._acks_stored: dict = {}   # seq -> (ms, seq) its entry is at or before, once Redis confirmed it
        self._seen: dict = {}          # node id -> highest sequence delivered
        self._failures = 0
        self._retry_timer = None
        self._tick_timer = None
        self._epoch_known = False
        self._reading = False
        self.nodes: dict = {}          # node id -> its registration, live ones
        self.last_read_at: Optional[float] = None
        self.counters = {"stored": 0, "refused": 0, "dropped": 0, "read": 0, "duplicates": 0, "epochs": 0,
                         "missed": 0}
        self.closing = False

    # -- the link -------------------------------------------------------------
    def start(self) -> None:
        self._connect()
        self._tick_timer = self.ctx.reactor.call_later(REGISTER_EVERY, self._tick)

    def _connect(self) -> None:
        self._retry_timer = None
        self._epoch_known = False
        self._reading = False
        reactor = self.ctx.reactor
        self.commands = RedisConnection(reactor, self.address, "commands", self._commands_ready, self._down)
        self.reader = RedisConnection(reactor, self.address, "reader", self._reader_ready, self._down)
        try:
            self.commands.open()
            self.reader.open()
        except OSError as exc:
            self._down(f"cannot connect: {exc.strerror or exc}", False)

    def _down(self, reason: str, login_refused: bool) -> None:
        """Either connection failed: close both, keep serving, retry later."""
        for conn in (self.commands, self.reader):
            if conn is not None:
                conn.close(reason, notify=False)
        if self.closing or self._retry_timer is not None:
            return
        # What was sent and not confirmed goes first on the next link (the
        # append script skips what was stored after all).
        if self._sent:
            self._spool[:0] = sorted(self._sent.items())
            self._sent.clear()
        delay = min(BACKOFF_MAX, BACKOFF_MIN * 2 ** self._failures) * (0.5 + random.random())
        self._failures += 1
        if self.link != "down" or self._failures == 1 or login_refused:
            self.ctx.log.error(f"Redis {self.address.describe()}: link down ({reason}); streams stay open, "
                               f"publishes are spooled ({len(self._spool)} waiting), retrying")
        self.link = "down"
        self._retry_timer = self.ctx.reactor.call_later(delay, self._connect)

    def _commands_ready(self) -> None:
        self.commands.send(self._script_loaded, "SCRIPT", "LOAD", APPEND_SCRIPT)
        self._check_epoch()

    def _script_loaded(self, reply) -> None:
        if isinstance(reply, resp.ReplyError):
            self.commands.close(f"SCRIPT LOAD: {reply}")
        elif not isinstance(reply, LinkDown):
            self._script = reply

    def _reader_ready(self) -> None:
        self._start_reading()

    def _up(self) -> None:
        """Logged in on both connections and the epoch is known."""
        if self.link != "up":
            self.ctx.log.out(f"Redis {self.address.describe()}: link up (epoch {self.ids.epoch}); "
                             f"{len(self._spool)} spooled publish(es) to append")
        self.link = "up"
        self._failures = 0
        self._flush_spool()
        self._register()

    def _flush_spool(self) -> None:
        """Append what waited, once the backlog is read: an entry appended
        before the first read would be taken for backlog (history only)
        and never reach this node's clients."""
        if self.link != "up" or self.last_stream_id is None:
            return
        spool, self._spool = self._spool, []
        for seq, args in spool:
            self._append(seq, args)

    # -- the epoch --------------------------------------------------------------
    def _check_epoch(self) -> None:
        self.commands.send(self._got_epoch, "GET", self.epoch_key)

    def _got_epoch(self, reply) -> None:
        if isinstance(reply, LinkDown):
            return
        if isinstance(reply, resp.ReplyError):
            # Such as LOADING while a restarted Redis reads its data back:
            # try again on a new link rather than wait without an epoch.
            self.commands.close(f"GET {self.epoch_key}: {reply}")
            return
        if reply is None:  # first start, or Redis lost its data: a new, larger epoch
            self.commands.send(self._got_time, "TIME")
            return
        epoch = int(reply)
        if self._epoch_known and epoch == self.ids.epoch:
            return
        self._set_epoch(epoch)

    def _got_time(self, reply) -> None:
        if isinstance(reply, LinkDown):
            return
        if isinstance(reply, resp.ReplyError):
            self.commands.close(f"TIME: {reply}")
            return
        # Above the epoch this node knew, even if Redis lost its data within
        # a second of the last epoch's start.
        epoch = max(int(reply[0]), self.ids.epoch + 1)
        self.commands.send(None, "SET", self.epoch_key, epoch, "NX")
        self.commands.send(self._got_epoch, "GET", self.epoch_key)

    def _set_epoch(self, epoch: int) -> None:
        old = self.ids.epoch
        if epoch != old:
            self.ids.begin_epoch(epoch)
        self._epoch_known = True
        if old and epoch != old:
            self._new_epoch(old, epoch)
        self._start_reading()
        if self.commands is not None and self.commands.ready:
            self._up()

    def _new_epoch(self, old: int, epoch: int) -> None:
        """Redis lost its data: what this node holds may not match what the
        stream holds, and clients may have missed events.  Every stream
        gets a reset; the history starts again."""
        self.counters["epochs"] += 1
        self._answer_lost_acks("Redis lost its data (a new epoch began) before this node read the message back; "
                               "it may be lost")
        self.ctx.history.clear()
        self._seen.clear()
        hub = self.ctx.hub
        event = reset_event(None, "new-epoch")
        for client in list(hub.streams):
            client.write(event)
            hub.counters.resets += 1
        self.ctx.log.error(f"Redis {self.address.describe()}: epoch changed {old} -> {epoch} (Redis lost its data); "
                           f"{len(hub.streams)} stream(s) sent a reset")

    # -- reading ----------------------------------------------------------------
    def _start_reading(self) -> None:
        reader = self.reader
        if self._reading or not self._epoch_known or reader is None or not reader.ready:
            return
        self._reading = True
        if self.last_stream_id is None:
            # A node that starts holds what the stream holds (up to the
            # history limit), so a client may resume here at once.
            count = max(1, self.ctx.settings.history_count)
            reader.send(self._got_backlog, "XREVRANGE", self.stream_key, "+", "-", "COUNT", count)
        else:
            self._read_next()

    def _got_backlog(self, reply) -> None:
        if isinstance(reply, LinkDown):
            return
        if isinstance(reply, resp.ReplyError):
            self.ctx.log.error(f"Redis: XREVRANGE {self.stream_key} failed: {reply}")
            reply = []
        entries = list(reversed(reply))
        if self.ctx.settings.history_count > 0:
            self._deliver(entries, live=False)
            if len(entries) >= self.ctx.settings.history_count:
                # The stream may hold older entries than these: a client
                # that last saw one of them missed some (a reset says so).
                self.ctx.history.missing_before(self.ids.of_stream_id(entries[0][0]))
        self.last_stream_id = entries[-1][0] if entries else b"0-0"
        self._read_next()
        self._flush_spool()
        if self.ctx.replayer.waiting:
            self.ctx.replayer.caught_up()

    def _read_next(self, reader=None) -> None:
        """``reader``: the connection this read was due on (a later link
        starts its own reading)."""
        if reader is not None and reader is not self.reader:
            return
        if self.reader is not None and not self.reader.closed:
            self.reader.send(self._got_read, "XREAD", "COUNT", READ_BATCH, "BLOCK", READ_BLOCK_MS,
                             "STREAMS", self.stream_key, self.last_stream_id)

    def _got_read(self, reply) -> None:
        if isinstance(reply, LinkDown):
            return
        self.last_read_at = time.monotonic()
        if isinstance(reply, resp.ReplyError):
            self.ctx.log.error(f"Redis: XREAD {self.stream_key} failed: {reply}")
            self.reader.close(f"XREAD failed: {reply}")
            return
        if reply:
            entries = reply[0][1]
            self._deliver(entries, live=True)
            self.last_stream_id = entries[-1][0]
        if self._acks_stored:
            self._answer_passed_acks()
        if reply:
            if self.ctx.replayer.waiting:
                self.ctx.replayer.caught_up()
            # The next read is asked for once the first slice of this
            # fan-out is written: where Redis shares the node's core, its
            # answer would otherwise wake Redis ahead of those writes.
            self.ctx.flusher.after_slice(functools.partial(self._read_next, self.reader))
            return
        self._read_next()

    def _deliver(self, entries, live: bool) -> None:
        """Entries in stream order: to this node's clients (``live``) and
        into the history.  A batch leaves joined (Hub.hold), as one control
        read does on a single node."""
        ctx = self.ctx
        hub, history, ids, seen, me = ctx.hub, ctx.history, self.ids, self._seen, self.node_id.encode()
        if live:
            hub.hold()
        try:
            for stream_id, fields in entries:
                fields = dict(zip(fields[::2], fields[1::2]))
                epoch = int(fields.get(b"e", 0))
                if epoch and epoch != ids.epoch:
                    if epoch < ids.epoch:
                        continue  # stored before Redis lost its data; this node has left that epoch
                    # Redis lost its data and this is the new epoch's first entry
                    # this node reads: the reset goes after what was read before.
                    if live:
                        hub.release()
                    self._set_epoch(epoch)
                    if live:
                        hub.hold()
                node, seq = fields.get(b"n", b""), int(fields.get(b"s", 0))
                before = seen.get(node)
                if before is not None and before >= seq:
                    self.counters["duplicates"] += 1
                    continue
                seen[node] = seq
                if before is not None and seq > before + 1 and live:
                    # That node's messages between are gone (trimmed from
                    # the stream while this node was not reading, or lost by
                    # Redis): say so where they were.
                    hub.release()
                    self._missed(seq - before - 1)
                    hub.hold()
                event_id = ids.of_stream_id(stream_id)
                if event_id <= ids.last:
                    continue  # never deliver an id twice or backwards
                try:
                    targets, data, event, retry = decode_message(fields[b"m"])
                except (KeyError, ValueError, TypeError, IndexError) as exc:
                    ctx.log.error(f"Redis: entry {stream_id!r} of {self.stream_key} is not a message ({exc!r}); skipped")
                    continue
                id_text = str(event_id)
                chunk = sse.encode_event(id_text, data, event, retry)
                delivered = hub.publish(targets, chunk) if live else 0
                history.record(event_id, id_text, targets, chunk)
                ids.last = event_id
                self.counters["read"] += 1
                if node == me:
                    reply = self._acks.pop(seq, None)
                    if reply is not None:
                        self._acks_stored.pop(seq, None)
                        reply(_json_line({"ok": True, "id": id_text, "stored": True, "delivered": delivered}))
        finally:
            if live:
                hub.release()

    def _missed(self, count: int) -> None:
        self.counters["missed"] += count
        hub = self.ctx.hub
        event = reset_event(self.ctx.history.oldest, "dropped", count)
        for client in list(hub.streams):
            client.write(event)
            hub.counters.resets += 1
        self.ctx.log.error(f"Redis: {count} message(s) of the stream {self.stream_key} were gone before this node "
                           f"read them (trimmed, or lost by Redis); {len(hub.streams)} stream(s) sent a reset")

    # -- resuming after an id this node has not read yet ---------------------------
    def check_ahead(self, replay, key: int) -> None:
        """A stream waits for ``key`` (``Replayer.wait``): if Redis' newest
        entry is older, nobody gave that id out, and the wait ends at once
        with a reset.  Without a link, the wait's time limit decides."""
        commands = self.commands
        if self.link != "up" or commands is None or not commands.ready:
            return
        epoch = self.ids.epoch

        def newest(reply) -> None:
            if isinstance(reply, (LinkDown, resp.ReplyError)) or self.ids.epoch != epoch:
                return
            if not reply or self.ids.of_stream_id(reply[0][0]) < key:
                self.ctx.replayer.give_up(replay)

        commands.send(newest, "XREVRANGE", self.stream_key, "+", "-", "COUNT", 1)

    # -- publishing -------------------------------------------------------------
    def publish(self, msg, later, channel: str, can_reply: bool) -> Optional[bytes]:
        """Append an accepted message to the stream (or the spool); delivery
        happens when this node reads it back.  Returns an immediate reply
        (only a refusal), or None; an acknowledgement goes to ``later``
        (``expect_answer()`` now, ``late_answer(bytes)`` then) once this node has read the
        message back from Redis."""
        if self.link != "up" and len(self._spool) >= self.spool_limit:
            self.counters["refused"] += 1
            reason = f"Redis unreachable and the spool is full ({self.spool_limit} messages); message refused"
            if can_reply:
                self.ctx.log.info(f"{channel}: {reason}")
                return _json_line({"ok": False, "error": reason})
            self.counters["dropped"] += 1
            self.ctx.log.error(f"{channel}: {reason}: dropped")
            return None
        self._seq += 1
        seq = self._seq
        args = (self.stream_key, self.seq_key, self.maxlen, seq, self.node_id,
                encode_message(msg.targets, msg.data, msg.event, msg.retry))
        if msg.ack and can_reply and later is not None:
            later.expect_answer()
            self._acks[seq] = later.late_answer
        if self.link == "up" and self.last_stream_id is not None:
            self._append(seq, args)
        else:
            self._spool.append((seq, args))
        return None

    def _append(self, seq: int, args: tuple) -> None:
        """``args``: stream key, sequence key, MAXLEN, sequence, node, message.
        Sent at the end of the pass, with the pass's other appends."""
        self._sent[seq] = args
        if not self._batch:
            self.ctx.reactor.call_soon(self._send_batch)
        self._batch.append(seq)

    def _send_batch(self) -> None:
        """The appends of one pass (the messages of one control read) in one
        transaction: Redis answers the nodes' blocked XREADs after EXEC, so
        every node reads the burst in one reply and fans it out once, where
        one script call at a time woke them after the first message and the
        rest followed as a second fan-out."""
        seqs, self._batch = self._batch, []
        seqs = [seq for seq in seqs if seq in self._sent]  # the link fell meanwhile: spooled again
        commands = self.commands
        if not seqs or commands is None or commands.closed:
            return
        # SCRIPT LOAD went first on this connection: its hash is known when
        # this runs, as replies come in order and _up waits for the epoch.
        if len(seqs) == 1:
            self._send_append(functools.partial(self._stored, seqs[0]), seqs[0])
            return
        commands.send(None, "MULTI")
        for seq in seqs:
            self._send_append(None, seq)  # its reply is QUEUED; EXEC brings the outcome
        commands.send(functools.partial(self._stored_batch, commands, seqs), "EXEC")

    def _send_append(self, callback, seq: int) -> None:
        stream_key, seq_key, *argv = self._sent[seq]
        self.commands.send(callback, "EVALSHA", self._script, 3, stream_key, seq_key, self.epoch_key, *argv,
                           self.ids.epoch)

    def _stored_batch(self, commands, seqs: list, reply) -> None:
        """EXEC's reply: each append's outcome, in order; or one error for
        all of them (EXECABORT: Redis refused one while queueing)."""
        if isinstance(reply, LinkDown):
            return  # still in _sent: spooled again by _down
        replies = reply if isinstance(reply, list) and len(reply) == len(seqs) else [reply] * len(seqs)
        for seq, one in zip(seqs, replies):
            if commands.closed:
                return  # NOSCRIPT closed the link: the rest are spooled again with the others
            self._stored(seq, one)

    def _stored(self, seq: int, reply) -> None:
        if isinstance(reply, LinkDown):
            return  # still in _sent: spooled again by _down
        if isinstance(reply, resp.ReplyError) and str(reply).startswith("NOSCRIPT"):
            self.commands.close("the append script is gone from Redis (SCRIPT FLUSH)")  # sent again after
            return
        self._sent.pop(seq, None)
        if isinstance(reply, resp.ReplyError):
            self.ctx.log.error(f"Redis: XADD refused: {reply}; message {seq} of this node lost")
            ack = self._acks.pop(seq, None)
            if ack is not None:
                ack(_json_line({"ok": False, "error": f"Redis refused the message: {reply}"}))
            return
        self.counters["stored"] += 1
        if seq in self._acks:
            # Where the entry is (or, for a copy Redis held already, an id it
            # is not after): a reader past it without the entry finds it gone.
            self._acks_stored[seq] = _stream_position(reply[0] if isinstance(reply, list) else reply)

    def _answer_passed_acks(self) -> None:
        """The stream was read up to ``last_stream_id`` and the entries read
        were delivered (which answered theirs): a confirmed entry at or
        before it that is still waiting was trimmed (or lost) before this
        node read it, and its writer is told so instead of waiting for ever."""
        read_to = _stream_position(self.last_stream_id)
        gone = []
        for seq, at in self._acks_stored.items():
            if at > read_to:
                break  # confirmed in order: the rest lie further on
            gone.append(seq)
        if gone:
            self._answer_lost_acks("Redis dropped the message (trimmed by MAXLEN, or lost) before this node "
                                   "read it back", gone)

    def _answer_lost_acks(self, reason: str, seqs=None) -> None:
        for seq in list(self._acks_stored if seqs is None else seqs):
            self._acks_stored.pop(seq, None)
            ack = self._acks.pop(seq, None)
            if ack is not None:
                self.ctx.log.error(f"Redis: message {seq} of this node: {reason}")
                ack(_json_line({"ok": False, "stored": True, "error": reason}))

    # -- registration and the cluster's view --------------------------------------
    def _tick(self) -> None:
        self._tick_timer = self.ctx.reactor.call_later(REGISTER_EVERY, self._tick)
        now = time.monotonic()
        for conn in (self.commands, self.reader):
            if conn is not None and conn.silent_for(now) > LINK_SILENCE:
                conn.close(f"no answer on the {conn.name} connection for {LINK_SILENCE:g} s")  # -> _down
                return
        if self.link == "up":
            self._register()
            self._check_epoch()

    def _register(self) -> None:
        hub = self.ctx.hub
        me = json.dumps({"streams": len(hub.streams), "clients": len(hub.clients), "host": socket.gethostname(),
                         "pid": os.getpid(), "at": round(time.time(), 3)})
        c = self.commands
        c.send(None, "HSET", self.nodes_key, self.node_id, me)
        c.send(None, "PEXPIRE", self.nodes_key, int(NODE_EXPIRY * 1000))
        c.send(self._got_nodes, "HGETALL", self.nodes_key)

    def _got_nodes(self, reply) -> None:
        if isinstance(reply, (LinkDown, resp.ReplyError)):
            return
        live, stale, oldest = {}, [], time.time() - NODE_EXPIRY
        for name, value in zip(reply[::2], reply[1::2]):
            try:
                info = json.loads(value)
                fresh = info["at"] >= oldest
            except (ValueError, KeyError, TypeError):
                fresh = False
            if fresh:
                live[name.decode("utf-8", "replace")] = info
            else:
                stale.append(name)
        if stale:
            self.commands.send(None, "HDEL", self.nodes_key, *stale)
        self.nodes = live

    def status(self) -> dict:
        """tcpstatus' cluster keys (README, man page)."""
        age = None if self.last_read_at is None else round(time.monotonic() - self.last_read_at, 3)
        nodes = [{"node": name, "streams": info.get("streams", 0), "clients": info.get("clients", 0)}
                 for name, info in sorted(self.nodes.items())]
        return {
            "redis": self.link,
            "redisup": self.link == "up",
            "node": self.node_id,
            "epoch": str(self.ids.epoch),
            "spooled": len(self._spool),
            "lastreadage": age,
            "publishesstored": self.counters["stored"],
            "publishesrefused": self.counters["refused"],
            "publishesdropped": self.counters["dropped"],
            "missedevents": self.counters["missed"],
            "clusternodes": nodes,
            "clusterstreams": sum(n["streams"] for n in nodes),
            "clusterclients": sum(n["clients"] for n in nodes),
        }

    @staticmethod
    def status_lines(status: dict) -> list:
        """The same, for the ``status`` block in the log."""
        age = status["lastreadage"]
        return [
            f"Redis link: {status['redis']}, node {status['node']}, epoch {status['epoch']}",
            f"Redis spool: {status['spooled']} waiting; last read {'never' if age is None else f'{age:g} s ago'}; "
            f"publishes stored {status['publishesstored']}, refused {status['publishesrefused']}, "
            f"dropped {status['publishesdropped']}",
            f"Cluster: {len(status['clusternodes'])} live node(s), {status['clusterstreams']} stream(s), "
            f"{status['clusterclients']} client(s)",
        ]

    def close(self) -> None:
        """Leave the cluster: the registration is removed at once.  Every
        acknowledgement still waiting is answered first (the writers'
        connections close right after), so that no writer is left without
        an answer."""
        self.closing = True
        self._answer_lost_acks("the daemon stopped before it read the message back; Redis holds it and the "
                               "other nodes deliver it")
        for seq in list(self._acks):  # not confirmed: the count is logged below
            self._acks.pop(seq)(_json_line({"ok": False, "stored": False, "error":
                                            "the daemon stopped before Redis confirmed the message; "
                                            "it may not be stored"}))
        reactor = self.ctx.reactor
        reactor.cancel(self._retry_timer)
        reactor.cancel(self._tick_timer)
        for conn in (self.reader, self.commands):
            if conn is not None:
                conn.close("daemon stopping", notify=False)
        if self._spool or self._sent:
            self.ctx.log.error(f"Redis: {len(self._spool) + len(self._sent)} publish(es) not confirmed "
                               "by Redis at shutdown")
        _forget_node(self.address, self.nodes_key, self.node_id)


def _stream_position(stream_id) -> tuple:
    """A stream id (``b"MS-SEQ"``) as a tuple that compares as Redis does."""
    ms, _, seq = bytes(stream_id).partition(b"-")
    return int(ms), int(seq or 0)


def _forget_node(address: resp.RedisAddress, key: str, node: str) -> None:
    """At shutdown, with a short blocking exchange: the loop has stopped."""
    try:
        if address.path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(0.5)
            sock.connect(address.path)
        else:
            sock = socket.create_connection((address.host, address.port), timeout=0.5)
        with sock:
            talk = resp.Conversation()
            payload = b"".join(talk.ask(None, *c) for c in address.login_commands())
            sock.sendall(payload + talk.ask(None, "HDEL", key, node))
            while talk.outstanding:
                data = sock.recv(4096)
                if not data:
                    break
                talk.feed(data)
    except (OSError, resp.ProtocolFault):
        pass  # the registration expires by itself
