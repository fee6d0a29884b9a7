"""SQL cursors on a sharded database: DECLARE, FETCH, MOVE, CLOSE (sans-IO).

A cursor lives on the shards its query ran on. The session remembers where each cursor was
declared (its query routed like any other) and sends FETCH, MOVE and CLOSE there; a FETCH from
a cursor open on several shards cannot return what one PostgreSQL would (each shard would give
its own next rows), so the session refuses it.
"""

from __future__ import annotations

import functools
import json

import attrs
from pglast.parser import ParseError, parse_sql_json, scan

__all__ = ["CursorStatement", "cursor_statement"]


@attrs.frozen
class CursorStatement:
    kind: str          # "declare", "fetch", "move" or "close"
    name: str | None   # the cursor's name as PostgreSQL folds it; None: CLOSE ALL
    query: str = ""    # DECLARE: the text of its query


@functools.lru_cache(maxsize=1024)
def cursor_statement(sql: str) -> CursorStatement | None:
    """What a single DECLARE / FETCH / MOVE / CLOSE statement says; None for anything else."""
    head = sql.lstrip()[:8].upper()
    if not head.startswith(("DECLARE", "FETCH", "MOVE", "CLOSE")):
        return None
    try:
        statements = json.loads(parse_sql_json(sql)).get("stmts", ())
    except ParseError:
        return None
    if len(statements) != 1:
        return None
    stmt = statements[0]["stmt"]
    if "DeclareCursorStmt" in stmt:
        return CursorStatement("declare", stmt["DeclareCursorStmt"]["portalname"],
                               _declared_query(sql))
    if "FetchStmt" in stmt:
        node = stmt["FetchStmt"]
        return CursorStatement("move" if node.get("ismove") else "fetch", node.get("portalname"))
    if "ClosePortalStmt" in stmt:
        return CursorStatement("close", stmt["ClosePortalStmt"].get("portalname"))
    return None


def _declared_query(sql: str) -> str:
    """The query of a DECLARE: what follows its `FOR` (the first after CURSOR)."""
    seen_cursor = False
    for token in scan(sql):
        if token.name == "CURSOR":
            seen_cursor = True
        elif seen_cursor and token.name == "FOR":
            return sql[token.end + 1 :]
    return ""
