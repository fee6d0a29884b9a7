"""What hooks see and what they answer: the one interface built-in hooks, Python hooks and
native plugins implement (design.md, "Routing and hooks").

A hook is any object with some of these methods (each optional; the registry calls only
the ones a hook has):

    pre_connect(info: ConnectInfo) -> Decision | None     refuse a client (BLOCK)
    after_connect(info: ServerInfo) -> Sequence[str]      SQL to run on a new server connection
    pre_query(query: QueryInfo) -> Decision | None        allow, route, block, intercept, rewrite
    post_query(done: QueryDone) -> None                   after a statement finished
    close() -> None                                       the hook is being unloaded

Hooks run inside the proxy's event loop: they must not block. Whatever a hook raises is
logged and counts as "no decision" (or, for after_connect, as no statements).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence

import attrs

from ..router.classify import StatementFacts, classify

__all__ = [
    "ALL_SHARDS",
    "EVENTS",
    "Action",
    "ConnectInfo",
    "Decision",
    "QueryDone",
    "QueryInfo",
    "ServerInfo",
]

EVENTS = ("pre_connect", "after_connect", "pre_query", "post_query")
ALL_SHARDS = -1  # Decision.shard: the statement goes to every shard


class Action(enum.IntEnum):
    """A hook's answer; the numbers are the C ABI's PGDOG_* decision codes."""

    ALLOW = 0      # no decision: the next hook (or the router) decides
    ROUTE = 1      # send it where `shard` / `role` say
    BLOCK = 2      # refuse it with `sqlstate` / `message`
    INTERCEPT = 3  # answer it with `columns` / `rows`, no server involved
    REWRITE = 4    # run `sql` instead


@attrs.frozen
class Decision:
    action: Action
    shard: int | None = None        # None: unknown (the router decides); ALL_SHARDS: all
    role: str | None = None         # "primary", "replica" or None (the router decides)
    sqlstate: str = "42501"         # BLOCK
    message: str = ""               # BLOCK
    columns: tuple[tuple[str, int], ...] = ()          # INTERCEPT: (name, type oid)
    rows: tuple[tuple[str | None, ...], ...] = ()      # INTERCEPT: text cells, None is NULL
    sql: str = ""                   # REWRITE

    @classmethod
    def route(cls, *, role: str | None = None, shard: int | None = None) -> Decision:
        return cls(Action.ROUTE, shard=shard, role=role)

    @classmethod
    def block(cls, message: str, sqlstate: str = "42501") -> Decision:
        return cls(Action.BLOCK, sqlstate=sqlstate, message=message)

    @classmethod
    def intercept(cls, columns: Sequence[tuple[str, int]],
                  rows: Sequence[Sequence[str | None]]) -> Decision:
        return cls(Action.INTERCEPT, columns=tuple(columns), rows=tuple(tuple(r) for r in rows))

    @classmethod
    def rewrite(cls, sql: str) -> Decision:
        return cls(Action.REWRITE, sql=sql)


@attrs.frozen
class ConnectInfo:
    """pre_connect: a client that has authenticated, before it is admitted."""

    user: str
    database: str
    application_name: str
    client_addr: str   # "host:port"


@attrs.frozen
class ServerInfo:
    """after_connect: a new, authenticated server connection before it enters its pool."""

    database: str      # the logical database
    user: str          # the pool's user
    host: str
    port: int
    role: str          # "primary" or "replica"
    shard: int


class QueryInfo:
    """pre_query: one statement about to be routed.

    Simple protocol: one Query message (its text may hold several statements; `facts`
    covers all of them). Extended protocol: one Bind, i.e. one execution of a prepared
    statement, with its parameters.

    `facts` (kind, tables with schema, writes, fingerprint) come from the router's parse
    cache, looked up the first time a hook reads them: a hook that never does costs no parse.
    """

    __slots__ = ("_facts", "_lookup", "client_addr", "database", "extended", "has_primary",
                 "has_replicas", "in_transaction", "parameter_formats", "parameters", "shards",
                 "sql", "user")

    def __init__(self, *, sql: str, database: str, user: str, client_addr: str,
                 facts: StatementFacts | None = None,
                 lookup: Callable[[str], StatementFacts] | None = None,
                 parameters: tuple[bytes | None, ...] = (), parameter_formats: tuple[int, ...] = (),
                 extended: bool = False, in_transaction: bool = False, shards: int = 1,
                 has_primary: bool = True, has_replicas: bool = False):
        self.sql = sql
        self.database, self.user, self.client_addr = database, user, client_addr
        self.parameters = parameters            # Bind values as sent; None is NULL
        self.parameter_formats = parameter_formats  # per parameter: 0 text, 1 binary
        self.extended = extended
        self.in_transaction = in_transaction
        self.shards = shards
        self.has_primary = has_primary
        self.has_replicas = has_replicas
        self._facts = facts
        self._lookup = lookup

    @property
    def facts(self) -> StatementFacts:
        if self._facts is None:
            self._facts = (self._lookup or classify)(self.sql)
        return self._facts

    def __repr__(self) -> str:
        return f"QueryInfo(sql={self.sql!r}, database={self.database!r}, user={self.user!r})"


@attrs.frozen
class QueryDone:
    """post_query: a statement finished (or was answered by a hook)."""

    sql: str
    database: str
    user: str
    client_addr: str
    duration_us: int
    rows: int                  # returned or affected, from CommandComplete
    sqlstate: str              # "" on success
    host: str                  # "host:port" of the server, "trio_pgdog" when a hook answered
    role: str                  # "primary", "replica" or "" when a hook answered
    shard: int
    parameters: tuple[bytes | None, ...] = ()
    parameter_formats: tuple[int, ...] = ()
