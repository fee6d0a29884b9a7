"""Reading a client's messages in units for the hook path (session/hooked.py).

A unit ends where PostgreSQL answers (Query, Sync, Flush, function call, COPY data): the hook
path decides a whole unit before sending any of it. Sans-IO: bytes in, message lists out.
"""

from __future__ import annotations

import struct

from .. import speedups
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


query_text = ext.query_text  # the SQL of a Query body; ProtocolError when malformed


# (Parse name, its SQL, Parse body after the name, portal, statement, Bind body after the names);
# the first three are None when the chunk has no Parse.
Execution = tuple[bytes | None, str | None, bytes | None, bytes, bytes, bytes]


def one_execution_py(data: bytes) -> Execution | None:
    """`data` read as one execution of BATCH_SHAPES, or None when it is anything else
    (including a malformed Parse, Describe or Execute, or names without their NUL: the
    general walk refuses those). Twin of _speedups.one_execution."""
    spans: list[tuple[int, int, int]] = []
    pos, end = 0, len(data)
    while pos < end:
        if len(spans) == 5 or pos + 5 > end:
            return None
        length = _LEN(data, pos + 1)[0]
        nxt = pos + 1 + length
        if length < 4 or nxt > end:
            return None
        spans.append((data[pos], pos + 5, nxt))
        pos = nxt
    if bytes(kind for kind, _s, _e in spans) not in BATCH_SHAPES:
        return None
    parse_name = sql = parse_rest = None
    try:
        ext.execute_portal(data[spans[-2][1] : spans[-2][2]])
        if spans[-3][0] == DESCRIBE:
            ext.target(data[spans[-3][1] : spans[-3][2]])
        if spans[0][0] == PARSE:
            parse_name, parse_rest = ext.parse_name(data[spans[0][1] : spans[0][2]])
            sql = ext.parse_query_text(parse_rest)
            spans.pop(0)
        portal, statement, bind_rest = ext.bind_statement(data[spans[0][1] : spans[0][2]])
    except ProtocolError:
        return None
    return parse_name, sql, parse_rest, portal, statement, bind_rest


one_execution = speedups.c.one_execution if speedups.c is not None else one_execution_py


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
            _portal, statement, rest = ext.bind_statement(body)
            if statement == name:
                return j, rest
        elif kind == PARSE and body.startswith(name + b"\x00"):
            return None
    return None


def bind_values(rest: bytes) -> Values:
    """Parameter values and formats from a Bind body after its names; ProtocolError when
    they are malformed."""
    try:
        return r.bind_parameters(rest)
    except ValueError:
        pass
    try:  # the pure-Python reader says what is wrong (the C one only that something is)
        r.bind_parameters_py(rest)
    except ValueError as exc:
        raise ProtocolError(f"Bind message: {str(exc).removeprefix('malformed Bind message: ')}") from None
    raise ProtocolError("Bind message: malformed parameters")
