"""`pgdog.unique_id()` in a sharded client's statements, replaced before they are routed.

Each occurrence in a Query's text, or in an unnamed statement's Parse, becomes a fresh id
(router/sharding/unique_id.py): the text is sharded by that literal like any other. Such an
unnamed statement may be bound once per Parse (a second Bind would repeat the ids).

A named prepared statement is parsed once and executed many times, so a literal would repeat
the same id at every execution: instead each occurrence becomes a parameter of the proxy's
own after the statement's (`$n::int8`), and every Bind of the statement gets fresh ids as the
values of those parameters, so routing reads them like any parameter. The client must not
see the extra parameters: a Describe of such a statement (which would list them) is refused
with 0A000; psycopg never sends one, asyncpg and JDBC do (they use unnamed statements when
told not to prepare).
"""

from __future__ import annotations

import struct

from ..protocol import ProxyError
from ..protocol import errors as codes
from ..protocol import extended as ext
from ..protocol import messages as m
from ..protocol import results as r
from ..router.sharding.unique_id import IDS, mentions, parameterize_unique_ids, replace_unique_ids

QUERY, PARSE, BIND, DESCRIBE = b"QPBD"
Message = tuple[int, bytes, bytes]
_I16, _I32 = struct.Struct("!h"), struct.Struct("!i")


class UniqueIdRewriter:
    def __init__(self) -> None:
        self._unnamed_binds: int | None = None  # Binds of the unnamed statement, if it has ids
        self._named: dict[bytes, int] = {}      # statement -> how many ids each Bind adds

    @property
    def busy(self) -> bool:
        """Are statements with ids prepared (their Binds and Describes need rewriting)?"""
        return self._unnamed_binds is not None or bool(self._named)

    def rewrite(self, unit: list[Message], node: int) -> list[Message]:
        """`unit` with its ids in; raises ProxyError (0A000) for what cannot have them."""
        if not self.busy:
            for kind, _b, raw in unit:
                if kind in (QUERY, PARSE) and mentions(raw):
                    break
            else:
                return unit  # (the common case: one look at each text)
        return [self._message(kind, body, raw, node) for kind, body, raw in unit]

    def _message(self, kind: int, body: bytes, raw: bytes, node: int) -> Message:
        if kind == QUERY and mentions(raw):
            sql = replace_unique_ids(body.rstrip(b"\x00").decode("utf-8", "replace"), node)
            if sql is not None:
                raw = m.query(sql)
                return kind, raw[5:], raw
        elif kind == PARSE:
            return self._parse(body, raw, node)
        elif kind == BIND:
            return self._bind(body, raw, node)
        elif kind == DESCRIBE and body[:1] == b"S" and body[1:-1] in self._named:
            raise ProxyError(codes.FEATURE_NOT_SUPPORTED,
                             f'prepared statement "{body[1:-1].decode("utf-8", "replace")}" '
                             "calls pgdog.unique_id(): its description would show the proxy's "
                             "own parameters; use an unnamed statement or the simple protocol",
                             hint="asyncpg: statement_cache_size=0; JDBC: prepareThreshold=0")
        return kind, body, raw

    def _parse(self, body: bytes, raw: bytes, node: int) -> Message:
        name, rest = ext.parse_name(body)
        if name == b"":
            self._unnamed_binds = None
        else:
            self._named.pop(name, None)
        if not mentions(raw):
            return PARSE, body, raw
        text, end = ext.split_name(rest)
        sql = text.decode("utf-8", "replace")
        if name == b"":
            replaced = replace_unique_ids(sql, node)
            if replaced is None:
                return PARSE, body, raw
            self._unnamed_binds = 0
            rest = replaced.encode() + b"\x00" + rest[end:]
        else:
            found = parameterize_unique_ids(sql, _I16.unpack_from(rest, end)[0])
            if found is None:
                return PARSE, body, raw
            text_with_parameters, _first, count = found
            self._named[name] = count
            rest = text_with_parameters.encode() + b"\x00" + rest[end:]
        raw = ext.build_parse(name, rest)
        return PARSE, raw[5:], raw

    def _bind(self, body: bytes, raw: bytes, node: int) -> Message:
        if self._unnamed_binds is None and not self._named:
            return BIND, body, raw
        portal, name, rest = ext.bind_statement(body)
        if name == b"" and self._unnamed_binds is not None:
            self._unnamed_binds += 1
            if self._unnamed_binds > 1:
                raise ProxyError(codes.FEATURE_NOT_SUPPORTED,
                                 "an unnamed statement with pgdog.unique_id() is bound once per "
                                 "Parse (each Parse gets new ids): send its Parse again")
        count = self._named.get(name) if name else None
        if not count:
            return BIND, body, raw
        raw = ext.build_bind(portal, name, with_ids(rest, [IDS.next(node) for _ in range(count)]))
        return BIND, raw[5:], raw


def ids_in_queries(data: bytes, node: int) -> bytes:
    """Whole client messages of an unsharded database with the ids in their Query texts
    (only those: the other messages are passed on as they are, see docs/sharding.md)."""
    out: list[bytes] = []
    pos = 0
    while pos + 5 <= len(data):
        end = pos + 1 + _I32.unpack_from(data, pos + 1)[0]
        raw = data[pos:end]
        if raw[:1] == b"Q" and mentions(raw):
            sql = replace_unique_ids(raw[5:].rstrip(b"\x00").decode("utf-8", "replace"), node)
            if sql is not None:
                raw = m.query(sql)
        out.append(raw)
        pos = end
    return b"".join(out) + data[pos:]


def with_ids(rest: bytes, ids: list[int]) -> bytes:
    """A Bind body after its names, with `ids` appended as text parameters."""
    codes, count, pos = r.bind_values_end(rest)
    nformats, formats = len(codes), list(codes)
    if formats and formats != [0]:  # else every parameter is text, the ids too
        if nformats == 1:  # one code for all of them: now one code each
            formats = formats * count
        formats += [0] * len(ids)
    values = b"".join(_I32.pack(len(text)) + text for text in (str(i).encode() for i in ids))
    return (_I16.pack(len(formats)) + struct.pack(f"!{len(formats)}h", *formats)
            + _I16.pack(count + len(ids)) + rest[2 + 2 * nformats + 2:pos] + values + rest[pos:])
