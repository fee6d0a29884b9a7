"""The C path's classifiers (trio_pgdog._reactor) against their Python twins (session/plain.py)
and against the Python relay's own scan: random client and server byte streams, cut at random
points, must get the same decisions."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_pgdog.session.plain import classify, plain_owed, scan_answer
from trio_pgdog.session.scan import ClientScan

try:  # the extension itself, even where the proxy runs without it (TRIO_PGDOG_SPEEDUPS=0)
    from trio_pgdog import _reactor as reactor_c
except ImportError:
    reactor_c = None

needs_c = pytest.mark.skipif(reactor_c is None, reason="the C path's extension is not built")


def msg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


SQL = [b"select 1", b"SELECT abalance FROM pgbench_accounts WHERE aid = $1", b"SET x = 1",
       b"set\tsearch_path = a", b"RESET ALL", b"reset", b"SETTLE", b"prepare p as select 1",
       b"DEALLOCATE p", b"discard all", b"DISCARD ALL", b"listen c", b"-- c\nselect 1",
       b"/* c */ select 1", b" select 1", b"\nselect 1", b"select pgdog.unique_id()",
       b"SELECT PGDOG.UNIQUE_ID()", b"BEGIN", b"COMMIT", b"", b"copy t from stdin"]


@st.composite
def client_message(draw: st.DrawFn) -> bytes:
    sql = draw(st.sampled_from(SQL)) + b"\x00"
    name = draw(st.sampled_from([b"", b"", b"s1"])) + b"\x00"
    portal = draw(st.sampled_from([b"", b"", b"p1"])) + b"\x00"
    if draw(st.booleans()):  # the messages of plain traffic, often enough to make plain chunks
        return draw(st.sampled_from([msg(b"Q", sql), msg(b"P", name + sql + b"\x00\x00"),
                                     msg(b"B", portal + name + b"\x00" * 6), msg(b"S", b""),
                                     msg(b"E", portal + b"\x00" * 4)]))
    return draw(st.sampled_from([
        msg(b"Q", sql),
        msg(b"P", name + sql + b"\x00\x00"),
        msg(b"B", portal + name + b"\x00\x00\x00\x00\x00\x00"),
        msg(b"D", b"S" + name),
        msg(b"D", b"P" + portal),
        msg(b"E", portal + b"\x00\x00\x00\x00"),
        msg(b"S", b""),
        msg(b"H", b""),
        msg(b"C", b"S" + name),
        msg(b"X", b""),
        msg(b"d", b"1\t2\n"),
        msg(b"F", b"\x00\x00\x00\x01"),
        b"Q\x00\x00\x00\x02",  # a length below 4
        msg(b"?", b""),
    ]))


@st.composite
def cut_stream(draw: st.DrawFn, message: st.SearchStrategy[bytes]) -> bytes:
    """Messages cut at a random point: as often at a message boundary as anywhere."""
    messages = draw(st.lists(message, min_size=1, max_size=8))
    if draw(st.booleans()):
        return b"".join(messages[: draw(st.integers(1, len(messages)))])
    stream = b"".join(messages)
    return stream[: draw(st.integers(1, len(stream)))]


@needs_c
@settings(max_examples=1500, deadline=None)
@given(cut_stream(client_message()))
def test_client_classifier_matches_its_python_twin(data: bytes) -> None:
    assert reactor_c.classify_client(data) == plain_owed(data)
    # Binds of named statements too (the C path then checks the names: test_c_path.py)
    assert reactor_c.classify_client(data, True) == classify(data, named=True)


@settings(max_examples=1500, deadline=None)
@given(cut_stream(client_message()))
def test_a_plain_chunk_is_plain_to_the_python_relay_too(data: bytes) -> None:
    """What the C path carries alone, the Python relay would have forwarded untouched: no
    closer look, no batch left open, and the same number of ReadyForQuery owed."""
    owed = plain_owed(data)
    if not owed:
        return
    scan = ClientScan()
    scan.feed(data)
    assert (scan.syncs, scan.special, scan.sets, scan.copy, scan.terminate) == (owed, False,
                                                                               False, False, -1)
    assert not scan.in_batch and not scan.mid_message


def test_plain_chunks_of_pgbench() -> None:
    """pgbench -S's transaction in simple and extended protocol is plain; a SET is not."""
    select = b"SELECT abalance FROM pgbench_accounts WHERE aid = $1;\x00"
    simple = msg(b"Q", b"SELECT abalance FROM pgbench_accounts WHERE aid = 7;\x00")
    extended = (msg(b"P", b"\x00" + select + b"\x00\x00") + msg(b"B", b"\x00\x00" + b"\x00" * 6)
                + msg(b"D", b"P\x00") + msg(b"E", b"\x00\x00\x00\x00\x00") + msg(b"S", b""))
    assert plain_owed(simple) == 1 and plain_owed(extended) == 1
    assert plain_owed(simple + simple) == 2
    assert plain_owed(msg(b"Q", b"SET work_mem = '8MB'\x00")) == 0
    assert plain_owed(extended[:-5]) == 0  # no Sync yet: the batch is open
    # -M prepared, once P_0 is prepared: Bind of a named statement, Execute, Sync -- plain if
    # the names may be checked (the C path does), never to the unnamed-only rules.
    prepared = (msg(b"B", b"\x00P_0\x00" + b"\x00" * 6) + msg(b"E", b"\x00\x00\x00\x00\x00")
                + msg(b"S", b""))
    assert classify(prepared, named=True) == (1, True) and plain_owed(prepared) == 0
    assert classify(extended, named=True) == (1, False)


