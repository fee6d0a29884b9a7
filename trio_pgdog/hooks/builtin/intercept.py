"""The ``intercept`` built-in: answer configured statements without a server.

A statement matches a configured query when their pglast fingerprints are equal: the
fingerprint ignores case, spacing, comments, literal values and parameter numbers, so
``SELECT  Version()`` matches ``select version()``, and ``select 2`` (or ``select $1``)
matches ``select 1``. Matching costs one dict lookup: the statement's fingerprint comes
with the router's facts, and the configured ones are computed once here.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ...protocol.types import require_type_oid
from ...router.fingerprint import statement_fingerprint
from ..api import Decision, QueryInfo

if TYPE_CHECKING:
    from ...config.models import InterceptHook, InterceptQuery

__all__ = ["Intercept", "statement_fingerprint"]

_PLACEHOLDER = re.compile(r"\$\{(USER|DATABASE)\}")


class _Answer:
    """One configured query, ready to answer: column OIDs resolved, cells to fill in."""

    __slots__ = ("columns", "decision", "rows")

    def __init__(self, entry: InterceptQuery) -> None:
        self.columns = tuple((name, require_type_oid(type_name)) for name, type_name in entry.columns)
        for i, row in enumerate(entry.rows):
            if len(row) != len(self.columns):
                raise ValueError(
                    f"intercept query {entry.query!r}: row {i + 1} has {len(row)} cells "
                    f"but there are {len(self.columns)} columns"
                )
        self.rows: tuple[tuple[str, ...], ...] = tuple(tuple(row) for row in entry.rows)
        dynamic = any(_PLACEHOLDER.search(cell) for row in self.rows for cell in row)
        # Without placeholders every answer is the same object.
        self.decision = None if dynamic else Decision.intercept(self.columns, self.rows)

    def answer(self, user: str, database: str) -> Decision:
        if self.decision is not None:
            return self.decision
        values = {"USER": user, "DATABASE": database}

        def value(match: re.Match[str]) -> str:
            return values[match.group(1)]

        # One pass, so a user name holding "${DATABASE}" stays as it is.
        rows = [[_PLACEHOLDER.sub(value, cell) for cell in row] for row in self.rows]
        return Decision.intercept(self.columns, rows)


class Intercept:
    """Answers statements whose fingerprint matches a configured query."""

    def __init__(self, config: InterceptHook) -> None:
        self._answers: dict[str, _Answer] = {}
        first: dict[str, str] = {}
        for entry in config.queries:
            try:
                key = statement_fingerprint(entry.query)
                answer = _Answer(entry)
            except ValueError as exc:
                raise ValueError(f"hooks.intercept: {exc}") from None
            if key in first:
                # Literal values do not count, so `select 1` and `select 2` are the same query.
                raise ValueError(
                    f"hooks.intercept: {entry.query!r} matches the same statements as {first[key]!r} "
                    "(matching ignores case, spacing, comments and literal values)"
                )
            first[key] = entry.query
            self._answers[key] = answer

    def pre_query(self, q: QueryInfo) -> Decision | None:
        answer = self._answers.get(q.facts.fingerprint)
        if answer is None:
            return None
        return answer.answer(q.user, q.database)
