"""The outbox operation TLS uses to seal its queued plaintext a slice at a
time: whole objects from the front, in order, the rest left queued."""

from pyhasses.outbox import Outbox


def test_take_head_takes_whole_objects_until_enough_bytes():
    box = Outbox(1 << 20)
    for part in (b"a" * 10, b"b" * 10, b"c" * 10, b"d" * 10):
        box.append(part)
    assert box.take_head(15) == [b"a" * 10, b"b" * 10]  # never a cut object
    assert len(box) == 20
    assert box.take_head(1) == [b"c" * 10]  # at least one
    box.append(b"e")
    assert box.take_head() == [b"d" * 10, b"e"]  # None: everything
    assert len(box) == 0 and box.take_head(100) == [] and box.take_head() == []


def test_a_huge_object_is_taken_alone_and_whole():
    box = Outbox(1 << 20)
    big = b"x" * 100_000
    box.append(big)
    box.append(b"next")
    assert box.take_head(16384) == [big]
    assert box.take_head(16384) == [b"next"]
