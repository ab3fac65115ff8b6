"""Per-connection write queue.

Owns: the bytes a peer has not taken yet, in order, their count and the
limit on them.  Must not touch: parsing, TLS, the poll mask (the connection
asks for writability when ``flush`` leaves bytes behind).

A fan-out appends the very same ``bytes`` object to every recipient's queue;
nothing is copied per recipient.  ``flush`` hands up to ``IOV_BATCH`` queued
objects to one ``sendmsg`` call, so events queued in one loop pass leave in
one system call.
"""

from __future__ import annotations

#: Buffers per sendmsg call; Linux takes up to 1024 (IOV_MAX).
IOV_BATCH = 256


class Outbox:
    # A list, not a deque: an idle stream's queue is empty, and an empty
    # deque costs ~600 bytes against ~56 (memory per idle stream matters).
    __slots__ = ("_chunks", "_head", "_size", "limit")

    def __init__(self, limit: int):
        self._chunks: list = []
        self._head = 0  # index of the first unsent chunk
        self._size = 0
        self.limit = limit

    def __len__(self) -> int:
        """Bytes queued and not yet sent."""
        return self._size

    def fits(self, nbytes: int) -> bool:
        return self._size + nbytes <= self.limit

    def append(self, data: bytes) -> None:
        """Queue ``data``; the caller checked ``fits`` when the limit matters."""
        if data:
            self._chunks.append(data)
            self._size += len(data)

    def offer(self, data: bytes) -> bool:
        """Queue ``data`` if it fits the limit; False (nothing queued) if not.
        The fan-out's per-recipient step: kept to one comparison and one
        append, as it runs once per recipient of every message."""
        size = self._size + len(data)
        if size > self.limit:
            return False
        self._chunks.append(data)
        self._size = size
        return True

    def take_head(self, nbytes=None) -> list:
        """Remove and return whole objects from the front, at least one,
        until ``nbytes`` are taken (all of them for None).  For a queue that
        is never flushed itself (TLS plaintext): nothing there is partly sent."""
        chunks = self._chunks
        start = end = self._head
        if nbytes is None:
            end = len(chunks)
        else:
            taken = 0
            while end < len(chunks) and taken < nbytes:
                taken += len(chunks[end])
                end += 1
        head = chunks[start:end]
        del chunks[start:end]
        self._size -= sum(map(len, head))
        return head

    def unsent(self, index: int):
        """The ``index``-th queued chunk (0: the next to leave, possibly
        partly sent), or None."""
        at = self._head + index
        return self._chunks[at] if at < len(self._chunks) else None

    def drop_oldest(self, keep: int, needed: int) -> list:
        """Remove whole queued chunks, oldest first but after the first
        ``keep`` (the head may be partly sent: never cut a chunk), until
        ``needed`` more bytes fit.  Returns the removed chunks."""
        start = min(self._head + keep, len(self._chunks))
        end = start
        size = self._size
        while end < len(self._chunks) and size + needed > self.limit:
            size -= len(self._chunks[end])
            end += 1
        removed = self._chunks[start:end]
        del self._chunks[start:end]
        self._size = size
        return removed

    def put(self, index: int, data: bytes, replace: bool = False) -> None:
        """Queue ``data`` at position ``index`` of the unsent chunks (past
        the end: last), or in place of the chunk there."""
        at = min(self._head + index, len(self._chunks))
        if replace and at < len(self._chunks):
            self._size -= len(self._chunks[at])
            self._chunks[at] = data
        else:
            self._chunks.insert(at, data)
        self._size += len(data)

    def clear(self) -> None:
        self._chunks.clear()
        self._head = 0
        self._size = 0

    def flush(self, sock) -> bool:
        """Send what the socket takes now; True when nothing is left.

        Socket errors propagate: the connection decides what they mean.
        ``BlockingIOError`` simply means the peer's window is full.
        """
        chunks = self._chunks
        try:
            while self._head < len(chunks):
                if self._head == len(chunks) - 1:
                    sent = sock.send(chunks[self._head])
                elif not self._head and len(chunks) <= IOV_BATCH:
                    sent = sock.sendmsg(chunks)  # the usual case: all of it, no copy of the list
                else:
                    sent = sock.sendmsg(chunks[self._head:self._head + IOV_BATCH])
                if sent == self._size:  # the kernel took everything queued
                    chunks.clear()
                    self._head = self._size = 0
                    return True
                if not self._consume(sent):
                    return False
        except (BlockingIOError, InterruptedError):
            return False
        finally:
            self._compact()
        return True

    def _compact(self) -> None:
        if self._head == len(self._chunks):
            self._chunks.clear()
            self._head = 0
        elif self._head > 64 and self._head * 2 > len(self._chunks):
            del self._chunks[:self._head]
            self._head = 0

    def _consume(self, sent: int) -> bool:
        """Drop ``sent`` bytes from the front; False if the kernel took less
        than offered (its buffer is full: wait for writability)."""
        self._size -= sent
        chunks = self._chunks
        while sent:
            head = chunks[self._head]
            if sent >= len(head):
                sent -= len(head)
                self._head += 1
            else:
                chunks[self._head] = memoryview(head)[sent:]
                return False
        return True
