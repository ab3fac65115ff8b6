"""A stream's lifetime runs on the monotonic clock, spread by a jitter:
the real connection code in this process, the clocks moved by the test."""

import time

from inprocess import world  # noqa: F401 (a fixture)
from pyhasses.sse import LAST_CHUNK


def test_a_wall_clock_step_ends_no_stream(world, monkeypatch):
    w = world(stream_lifetime=100)
    client, _ = w.stream()
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 7200)  # the clock jumps two hours ahead
    w.daemon._end_expired_streams()
    assert client.established and not client.closing


def test_a_stream_ends_once_its_monotonic_lifetime_is_over(world, monkeypatch):
    w = world(stream_lifetime=100)
    client, browser = w.stream()
    real = time.monotonic
    monkeypatch.setattr(time, "monotonic", lambda: real() + 89)  # within -10 %: too early for any stream
    w.daemon._end_expired_streams()
    assert client.established
    monkeypatch.setattr(time, "monotonic", lambda: real() + 111)  # past +10 %: over for every stream
    w.daemon._end_expired_streams()
    assert not client.established and client.closing
    w.until(lambda: client.closed, "the stream closed")
    got = b""
    while not got.endswith(LAST_CHUNK):
        got += browser.recv(100)
    assert "reached its stream lifetime" in w.text()


def test_streams_opened_together_do_not_end_together(world):
    w = world(stream_lifetime=1000)
    ends = [w.stream()[0].session.ends_at for _ in range(30)]
    assert max(ends) - min(ends) > 20  # about 10 % either way: ~200 s wide for 30 streams
    assert all(abs(end - time.monotonic() - 1000) <= 100 + 5 for end in ends)
