"""The control channels: the TCP control port's connections and the FIFO,
and what both do with the bytes publishers write.

Owns: framing a writer's bytes into parts (through ``control.Framer``), the
idle flush of an unterminated tail, running each part through the control
handler (within a budget per loop pass that the writers share in turn:
``ControlTurns``), and sending a TCP writer's replies after the fan-out
they answer.
Must not touch: what a command means (``control``), routing (``hub``).
The socket calls are ``connections.Connection``'s; the FIFO's ``os.read``
is here.  ``ctx`` is a ``connections.Wiring`` with ``control`` (the
``ControlHandler``), ``control_clients`` (the set of open connections),
``control_turns`` and ``access`` (the ``control.AccessCounters`` of refused
connections) besides the usual.
"""

from __future__ import annotations

import collections
import os
import socket
import struct
import time

from .connections import RECV_SIZE, RETRY, Connection
from .control import Framer, Gate, PipeReads, Refusal
from .reactor import READABLE

#: Seconds of one loop pass that the control writers' parts may take
#: together; what is left waits for the next passes (and in the kernel,
#: unread), the writers taking turns.  50 ms let ten writers of
#: ``clientlist`` bursts hold a stream's next event 0.7 s under Debian's
#: python3; a publisher that writes a few dozen messages at a time (the
#: benchmark's point-to-point scenario) never reaches 20 ms in one read.
RUN_BUDGET = 0.02


class ControlTurns:
    """The control writers' share of each loop pass.  One write of thousands
    of ``clientlist`` or ``tcpmetrics`` lines (each a walk over every stream
    or descriptor) would otherwise hold the loop for seconds, and every
    stream's next event with it; ten such writers, ten times as long.  So
    the parts of all writers run for at most RUN_BUDGET per pass, and the
    writers whose parts wait are served in turn on the following passes."""

    def __init__(self, reactor):
        self.reactor = reactor
        self._waiting: collections.deque = collections.deque()  # ControlInputs, in turn
        self._timer = None
        self._pass = -1
        self._deadline = 0.0

    def deadline(self) -> float:
        """When this pass's budget ends (set by the first to ask in a pass)."""
        if self.reactor.passes != self._pass:
            self._pass = self.reactor.passes
            self._deadline = time.monotonic() + RUN_BUDGET
        return self._deadline

    def run_or_queue(self, writer) -> None:
        """Run ``writer``'s parts now if this pass has time left, else queue it."""
        if time.monotonic() < self.deadline():
            writer.run_share(self._deadline)
        if writer.busy:
            # A writer that was idle goes first: a publisher's one message
            # must not wait behind every turn of those with long backlogs.
            self._queue(writer)

    def _queue(self, writer) -> None:
        writer.pause(True)
        self._waiting.appendleft(writer)
        if self._timer is None:
            self._timer = self.reactor.call_later(0, self._run)

    def _run(self) -> None:
        self._timer = None
        deadline = self.deadline()
        waiting = self._waiting
        for _ in range(len(waiting)):
            writer = waiting.popleft()
            if writer.busy:  # not cancelled meanwhile
                writer.run_share(deadline)
                if writer.busy:
                    waiting.append(writer)  # the back of the line
                else:
                    writer.pause(False)
            if time.monotonic() >= deadline:
                break  # at least one writer ran
        if waiting:
            self._timer = self.reactor.call_later(0, self._run)


