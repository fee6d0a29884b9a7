"""The extended-protocol tracker without sockets: renaming, hidden and synthetic responses."""

import pytest

from trio_pgdog.pool.statements import ServerStatements
from trio_pgdog.protocol import ProtocolError
from trio_pgdog.protocol import messages as m
from trio_pgdog.session.prepared import StatementRegistry
from trio_pgdog.session.tracker import CLOSE_COMPLETE, PARSE_COMPLETE, Tracker

SQL = b"select $1::int\x00\x00\x00"  # query + zero parameter types
BIND_COMPLETE = m.message(b"2")
ROW = m.message(b"D", b"\x00\x01\x00\x00\x00\x011")
DONE = m.message(b"C", b"SELECT 1\x00")
READY = m.ready_for_query(b"I")


def parse(name: bytes) -> bytes:
    return m.message(b"P", name + b"\x00" + SQL)


def bind(name: bytes) -> bytes:
    return m.message(b"B", b"\x00" + name + b"\x00" + b"\x00\x00\x00\x00\x00\x00")


def execute() -> bytes:
    return m.message(b"E", b"\x00\x00\x00\x00\x00")


SYNC = m.message(b"S")


def names_in(data: bytes) -> list[bytes]:
    return [part for part in data.split(b"\x00") if b"__pgdog_" in part]


def test_named_statement_is_renamed_and_prepared_once_per_server():
    registry = StatementRegistry()
    server = ServerStatements()
    t = Tracker(registry)
    to_server, to_client = t.from_client(parse(b"s1") + bind(b"s1") + execute() + SYNC, server)
    assert to_client == b""
    assert b"s1\x00" not in to_server and len(names_in(to_server)) == 2
    reply = PARSE_COMPLETE + BIND_COMPLETE + ROW + DONE + READY
    out, ready, fatal = t.from_server(reply, server)
    assert out == reply and ready == [b"I"] and not fatal and t.idle

    # Another client, same SQL under another name, on the same server: no second Parse.
    t2 = Tracker(registry)
    to_server, to_client = t2.from_client(parse(b"other") + bind(b"other") + execute() + SYNC, server)
    assert not to_server.startswith(b"P")
    assert to_client == PARSE_COMPLETE  # answered at once: nothing is owed before it
    out, ready, _ = t2.from_server(BIND_COMPLETE + ROW + DONE + READY, server)
    assert out == BIND_COMPLETE + ROW + DONE + READY


def test_bind_on_a_new_server_prepares_first_and_hides_the_parse_complete():
    registry = StatementRegistry()
    first, second = ServerStatements(), ServerStatements()
    t = Tracker(registry)
    t.from_client(parse(b"s1") + SYNC, first)
    t.from_server(PARSE_COMPLETE + READY, first)
    to_server, _ = t.from_client(bind(b"s1") + execute() + SYNC, second)
    assert to_server.startswith(b"P")  # prepared on the new server before the Bind
    out, ready, _ = t.from_server(PARSE_COMPLETE + BIND_COMPLETE + ROW + DONE + READY, second)
    assert out == BIND_COMPLETE + ROW + DONE + READY and ready == [b"I"]


def test_close_is_answered_locally_and_errors_skip_to_sync():
    registry = StatementRegistry()
    server = ServerStatements()
    t = Tracker(registry)
    _, to_client = t.from_client(m.message(b"C", b"Ss1\x00"), server)
    assert to_client == CLOSE_COMPLETE
    t.from_client(parse(b"bad") + bind(b"bad") + execute() + SYNC, server)
    error = m.error_response("42601", "syntax error")
    out, ready, _ = t.from_server(error + READY, server)
    assert out == error + READY and ready == [b"I"] and t.idle
    assert len(server) == 0  # the failed Parse is not remembered as prepared


OTHER = m.message(b"P", b"b\x00select 2\x00\x00\x00")  # a second statement


def _full_server() -> tuple[Tracker, ServerStatements]:
    """A server with room for one statement, which `a` has."""
    server = ServerStatements(limit=1)
    t = Tracker(StatementRegistry())
    t.from_client(parse(b"a") + SYNC, server)
    t.from_server(PARSE_COMPLETE + READY, server)
    return t, server


def test_lru_limit_closes_the_oldest_statement():
    t, server = _full_server()
    to_server, _ = t.from_client(OTHER + SYNC, server)
    assert to_server.startswith(b"C")  # Close of the evicted statement first
    out, _, _ = t.from_server(CLOSE_COMPLETE + PARSE_COMPLETE + READY, server)
    assert out == PARSE_COMPLETE + READY


def test_partial_messages_wait_for_the_rest():
    server = ServerStatements()
    t = Tracker(StatementRegistry())
    data = parse(b"s1") + SYNC
    a, _ = t.from_client(data[:7], server)
    b, _ = t.from_client(data[7:], server)
    assert a == b"" and b.startswith(b"P")
    reply = PARSE_COMPLETE + READY
    out1, _, _ = t.from_server(reply[:3], server)
    out2, ready, _ = t.from_server(reply[3:], server)
    assert out1 + out2 == reply and ready == [b"I"]