STATUS = [b"I", b"T", b"E"]


@st.composite
def server_message(draw: st.DrawFn) -> bytes:
    return draw(st.sampled_from([
        msg(b"T", b"\x00\x01a\x00" + b"\x00" * 18),
        msg(b"D", b"\x00\x01\x00\x00\x00\x03abc"),
        msg(b"D", b"\x00\x01\x00\x00\x01\x00" + b"x" * 256),
        msg(b"C", b"SELECT 1\x00"),
        msg(b"C", b"DELETE 3\x00"),
        msg(b"C", b"DEALLOCATE ALL\x00"),
        msg(b"C", b"DISCARD ALL\x00"),
        msg(b"Z", draw(st.sampled_from(STATUS))),
        msg(b"Z", b"X"),
        msg(b"1", b""), msg(b"2", b""), msg(b"n", b""), msg(b"I", b""),
        msg(b"N", b"SNOTICE\x00Mhi\x00\x00"),
        msg(b"E", b"SERROR\x00C42601\x00Mbad\x00\x00"),
        msg(b"S", b"TimeZone\x00UTC\x00"),
        msg(b"G", b"\x00\x00\x00"),
        msg(b"A", b"\x00\x00\x00\x01c\x00\x00"),
    ]))


@needs_c
@settings(max_examples=600, deadline=None)
@given(st.lists(server_message(), min_size=1, max_size=10), st.integers(1, 4),
       st.lists(st.integers(1, 300), max_size=6))
def test_server_scan_matches_its_python_twin(messages: list[bytes], owed: int,
                                             cuts: list[int]) -> None:
    stream = b"".join(messages)
    chunks, pos = [], 0
    for size in cuts:
        chunks.append(stream[pos : pos + size])
        pos += size
    chunks = [c for c in chunks if c] + ([stream[pos:]] if stream[pos:] else [])
    assert reactor_c.scan_server(chunks, owed) == scan_answer(chunks, owed)


def test_server_scan_stops_where_the_session_must_read() -> None:
    answer = msg(b"T", b"\x00\x00") + msg(b"C", b"SELECT 0\x00")
    ready = msg(b"Z", b"I")
    assert scan_answer([answer + ready], 1) == (len(answer + ready), 0, b"I", 1, 1)
    error = msg(b"E", b"SERROR\x00\x00")
    assert scan_answer([answer + error + ready], 1)[:2] == (len(answer), 1)
    # An answer cut inside a DataRow is relayed on; its ReadyForQuery ends it.
    row = msg(b"D", b"\x00\x01\x00\x00\x00\x03abc")
    assert scan_answer([row[:7], row[7:] + ready], 1) == (len(row + ready), 0, b"I", 1, 1)
