"""The ``table_access`` built-in: refuse statements that touch listed tables.

The tables a statement references come from the router's facts (anywhere in it: joins,
subqueries, CTEs, INSERT ... SELECT, COPY, ...), already folded the way PostgreSQL folds
identifiers. Configured names are folded the same way: ``Secrets`` is ``secrets``, while
``"Secrets"`` (double-quoted) keeps its case.

- A bare name (``secrets``) matches that table in any schema, qualified or not.
- A qualified name (``pg_catalog.pg_authid``) matches references qualified with that schema,
  and unqualified references to the same name too: the server's search_path may resolve
  them to that schema, and the proxy cannot know, so it errs on the side of refusing.

This is a guard rail, not a security boundary: a view, a function or dynamic SQL that reads a
listed table is not seen. Use GRANT/REVOKE on the server for access control.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..api import Decision, QueryInfo

if TYPE_CHECKING:
    from ...config.models import TableAccessHook

__all__ = ["TableAccess", "parse_table_name"]

# PostgreSQL folds only ASCII letters of unquoted identifiers in multi-byte encodings like UTF-8.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def parse_table_name(text: str) -> tuple[str | None, str]:
    """``name``, ``schema.name``, ``"Quoted"."Name"`` -> (schema or None, name), folded like SQL."""
    parts: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i < n and text[i] == '"':
            # A quoted identifier: case kept, "" is one quote.
            j, chars = i + 1, []
            while True:
                end = text.find('"', j)
                if end < 0:
                    raise ValueError(f"table name {text!r} has an unterminated quote")
                chars.append(text[j:end])
                if text.startswith('"', end + 1):
                    chars.append('"')
                    j = end + 2
                    continue
                i = end + 1
                break
            part = "".join(chars)
        else:
            j = i
            while i < n and text[i] != "." and not text[i].isspace():
                i += 1
            part = text[j:i].translate(_ASCII_LOWER)
        if not part:
            raise ValueError(f"table name {text!r} has an empty part")
        parts.append(part)
        while i < n and text[i].isspace():
            i += 1
        if i == n:
            break
        if text[i] != ".":
            raise ValueError(f"table name {text!r} is not name or schema.name")
        i += 1
    if len(parts) > 2:
        raise ValueError(f"table name {text!r} is not name or schema.name")
    return (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])


class TableAccess:
    """Blocks any statement that references a configured table (SQLSTATE 42501)."""

    def __init__(self, config: TableAccessHook) -> None:
        self._anywhere: set[str] = set()  # bare names: any schema
        self._qualified: set[tuple[str, str]] = set()
        self._qualified_names: set[str] = set()  # unqualified references to these are refused too
        for entry in config.tables:
            try:
                schema, name = parse_table_name(entry)
            except ValueError as exc:
                raise ValueError(f"hooks.table_access: {exc}") from None
            if schema is None:
                self._anywhere.add(name)
            else:
                self._qualified.add((schema, name))
                self._qualified_names.add(name)
        # A statement whose text cannot contain a listed name needs no parse (pgbench-style
        # texts with literals are new to the parse cache every time). Unquoted identifiers
        # fold to lower case; a name with upper case can only be written quoted, exactly.
        names = self._anywhere | self._qualified_names
        self._lower = tuple(n for n in names if n == n.lower())
        self._exact = tuple(n for n in names if n != n.lower())
        # U&"\0073ecrets" and names holding a quote ("" when quoted) defeat a text search.
        self._always_parse = any('"' in n for n in names)

    def _may_mention(self, sql: str) -> bool:
        if self._always_parse:
            return True
        lowered = sql.lower()
        return ("u&" in lowered or any(n in lowered for n in self._lower)
                or any(n in sql for n in self._exact))

    def _blocked(self, schema: str | None, name: str) -> bool:
        if name in self._anywhere:
            return True
        if schema is None:
            return name in self._qualified_names
        return (schema, name) in self._qualified

    def pre_query(self, q: QueryInfo) -> Decision | None:
        if not self._may_mention(q.sql):
            return None
        for schema, name in q.facts.tables:
            if self._blocked(schema, name):
                shown = name if schema is None else f"{schema}.{name}"
                return Decision.block(
                    f'permission denied: table "{shown}" is blocked by trio_pgdog (hooks.table_access)',
                    "42501",
                )
        return None
