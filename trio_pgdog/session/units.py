"""Reading a client's messages in units for the hook path (session/hooked.py).

A unit ends where PostgreSQL answers (Query, Sync, Flush, function call, COPY data): the hook
path decides a whole unit before sending any of it. Sans-IO: bytes in, message lists out.
"""

from __future__ import annotations

import struct

from ..protocol import ProtocolError
from ..protocol import extended as ext
from ..protocol import messages as m
from ..protocol import results as r

# (type, body, the whole message)
Message = tuple[int, bytes, bytes]
Values = tuple[tuple[bytes | None, ...], tuple[int, ...]]  # Bind parameters and their formats

_LEN = struct.Struct("!i").unpack_from
QUERY, PARSE, BIND, DESCRIBE, EXECUTE, CLOSE = b"QPBDEC"
SYNC, FLUSH, FUNCTION_CALL = b"SHF"
# Messages after which PostgreSQL answers, so a unit ends there. COPY data always flows on.
UNIT_ENDS = frozenset(b"QSHFdcf")
HOLD_LIMIT = 8 << 20  # bytes of complete messages held while waiting for a Sync or Flush
NAMING = frozenset((DESCRIBE, CLOSE, EXECUTE))  # messages naming a statement or portal
READY_KINDS = frozenset((QUERY, SYNC, FUNCTION_CALL))  # each earns a ReadyForQuery
BATCH_STARTS = (b"P", b"B")
SYNC_MESSAGE = b"S\x00\x00\x00\x04"
# [Parse] Bind [Describe] Execute Sync: what a driver sends for one execution.
BATCH_SHAPES = frozenset((b"PBDES", b"PBES", b"BDES", b"BES"))


def query_text(body: bytes) -> str:
    """The SQL of a Query message body (NUL-terminated)."""
    return body.rstrip(b"\x00").decode("utf-8", "replace")


def batch_spans(data: bytes) -> list[tuple[int, int, int]] | None:
    """(type, body start, end) of each message if `data` is exactly one of BATCH_SHAPES."""
    spans: list[tuple[int, int, int]] = []
    pos, end = 0, len(data)
    while pos + 5 <= end and len(spans) < 5:
        length = _LEN(data, pos + 1)[0]
        nxt = pos + 1 + length
        if length < 4 or nxt > end:
            return None
        spans.append((data[pos], pos + 5, nxt))
        pos = nxt
    if pos != end or bytes(kind for kind, _s, _e in spans) not in BATCH_SHAPES:
        return None
    return spans


def split_units(buf: bytes) -> tuple[list[Message], int]:
    """The complete units at the start of `buf` as (type, body, raw) messages, and where
    the held rest (an unfinished unit or message) begins."""
    messages: list[Message] = []
    pos, cut, end = 0, 0, len(buf)
    done = 0
    while pos + 5 <= end:
        kind = buf[pos]
        length = _LEN(buf, pos + 1)[0]
        if length < 4 or length > m.MAX_MESSAGE_LENGTH:
            raise ProtocolError(f"invalid message length {length}")
        nxt = pos + 1 + length
        if nxt > end:
            break
        messages.append((kind, buf[pos + 5 : nxt], buf[pos:nxt]))
        pos = nxt
        if kind in UNIT_ENDS:
            cut, done = pos, len(messages)
    if pos - cut > HOLD_LIMIT:
        # A client streaming messages without a Sync must not make the proxy hold them all:
        # what has come is handled now, as PostgreSQL would handle it.
        cut, done = pos, len(messages)
    return messages[:done], cut


def first_bind(messages: list[Message], index: int,
                name: bytes) -> tuple[int, bytes] | None:
    """(index, the rest after the names) of the first Bind of statement `name` after its
    Parse at `index`, within the unit and before the name is parsed again."""
    for j in range(index + 1, len(messages)):
        kind, body, _raw = messages[j]
        if kind == BIND:
            try:
                _portal, statement, rest = ext.bind_statement(body)
            except ValueError:
                continue
            if statement == name:
                return j, rest
        elif kind == PARSE and body.startswith(name + b"\x00"):
            return None
    return None


def bind_values(rest: bytes) -> Values:
    """Parameter values and formats from a Bind body after its names."""
    try:
        return r.bind_parameters(rest)
    except ValueError:
        return (), ()
