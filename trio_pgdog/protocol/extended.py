"""Reading and renaming the statement names in extended-protocol messages.

Parse, Bind, Describe and Close name a prepared statement; in transaction pooling the proxy
renames client statements to names shared by all clients (see session/prepared.py). These
helpers take and return message *bodies* (after the 5-byte header).

The readers are strict: a message the proxy has to read must be well-formed, or the client
broke the protocol (ProtocolError, which ends its session with FATAL 08P01 saying what was
wrong). Messages the proxy passes on unread are PostgreSQL's to check.
"""

from __future__ import annotations

import struct

from .errors import ProtocolError
from .messages import message

_I16 = struct.Struct("!h").unpack_from
# The subtype byte of Describe and Close, and what it names.
_TARGETS = {b"S": "statement", b"P": "portal"}
_MESSAGE_NAMES = {b"D": "Describe", b"C": "Close"}


def split_name(body: bytes, start: int = 0, what: str = "name") -> tuple[bytes, int]:
    """The NUL-terminated name at `start`, and the offset just past its NUL; `what` (such as
    "Parse message: statement name") says in the error which string had no NUL."""
    end = body.find(b"\x00", start)
    if end < 0:
        raise ProtocolError(f"{what} is not NUL-terminated")
    return body[start:end], end + 1


def parse_name(body: bytes) -> tuple[bytes, bytes]:
    """Parse: (statement name, the rest: query + parameter types), the whole body checked."""
    name, rest = split_name(body, 0, "Parse message: statement name")
    rest_of_body = body[rest:]
    check_parse_rest(rest_of_body)
    return name, rest_of_body


def check_parse_rest(rest: bytes) -> None:
    """A Parse body after the name: the query string, then the parameter type count and as
    many type OIDs, and nothing after them."""
    _sql, types_at = split_name(rest, 0, "Parse message: query string")
    if len(rest) < types_at + 2:
        raise ProtocolError("Parse message: the parameter type count is missing")
    count = _I16(rest, types_at)[0]
    if count < 0:
        raise ProtocolError(f"Parse message: negative parameter type count {count}")
    extra = len(rest) - (types_at + 2 + 4 * count)
    if extra:
        raise ProtocolError(f"Parse message: {count} parameter types declared but "
                            f"{len(rest) - types_at - 2} bytes of them sent")


def build_parse(name: bytes, rest: bytes) -> bytes:
    return message(b"P", name + b"\x00" + rest)


def bind_statement(body: bytes) -> tuple[bytes, bytes, bytes]:
    """Bind: (portal, statement name, the rest: formats, parameters, result formats)."""
    portal, after_portal = split_name(body, 0, "Bind message: portal name")
    statement, after_statement = split_name(body, after_portal, "Bind message: statement name")
    return portal, statement, body[after_statement:]


def build_bind(portal: bytes, statement: bytes, rest: bytes) -> bytes:
    return message(b"B", portal + b"\x00" + statement + b"\x00" + rest)


def target(body: bytes, kind: bytes = b"D") -> tuple[bytes, bytes]:
    """Describe (`kind` b"D") or Close (b"C"): (b'S' or b'P', name), the whole body checked."""
    label = _MESSAGE_NAMES.get(kind, "Describe") + " message"
    which = body[:1]
    what = _TARGETS.get(which)
    if what is None:
        shown = repr(which.decode("latin-1")) if which else "missing"
        raise ProtocolError(f"{label}: target type {shown} (expected 'S' or 'P')")
    name, end = split_name(body, 1, f"{label}: {what} name")
    if end != len(body):
        raise ProtocolError(f"{label}: {len(body) - end} unexpected bytes after the {what} name")
    return which, name


def execute_portal(body: bytes) -> bytes:
    """Execute: the portal name, the body checked (the name, then a 4-byte row limit)."""
    name, end = split_name(body, 0, "Execute message: portal name")
    if len(body) - end != 4:
        raise ProtocolError(f"Execute message: {len(body) - end} bytes after the portal name "
                            "(expected a 4-byte row limit)")
    return name


def build_target(kind: bytes, which: bytes, name: bytes) -> bytes:
    return message(kind, which + name + b"\x00")


def parse_query_text(rest: bytes) -> str:
    """The SQL text at the start of a Parse body's rest."""
    sql, _end = split_name(rest, 0, "Parse message: query string")
    return sql.decode("utf-8", "replace")


def query_text(body: bytes) -> str:
    """The SQL of a Query message body: one NUL-terminated string, nothing after it."""
    end = body.find(b"\x00")
    if end != len(body) - 1:
        if end < 0:
            raise ProtocolError("Query message: query string is not NUL-terminated")
        raise ProtocolError(f"Query message: {len(body) - end - 1} unexpected bytes after the "
                            "query string's NUL")
    return body[:end].decode("utf-8", "replace")
