"""Control framing and parsing, bytes only (PROTOCOL.md 5, 5a, 6)."""

import json

from pyhasses.control import Command, Framer, Invalid, Message, Oversize, PipeReads, RETRY_RULE, interpret


def frame(*chunks, sep=b";", limit=1 << 20, finish=False):
    f = Framer(sep, limit)
    out = []
    for c in chunks:
        out += f.feed(c)
    if finish:
        out += f.finish()
    return out


def test_split_by_separator_and_line_ends():
    assert frame(b"a=1;b=2\nc=3\r\nd=4;") == [b"a=1", b"b=2", b"c=3", b"d=4"]


def test_tail_waits_until_finish():
    f = Framer(b";", 1000)
    assert f.feed(b"a=1;b=") == [b"a=1"]
    assert f.pending == 2
    assert f.feed(b"2") == []
    assert f.finish() == [b"b=2"]
    assert f.pending == 0


def test_split_writes_are_joined():
    assert frame(b"roo", b"m1=hel", b"lo\n") == [b"room1=hello"]


def test_two_writers_not_merged():
    assert frame(b"t1=one\nt2=two\n") == [b"t1=one", b"t2=two"]


def test_custom_separator():
    assert frame(b"a=1|b=2;3|", sep=b"|") == [b"a=1", b"b=2;3"]


def test_json_part_ends_only_at_line_end():
    line = b'{"to": "r", "data": "x;y=1"}\n'
    assert frame(b"a=1;" + line + b"b=2;") == [b"a=1", line[:-1], b"b=2"]


def test_empty_parts_skipped():
    assert frame(b";;\n\r\n;a=1;;") == [b"a=1"]


def test_oversize_dropped_next_part_intact():
    out = frame(b"a=" + b"x" * 200, b"x" * 100 + b";b=2;", limit=100)
    assert isinstance(out[0], Oversize) and out[0].size >= 300
    assert out[1:] == [b"b=2"]


def test_oversize_complete_part_dropped():
    out = frame(b"a=" + b"x" * 200 + b";b=2;", limit=100)
    assert isinstance(out[0], Oversize)
    assert out[1:] == [b"b=2"]


def test_oversize_json_skips_to_line_end():
    big = b'{"to": "r", "data": "' + b";" * 300 + b'"}\n'
    out = frame(big + b"a=1\n", limit=100)
    assert isinstance(out[0], Oversize)
    assert out[1:] == [b"a=1"]


def test_oversize_tail_at_finish():
    out = frame(b"a=" + b"x" * 500, limit=100, finish=True)
    assert len(out) == 1 and isinstance(out[0], Oversize)


def test_large_part_in_many_reads():
    payload = b"t=" + b"y" * (1 << 20)
    f = Framer(b";", 3 << 20)
    out = []
    for i in range(0, len(payload), 65536):
        out += f.feed(payload[i:i + 65536])
    out += f.feed(b"\n")
    assert out == [payload]


# -- interpreting ----------------------------------------------------------
def i(text):
    return interpret(text.encode(), 128, 1 << 20)


def test_message_keeps_everything_after_first_equals():
    m = i("room1=a=b=c")
    assert isinstance(m, Message) and m.data == "a=b=c" and m.targets[0].token == "room1"


def test_short_message_kept():
    assert i("a=b").data == "b"
    assert i("a=").data == ""


def test_commands():
    for name in ("status", "tcpstatus", "clientlist", "numberofclients", "tcpnumberofclients",
                 "loglevel_quiet", "loglevel_normal", "loglevel_debug", "reinit_enable", "reinit_disable"):
        assert i(name) == Command(name)
    assert i("subscribedclients:room1") == Command("subscribedclients", "room1")
    assert i("tcpsubscribedclients:ro\"om") == Command("tcpsubscribedclients", 'ro"om')


def test_unknown_command_invalid():
    assert isinstance(i("bogus"), Invalid)
    assert isinstance(i("ro-om*=x"), Invalid)


def test_token_limit_same_as_subscriptions():
    assert isinstance(i("a" * 128 + "=x"), Message)
    assert isinstance(i("a" * 129 + "=x"), Invalid)


def test_json_message():
    m = i('{"to": ["room1", "ro*-u1"], "event": "chat", "data": "l1\\nl2; x=1", "except": ["u9"], "retry": 500, "ack": true}')
    assert isinstance(m, Message)
    assert m.data == "l1\nl2; x=1" and m.event == "chat" and m.retry == 500 and m.ack
    assert [t.text() for t in m.targets] == ["room1-u9", "ro*-u1-u9"]


