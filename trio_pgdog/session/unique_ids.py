"""`pgdog.unique_id()` in a sharded client's statements, replaced before they are routed.

Each occurrence in a Query's text, or in an unnamed statement's Parse, becomes a fresh id
(router/sharding/unique_id.py): the text is sharded by that literal like any other. A named
prepared statement is parsed once and executed many times, and a literal in it would be the
same id every time: it is refused (0A000) rather than silently repeating ids. For the same
reason an unnamed statement carrying ids may be bound once per Parse.
"""

from __future__ import annotations

from ..protocol import ProxyError
from ..protocol import errors as codes
from ..protocol import extended as ext
from ..protocol import messages as m
from ..router.sharding.unique_id import mentions, replace_unique_ids

QUERY, PARSE, BIND = b"QPB"
Message = tuple[int, bytes, bytes]


class UniqueIdRewriter:
    def __init__(self) -> None:
        self._unnamed_binds: int | None = None  # Binds of the unnamed statement, if it has ids

    def rewrite(self, unit: list[Message], node: int) -> list[Message]:
        """`unit` with its ids in; raises ProxyError (0A000) for what cannot have them."""
        if self._unnamed_binds is None and not any(
                kind in (QUERY, PARSE) and mentions(raw) for kind, _b, raw in unit):
            return unit
        return [self._message(kind, body, raw, node) for kind, body, raw in unit]

    def _message(self, kind: int, body: bytes, raw: bytes, node: int) -> Message:
        if kind == QUERY and mentions(raw):
            sql = replace_unique_ids(body.rstrip(b"\x00").decode("utf-8", "replace"), node)
            if sql is not None:
                raw = m.query(sql)
                return kind, raw[5:], raw
        elif kind == PARSE:
            return self._parse(body, raw, node)
        elif kind == BIND and self._unnamed_binds is not None and ext.bind_statement(body)[1] == b"":
            self._unnamed_binds += 1
            if self._unnamed_binds > 1:
                raise ProxyError(codes.FEATURE_NOT_SUPPORTED,
                                 "an unnamed statement with pgdog.unique_id() is bound once per "
                                 "Parse (each Parse gets new ids): send its Parse again")
        return kind, body, raw

    def _parse(self, body: bytes, raw: bytes, node: int) -> Message:
        name, rest = ext.parse_name(body)
        if name == b"":
            self._unnamed_binds = None
        if not mentions(raw):
            return PARSE, body, raw
        text, end = ext.split_name(rest)
        sql = replace_unique_ids(text.decode("utf-8", "replace"), node)
        if sql is None:
            return PARSE, body, raw
        if name:
            raise ProxyError(codes.FEATURE_NOT_SUPPORTED,
                             f'prepared statement "{name.decode("utf-8", "replace")}" calls '
                             "pgdog.unique_id(): a named statement would repeat the same id at "
                             "every execution; use an unnamed statement or the simple protocol",
                             hint="psycopg: prepare=False (or prepare_threshold=None); "
                             "asyncpg: statement_cache_size=0")
        self._unnamed_binds = 0
        raw = ext.build_parse(name, sql.encode() + b"\x00" + rest[end:])
        return PARSE, raw[5:], raw