class ControlInput:
    """Control bytes from one writer: framing, the idle flush of an
    unterminated tail, and running each part.  ``reply`` takes the answer
    bytes of a TCP writer; the FIFO has nobody to answer."""

    def __init__(self, ctx, channel: str, reply=None, replied=None, on_finish=None, refused=None, secret=None,
                 pause=None):
        self.ctx = ctx
        self.channel = channel
        self.reply = reply
        self.replied = replied  # called after each run of parts, their events queued
        self.on_finish = on_finish  # called when a held tail is taken as whole
        self.refused = refused  # a socket's: called with a control.Refusal, nothing of it run
        self.secret = secret
        self._pause = pause  # pause(True/False): stop or resume reading the writer
        self.framer = self._new_framer()
        self._idle = None
        self._backlog: collections.deque = collections.deque()  # parts not yet run, in order

    @property
    def busy(self) -> bool:
        """Parts wait for their turn (ControlTurns); reading is paused."""
        return bool(self._backlog)

    def pause(self, paused: bool) -> None:
        if self._pause is not None:
            self._pause(paused)

    def _new_framer(self):
        framer = Framer(self.ctx.settings.separator.encode(), self.ctx.settings.max_part_bytes)
        # Sockets can be reached by other protocols (PROTOCOL.md 9); the
        # FIFO only by those its file mode lets in.
        return Gate(framer, self.secret) if self.refused is not None else framer

    def feed(self, data: bytes, complete: bool = False) -> None:
        """``complete``: the tail of ``data`` is a whole part (FIFO reads)."""
        items = self.framer.feed(data)
        if complete:
            items += self.framer.finish()
        self._run(items)
        reactor = self.ctx.reactor
        reactor.cancel(self._idle)
        self._idle = None
        if self.framer.pending:
            self._idle = reactor.call_later(self.ctx.settings.idle_flush, self.finish, True)

    def finish(self, idle: bool = False) -> None:
        """End of input, or (``idle``) the writer went idle: the tail is a
        whole part (a socket's gate may still hold the start of a request
        line at a pause).  Parts still waiting for their turn stay: they
        come before the tail."""
        self.ctx.reactor.cancel(self._idle)
        self._idle = None
        if self.on_finish is not None:
            self.on_finish()
        self._run(self.framer.finish(idle) if isinstance(self.framer, Gate) else self.framer.finish())

    def cancel(self) -> None:
        """The writer is gone (or its input discarded): nothing more runs."""
        self.ctx.reactor.cancel(self._idle)
        self._idle = None
        self._backlog.clear()  # ControlTurns drops a writer with nothing to run

    def reset(self) -> None:
        self.cancel()
        self.framer = self._new_framer()

    # Answers that come after their part was run (a cluster's
    # acknowledgement, once Redis gave the message back): ``expect_answer`` when
    # one is promised, ``late_answer`` when it comes; the writer's end of input
    # waits for them (``on_settled``).
    awaiting = 0
    on_settled = None

    def expect_answer(self) -> None:
        self.awaiting += 1

    def late_answer(self, answer: bytes) -> None:
        self.awaiting -= 1
        if self.reply is not None and self.reply(answer) and self.replied is not None:
            self.replied()
        if not self.awaiting and self.on_settled is not None:
            settled, self.on_settled = self.on_settled, None
            settled()

    def _run(self, items) -> None:
        if items and isinstance(items[0], Refusal):
            self.cancel()
            self.refused(items[0])
            return
        if items:
            was_busy = self.busy
            self._backlog.extend(items)
            if not was_busy:  # else its turn comes (ControlTurns)
                self.ctx.control_turns.run_or_queue(self)

    def run_share(self, deadline: float) -> None:
        """Run parts until ``deadline`` (at least one); ControlTurns calls."""
        # The events of one share leave joined (Hub.hold), except under the
        # drop policy, which drops whole queued chunks and counts events.
        if self.ctx.settings.slow_client_policy == "drop":
            self._run_items(deadline)
        else:
            hub = self.ctx.hub
            hub.hold()
            try:
                self._run_items(deadline)
            finally:
                hub.release()
        if self.replied is not None:
            self.replied()

    def _run_items(self, deadline: float) -> None:
        handle = self.ctx.control.handle
        can_reply = self.reply is not None
        backlog = self._backlog
        while backlog:
            item = backlog.popleft()
            try:
                answer = handle(item, self.channel, can_reply, self)
            except Exception as exc:
                # A bug met by one part must not cost the parts after it
                # (on the FIFO: other publishers' messages).
                self.ctx.report(f"{self.channel}: internal error {exc!r}; this part dropped", exc)
                continue
            if answer is not None and not self.reply(answer):
                backlog.clear()
                return
            if time.monotonic() > deadline:
                return