def test_json_errors():
    for bad in ('{"to": "r"', '{}', '{"data": "x"}', '{"to": "r", "data": 5}', '{"to": [], "data": "x"}',
                '{"to": "r", "data": "x", "event": "a\\nb"}', '{"to": "r", "data": "x", "retry": -1}',
                '{"to": "r", "data": "x", "bogus": 1}', '{"to": "-x", "data": "x"}',
                # lone surrogates are not text: they cannot be sent as UTF-8
                '{"to": "r", "data": "\\ud800"}', '{"to": "r", "data": "\\udcff\\udc80"}',
                '{"to": "r", "data": "x", "event": "\\udfff"}', '{"to": "r\\ud800", "data": "x"}',
                '{"to": "r", "data": "x", "except": "\\ud800"}'):
        r = i(bad)
        assert isinstance(r, Invalid) and r.is_json and r.reason, bad


def test_unknown_json_field_names_are_quoted_in_the_reason():
    r = i('{"to": "r", "data": "x", "a\\nFAKE": 1, "\\ud800": 2}')
    assert isinstance(r, Invalid) and "\n" not in r.reason and "'a\\nFAKE'" in r.reason


# -- limits that keep memory bounded (issue 15) ------------------------------
def test_an_excluded_id_is_no_longer_than_the_token_limit():
    assert i("room-" + "u" * 128 + "=m").targets[0].except_ids == {"u" * 128}
    bad = i("room-" + "u" * 129 + "=m")
    assert isinstance(bad, Invalid) and "longer than 128" in bad.reason
    bad = i(json.dumps({"to": "room", "data": "m", "except": ["u" * 129]}))
    assert isinstance(bad, Invalid) and "longer than 128" in bad.reason


def test_the_number_of_excluded_ids_is_bounded():
    ok = interpret(json.dumps({"to": "r", "data": "m", "except": ["a", "b"]}).encode(), 128, 1 << 20, 2)
    assert isinstance(ok, Message)
    bad = interpret(json.dumps({"to": "r", "data": "m", "except": ["a", "b", "c"], "ack": True}).encode(),
                    128, 1 << 20, 2)
    assert isinstance(bad, Invalid) and bad.ack and "--max-except" in bad.reason


def test_the_number_of_addresses_is_bounded():
    to = [f"t{n}" for n in range(3)]
    assert len(interpret(json.dumps({"to": to, "data": "m"}).encode(), 128, 1 << 20, 256, 3).targets) == 3
    bad = interpret(json.dumps({"to": to + ["t3"], "data": "m", "ack": True}).encode(), 128, 1 << 20, 256, 3)
    assert isinstance(bad, Invalid) and bad.ack and bad.reason == '"to" holds 4 addresses, more than 3 (--max-targets)'
    unbounded = interpret(json.dumps({"to": to * 3000, "data": "m"}).encode(), 128, 1 << 20, 256, 0)
    assert isinstance(unbounded, Message)  # 0: no limit
    default = i(json.dumps({"to": [f"t{n}" for n in range(4097)], "data": "m"}))
    assert isinstance(default, Invalid) and "more than 4096" in default.reason


def test_retry_is_bounded_by_what_browser_timers_hold():
    assert i(json.dumps({"to": "t", "data": "m", "retry": 2 ** 31 - 1})).retry == 2 ** 31 - 1
    for retry in (2 ** 31, 10 ** 19, -1, 1.5, True, "5"):
        bad = i(json.dumps({"to": "t", "data": "m", "retry": retry}))
        assert isinstance(bad, Invalid) and bad.reason == RETRY_RULE, retry


def test_a_number_of_thousands_of_digits_is_refused_in_our_words():
    bad = i('{"to": "t", "data": "m", "ack": true, "retry": ' + "9" * 5000 + "}")
    assert isinstance(bad, Invalid) and bad.is_json and bad.reason == "not valid JSON: a number of 5000 digits"


def test_json_nested_too_deeply_is_invalid_not_an_exception():
    for nested in ("[" * 100_000 + "]" * 100_000, '{"a":' * 100_000 + "1" + "}" * 100_000, "[" * 100_000):
        bad = i('{"ack": true, "to": "t", "data": ' + nested + "}")
        assert isinstance(bad, Invalid) and bad.is_json and "nested too deeply" in bad.reason


# -- FIFO reads (issue 15) ---------------------------------------------------
def test_a_short_read_ends_a_part():
    reads = PipeReads(65536)
    assert reads.ends_part(15) and reads.ends_part(10)


def test_a_full_read_or_one_ending_on_a_page_may_be_continued():
    reads = PipeReads(65536)
    assert not reads.ends_part(65536)       # filled the buffer: the writer may be waiting
    assert not reads.ends_part(3 * 4096)    # the pipe was full of whole pages
    assert not reads.ends_part(65536)
    assert reads.ends_part(200_000 - 2 * 65536 - 3 * 4096)  # the rest of a 200,000-byte write
    assert not reads.ends_part(4096)        # a fresh run, page-aligned again
    reads.reset()                            # its tail was flushed as idle
    assert reads.ends_part(100)
