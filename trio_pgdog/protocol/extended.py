"""Reading and renaming the statement names in extended-protocol messages.

Parse, Bind, Describe and Close name a prepared statement; in transaction pooling the proxy
renames client statements to names shared by all clients (see session/prepared.py). These
helpers take and return message *bodies* (after the 5-byte header).
"""

from __future__ import annotations

from .messages import message


def split_name(body: bytes, start: int = 0) -> tuple[bytes, int]:
    """The NUL-terminated name at `start`, and the offset just past its NUL."""
    end = body.index(b"\x00", start)
    return body[start:end], end + 1


def parse_name(body: bytes) -> tuple[bytes, bytes]:
    """Parse: (statement name, the rest: query + parameter types)."""
    name, rest = split_name(body)
    return name, body[rest:]


def build_parse(name: bytes, rest: bytes) -> bytes:
    return message(b"P", name + b"\x00" + rest)


def bind_statement(body: bytes) -> tuple[bytes, bytes, bytes]:
    """Bind: (portal, statement name, the rest: formats, parameters, result formats)."""
    portal, after_portal = split_name(body)
    statement, after_statement = split_name(body, after_portal)
    return portal, statement, body[after_statement:]


def build_bind(portal: bytes, statement: bytes, rest: bytes) -> bytes:
    return message(b"B", portal + b"\x00" + statement + b"\x00" + rest)


def target(body: bytes) -> tuple[bytes, bytes]:
    """Describe/Close: (b'S' or b'P', name)."""
    name, _ = split_name(body, 1)
    return body[:1], name


def build_target(kind: bytes, which: bytes, name: bytes) -> bytes:
    return message(kind, which + name + b"\x00")


def parse_query_text(rest: bytes) -> str:
    """The SQL text at the start of a Parse body's rest."""
    return rest[: rest.index(b"\x00")].decode("utf-8", "replace")