@pytest.mark.parametrize(("data", "problem"), [
    (m.message(b"P", b"s1"), "Parse message: statement name is not NUL-terminated"),
    (m.message(b"P", b""), "Parse message: statement name is not NUL-terminated"),
    (m.message(b"P", b"s1\x00select 1"), "Parse message: query string is not NUL-terminated"),
    (m.message(b"P", b"s1\x00select 1\x00"), "Parse message: the parameter type count is missing"),
    (m.message(b"P", b"s1\x00select 1\x00\x00\x01"),
     "Parse message: 1 parameter types declared but 0 bytes of them sent"),
    (m.message(b"B", b"p1"), "Bind message: portal name is not NUL-terminated"),
    (m.message(b"B", b"\x00s1"), "Bind message: statement name is not NUL-terminated"),
    (m.message(b"B", b"\x00"), "Bind message: statement name is not NUL-terminated"),
    (m.message(b"D", b"Ss1"), "Describe message: statement name is not NUL-terminated"),
    (m.message(b"D", b"Pp1"), "Describe message: portal name is not NUL-terminated"),
    (m.message(b"D", b"X\x00"), "Describe message: target type 'X' (expected 'S' or 'P')"),
    (m.message(b"D", b""), "Describe message: target type missing (expected 'S' or 'P')"),
    (m.message(b"D", b"Ss1\x00x\x00"), "Describe message: 2 unexpected bytes after the statement name"),
    (m.message(b"C", b"Ss1"), "Close message: statement name is not NUL-terminated"),
    (m.message(b"C", b"Pp1"), "Close message: portal name is not NUL-terminated"),
])
def test_malformed_names_are_protocol_violations(data, problem):
    server = ServerStatements()
    t = Tracker(StatementRegistry())
    with pytest.raises(ProtocolError) as refused:
        t.from_client(data + SYNC, server)
    assert str(refused.value) == problem
    # What a chunk starting with a named Parse may be answered without a server: the same.
    if data.startswith(b"P") and data[5:6] not in (b"", b"\x00"):
        with pytest.raises(ProtocolError) as refused:
            t.answer_locally(data + SYNC)
        assert str(refused.value) == problem


def test_well_formed_unnamed_messages_pass_unread():
    # Portals and the unnamed statement need no renaming: forwarded as they came, for
    # PostgreSQL to check (here: a query without its parameter types).
    data = (m.message(b"P", b"\x00select 1\x00") + m.message(b"D", b"Pp1\x00")
            + m.message(b"C", b"P\x00") + m.message(b"D", b"S\x00") + SYNC)
    assert Tracker(StatementRegistry()).from_client(data, ServerStatements()) == (data, b"")


def test_a_deallocate_all_keeps_only_statements_parsed_after_it():
    # Ahead of its answer the record expects the drop (a Bind behind it prepares again, a
    # Close first in case the drop fails); its CommandComplete says it happened: what the
    # server has then is the statement whose Parse was sent after it.
    registry = StatementRegistry()
    server = ServerStatements()
    t = Tracker(registry)
    t.from_client(parse(b"s1") + SYNC, server)
    t.from_server(PARSE_COMPLETE + READY, server)
    first = registry.name_for(SQL)
    assert first in server and not server.unsure
    server.expect_drop()  # what the session does on seeing the client's DEALLOCATE ALL
    deallocate = m.query("deallocate all")
    to_server, _ = t.from_client(deallocate + bind(b"s1") + execute() + SYNC, server)
    assert to_server.startswith(deallocate + m.message(b"C", b"S" + first + b"\x00") + b"P")
    reply = (m.message(b"C", b"DEALLOCATE ALL\x00") + READY + CLOSE_COMPLETE + PARSE_COMPLETE
             + BIND_COMPLETE + ROW + DONE + READY)
    out, ready, _ = t.from_server(reply, server)
    assert out == m.message(b"C", b"DEALLOCATE ALL\x00") + READY + BIND_COMPLETE + ROW + DONE + READY
    assert ready == [b"I", b"I"] and t.idle
    assert first in server and len(server) == 1 and not server.unsure


def test_a_skipped_close_of_an_evicted_statement_leaves_the_record_unsure():
    t, server = _full_server()
    t.from_client(bind(b"nosuch") + OTHER + SYNC, server)  # Bind fails: Close and Parse skipped
    error = m.error_response("26000", 'prepared statement "nosuch" does not exist')
    t.from_server(error + READY, server)
    assert len(server) == 0 and server.unsure  # the evicted statement is still on the server
    to_server, _ = t.from_client(bind(b"a") + execute() + SYNC, server)
    assert to_server.startswith(b"C")  # closed before it is prepared again
