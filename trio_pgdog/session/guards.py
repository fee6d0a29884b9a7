"""SQL that cannot be shared in transaction pooling, and other small reads of client and
server bytes the relay needs (no state, no I/O)."""

from __future__ import annotations

from ..pool.server import ServerConnection
from ..protocol import messages as m
from ..router.keywords import leading_keywords
from .sqltext import raise_sql

_REFUSED = {
    "PREPARE": ("SQL-level PREPARE is not supported in transaction pooling mode",
                "use protocol-level prepared statements (e.g. psycopg prepare=True), which "
                "trio_pgdog keeps across transactions, or a session-mode pool"),
    "LISTEN": ("LISTEN is not supported in transaction pooling mode: notifications would reach "
               "whichever client holds the server connection next",
               "use a session-mode pool (pooler_mode = \"session\") for LISTEN/NOTIFY consumers"),
}


def guard_session_sql(data: bytes, server: ServerConnection) -> tuple[bytes, bool, list[bytes]]:
    """SQL-level PREPARE and LISTEN cannot work in transaction mode (the next EXECUTE may run
    on another server or find another client's statement; notifications would reach another
    client): the server raises a clear error instead, so client and server agree on the
    transaction state. DEALLOCATE and DISCARD ALL may drop the server's shared statements:
    what the client sends behind them must not rely on those (pool/statements.py). Also
    returns the SET/RESET statements found (behind a comment, where the ClientScan does not
    look)."""
    out: list[bytes] = []
    sets: list[bytes] = []
    pos = start = 0
    discarded_all = False
    while pos + 5 <= len(data):
        kind, length = m.parse_header(data, pos)
        nxt = pos + 1 + length
        if nxt > len(data):
            break
        if kind == b"Q":
            words = leading_keywords(data[pos + 5 : nxt])
            refusal = _REFUSED.get(words[0]) if words else None
            if refusal is not None:
                out += [data[start:pos], m.query(raise_sql("0A000", *refusal))]
                start = nxt
            elif drops_statements(words):
                server.statements.expect_drop()
                discarded_all = discarded_all or words[:2] == ["DISCARD", "ALL"]
            elif words[:1] in (["SET"], ["RESET"]):
                sets.append(data[pos + 5 : nxt])
        pos = nxt
    out.append(data[start:])
    return b"".join(out), discarded_all, sets


def drops_statements(words: list[str]) -> bool:
    """Do a Query's leading words drop the server's prepared statements (DEALLOCATE,
    DISCARD ALL; DISCARD PLANS keeps them)?"""
    return words[:1] == ["DEALLOCATE"] or words[:2] == ["DISCARD", "ALL"]


def only_notices(data: bytes) -> bool:
    """Is `data` nothing but NoticeResponses (e.g. PostgreSQL's shutdown warning)?"""
    pos = 0
    while pos + 5 <= len(data):
        if data[pos] != 0x4E:
            return False
        pos += 1 + m.unpack_i32(data, pos + 1)
    return pos == len(data)


def statements_in(data: bytes) -> list[bytes]:
    """The SQL of the complete Query and unnamed Parse messages in `data`."""
    found: list[bytes] = []
    pos = 0
    while pos + 5 <= len(data):
        kind, length = m.parse_header(data, pos)
        nxt = pos + 1 + length
        if nxt > len(data) or length < 4:
            break
        if kind == b"Q":
            found.append(data[pos + 5 : nxt])
        elif kind == b"P" and data[pos + 5 : pos + 6] == b"\x00":
            found.append(data[pos + 6 : nxt])
        pos = nxt
    return found
