"""Splitting a multi-row ``INSERT ... VALUES`` into one INSERT per shard.

The text is cut, not deparsed: pglast's scanner finds the VALUES rows of the statement's own
INSERT (not those of a CTE or a subquery), and each shard's statement is the original text with
only its rows between the part before the first row and the part after the last one (ON
CONFLICT, RETURNING and comments kept as written). Parameters are renumbered $1..$k in each
statement, in the order of their original numbers, and each statement comes with the original
parameter indexes (0-based) it uses, so that the session can build its Bind (and its Parse's
parameter types).

The cut positions are kept per text, and the statements per (text, grouping), in small LRUs.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

from pglast.parser import ParseError, scan

from .keys import ShardingFacts

__all__ = ["split_insert"]

_SKIPPED = frozenset({"C_COMMENT", "SQL_COMMENT"})


@functools.lru_cache(maxsize=256)
def _layout(sql: str) -> tuple[int, tuple[tuple[int, int], ...], int, tuple[tuple[int, int, int], ...]]:
    """(where the first row starts, each row's [start, end) span, where the last row ends,
    every parameter token as (start, end, number)), in characters of `sql`."""
    try:
        tokens = [t for t in scan(sql) if t.name not in _SKIPPED]
    except ParseError as exc:
        raise ValueError(f"cannot split the INSERT: {exc}") from None
    params = tuple((t.start, t.end + 1, int(sql[t.start + 1 : t.end + 1]))
                   for t in tokens if t.name == "PARAM")
    i, depth = 0, 0
    # The statement's own INSERT is the first one outside parentheses (after any WITH).
    while i < len(tokens) and not (depth == 0 and tokens[i].name == "INSERT"):
        depth += _depth_change(tokens[i].name)
        i += 1
    while i < len(tokens) and not (depth == 0 and tokens[i].name == "VALUES"):
        depth += _depth_change(tokens[i].name)
        i += 1
    i += 1
    rows: list[tuple[int, int]] = []
    while i < len(tokens) and tokens[i].name == "ASCII_40":  # "("
        start = tokens[i].start
        depth = 0
        while i < len(tokens):
            depth += _depth_change(tokens[i].name)
            i += 1
            if depth == 0:
                break
        rows.append((start, tokens[i - 1].end + 1))
        if i < len(tokens) and tokens[i].name == "ASCII_44":  # ","
            i += 1
        else:
            break
    if not rows:
        raise ValueError("cannot split the INSERT: no VALUES rows found")
    return rows[0][0], tuple(rows), rows[-1][1], params


def _depth_change(name: str) -> int:
    return 1 if name == "ASCII_40" else -1 if name == "ASCII_41" else 0


def split_insert(sql: str, facts: ShardingFacts,
                 rows_by_shard: Mapping[int, Sequence[int]]) -> dict[int, tuple[str, tuple[int, ...]]]:
    """One INSERT per shard with only that shard's rows (0-based row numbers, as
    `insert_rows_by_shard` returns them): {shard: (sql, original parameter indexes)}.

    Statement ``k``'s parameter ``$j`` is the original parameter ``indexes[j - 1] + 1``.
    With one shard, the statement is the original one. Raises ValueError if `facts` is not
    a splittable INSERT or the rows do not match it.
    """
    if facts.insert_keys is None:
        raise ValueError("not an INSERT ... VALUES the proxy can split")
    grouping = tuple(sorted((shard, tuple(rows)) for shard, rows in rows_by_shard.items()))
    every_row = sorted(row for _, rows in grouping for row in rows)
    if every_row != list(range(len(facts.insert_keys))):
        raise ValueError("each row of the INSERT must go to exactly one shard")
    return dict(_split(sql, grouping))


@functools.lru_cache(maxsize=1024)
def _split(sql: str, grouping: tuple[tuple[int, tuple[int, ...]], ...]
           ) -> tuple[tuple[int, tuple[str, tuple[int, ...]]], ...]:
    head_end, rows, tail_start, params = _layout(sql)
    if len(grouping) == 1:
        count = max((number for _, _, number in params), default=0)
        return ((grouping[0][0], (sql, tuple(range(count)))),)
    out = []
    for shard, chosen in grouping:
        if max(chosen) >= len(rows):
            raise ValueError(f"the INSERT has {len(rows)} rows, not {max(chosen) + 1}")
        spans = [(0, head_end)]
        for n, row in enumerate(chosen):
            if n:
                spans.append((-1, -1))  # the separator
            spans.append(rows[row])
        spans.append((tail_start, len(sql)))
        out.append((shard, _renumbered(sql, spans, params)))
    return tuple(out)


def _renumbered(sql: str, spans: list[tuple[int, int]],
                params: tuple[tuple[int, int, int], ...]) -> tuple[str, tuple[int, ...]]:
    kept = [(start, end, number) for start, end, number in params
            if any(a <= start < b for a, b in spans)]
    used = sorted({number for _, _, number in kept})
    new_number = {old: new for new, old in enumerate(used, 1)}
    pieces: list[str] = []
    for a, b in spans:
        if a < 0:
            pieces.append(", ")
            continue
        position = a
        for start, end, number in kept:
            if a <= start < b:
                pieces.append(sql[position:start])
                pieces.append(f"${new_number[number]}")
                position = end
        pieces.append(sql[position:b])
    return "".join(pieces), tuple(n - 1 for n in used)