class ControlClient(Connection):
    """A publisher on the TCP control port or the Unix control socket."""

    kind = "control client"
    priority_input = True  # read between the slices of a long fan-out

    def __init__(self, ctx, sock: socket.socket, peer: str, secret=None, announce: bool = False):
        super().__init__(ctx, sock, peer, ctx.settings.max_queue_bytes)
        self.on_unix_socket = announce  # its own pool under --max-control-clients (service)
        self.input = ControlInput(ctx, f"control {peer}", self._reply, self._replies_queued,
                                  refused=self._refused, secret=secret, pause=self._pause)
        self.last_input = time.monotonic()  # the idle sweep's clock (service)
        self.connected_at = self.last_input  # the oldest without the secret makes room (service)
        ctx.control_clients.add(self)
        text = f"Communication connect from {peer} as <{self.fd}>"
        if announce:
            ctx.log.info(text)
        else:
            ctx.log.debug(text)

    def on_data(self, data: bytes) -> None:
        self.last_input = time.monotonic()
        self.input.feed(data)

    @property
    def awaiting_secret(self) -> bool:
        """Connected to the TCP port under --control-secret-file, and has
        not sent the secret yet."""
        return getattr(self.input.framer, "awaiting_secret", False)

    def _refused(self, refusal: Refusal) -> None:
        """Another protocol, or no secret: closed at once, nothing run."""
        self.ctx.access.count(refusal.kind)
        self.ctx.log.info(f"Refused control connection {self.peer}: {refusal.reason}; closed with nothing run")
        self.close(f"refused ({refusal.kind})", quiet=True)

    def _replies_queued(self) -> None:
        if len(self.outbox) and not self.closed:
            self.ctx.flusher.after_slice(self._send_replies)

    def _send_replies(self) -> None:
        """Replies leave after the first slice of the fan-out of the
        messages they answer (FlushQueue): "delivered: N" says queued for N,
        and sent to all of them unless there are more than a slice."""
        if len(self.outbox) and not self._writing and not self.closed:
            self.flush()

    def on_eof(self) -> None:
        """The writer half-closed or closed: its tail is complete; answer
        what it asked (once every part has run), then close."""
        self.input.finish()
        self._end_when_done()

    def _end_when_done(self) -> None:
        """After the writer's end of input: close once every part has run
        (ControlTurns) and every late acknowledgement (a cluster's) is queued."""
        if self.closed or self.closing or self.input.busy:
            return  # _pause(False) comes back here once the parts have run
        if self.input.awaiting:
            self.ctx.reactor.modify(self.fd, self._mask())  # input ended: stop reading
            self.input.on_settled = self._end_when_done
            return
        self.finish_after_eof()

    def _pause(self, paused: bool) -> None:
        self.pause_reading(paused)
        if not paused and self._eof:
            self._end_when_done()  # the parts that waited have run

    def _reply(self, answer: bytes) -> bool:
        """Queue an answer; False once the connection is closed."""
        if self.closed:
            return False
        # One reply may be larger than the limit (tcpclientlist of many
        # clients); replies piling up unread may not.
        if len(self.outbox) and not self.outbox.fits(len(answer)):
            self.close("does not read its replies")
            return False
        self.outbox.append(answer)  # sent by _send_replies
        return True

    def on_closed(self, reason: str, quiet: bool) -> None:
        self.input.cancel()
        self.ctx.control.writer_gone(self.input.channel)
        self.ctx.control_clients.discard(self)
        if quiet:  # the writer's own close, the usual end
            self.ctx.log.debug(f"Closed communication connection {self.peer}: {reason}")
        else:
            self.ctx.log.info(f"Closed communication connection {self.peer}: {reason}")


def peer_credentials(sock: socket.socket) -> str:
    """``unix uid U pid P`` of a Unix control socket's peer (SO_PEERCRED):
    who published, for the log."""
    try:
        pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                            struct.calcsize("3i")))
    except OSError:
        return "unix peer (credentials unknown)"
    return f"unix uid {uid} pid {pid}"


class FifoReader:
    """The control FIFO, opened read-write so that it never reports end of
    input when a writer closes (hasses does the same)."""

    kind = "FIFO"
    priority_input = True

    def __init__(self, ctx, fd: int, path: str):
        self.ctx = ctx
        self.fd = fd
        self.path = path
        self.reads = PipeReads(RECV_SIZE)
        self.input = ControlInput(ctx, "fifo", on_finish=self.reads.reset, pause=self._pause)
        ctx.reactor.register(fd, self, READABLE)

    def _pause(self, paused: bool) -> None:
        self.ctx.reactor.modify(self.fd, 0 if paused else READABLE)

    def on_events(self, mask: int) -> None:
        try:
            data = os.read(self.fd, RECV_SIZE)
        except OSError as exc:
            if exc.errno in RETRY:
                return
            raise
        if data:
            if self.reads.ends_part(len(data)):
                # what one read brings is one writer's: never merged with the next
                self.input.feed(data, complete=True)
            else:
                self.input.feed(data)
                if not self.input.framer.pending:
                    self.reads.reset()  # nothing left to continue

    def on_failure(self, exc: Exception) -> None:
        self.ctx.report(f"FIFO {self.path}: internal error {exc!r}; input discarded", exc)
        self.input.reset()
        self.reads.reset()
        self._pause(False)

    def close(self) -> None:
        self.ctx.reactor.unregister(self.fd)
        self.input.cancel()
        os.close(self.fd)
