"""Routes: where a statement's rows can come from, as a small formula evaluated per execution.

`keys.analyze` builds a route once per SQL text; literals are already turned into shard sets,
parameters stay as references until a Bind brings their values. The values a route takes:

  - ``ALL`` (None): rows on every shard, different on each (an unrestricted sharded table);
  - ``ANY``: rows the same on every shard (omnisharded tables only): any one shard will do;
  - ``TRUE``: a condition that restricts nothing (only inside conditions);
  - a frozenset of shards: rows only there (empty: no row can match);
  - ``("=", i, type)``: the shard of parameter i (0-based); NULL matches nothing;
  - ``("in", i, type)``: the shards of the elements of array parameter i;
  - ``("k", i, type)``: an inserted row's key from parameter i: NULL goes to shard 0 (where
    PostgreSQL's hash partitioning puts it), a value that is not a key raises `ShardingError`;
  - ``("&", parts)`` / ``("|", parts)``: a row needs every part / any part;
  - ``("?", route)``: a subquery's route used as a condition (EXISTS, IN): see `restrict`;
  - ``("1", route)``: must come out as one shard (rows that the proxy cannot split).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .hashing import int_key_hash
from .values import BadKey, array_hashes, binary_hash, text_hash

__all__ = ["ALL", "ANY", "TRUE", "Route", "ShardingError", "depends", "evaluate", "every",
           "restrict", "some"]

ALL = None
ANY = "any"
TRUE = "true"
Route = Any  # None | str | frozenset[int] | tuple
_EMPTY: frozenset[int] = frozenset()


class ShardingError(ValueError):
    """A statement (or its parameters) the proxy cannot route correctly; `sqlstate` and the
    message are meant for the client's ErrorResponse."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message


# --- building (constant parts folded) ----------------------------------------


def every(parts: Iterable[Route]) -> Route:
    """A row needs all parts: sets intersect; ALL beats ANY; TRUE and ANY add nothing to a set."""
    kept: list[Route] = []
    constant: frozenset[int] | None = None
    some_all = some_any = False
    for part in parts:
        if part is ALL:
            some_all = True
        elif part is ANY:
            some_any = True
        elif part is TRUE:
            continue
        elif type(part) is frozenset:
            constant = part if constant is None else constant & part
        elif part[0] == "&":
            kept.extend(part[1])
        else:
            kept.append(part)
    if constant is not None and (not constant or not kept):
        return constant
    if kept:
        if constant is not None:
            kept.append(constant)
        elif some_all:
            kept.append(ALL)
        elif some_any:
            kept.append(ANY)
        return kept[0] if len(kept) == 1 else ("&", tuple(kept))
    return ALL if some_all else ANY if some_any else TRUE


def some(parts: Iterable[Route]) -> Route:
    """A row needs any part: ALL absorbs, then TRUE; sets unite; ANY yields to a non-empty set."""
    kept: list[Route] = []
    constant: frozenset[int] = _EMPTY
    some_any = some_true = False
    for part in parts:
        if part is ALL:
            return ALL
        if part is TRUE:
            some_true = True
        elif part is ANY:
            some_any = True
        elif type(part) is frozenset:
            constant = constant | part
        elif part[0] == "|":
            kept.extend(part[1])
        else:
            kept.append(part)
    if some_true:
        # A part read at execution could still be ALL, which beats TRUE.
        return ("|", (*kept, TRUE)) if kept else TRUE
    if not kept:
        return ANY if some_any and not constant else constant
    if constant:
        kept.append(constant)
    if some_any:
        kept.append(ANY)
    return kept[0] if len(kept) == 1 else ("|", tuple(kept))


def restrict(route: Route) -> Route:
    """A subquery's route as a condition on the query around it (EXISTS, IN, ANY): rows only on
    some shards restrict it to them; rows the same everywhere restrict nothing (TRUE); rows that
    differ by shard restrict nothing either, but make the outer query's rows differ (ALL)."""
    if route is ANY or route is TRUE:
        return TRUE
    if route is ALL or type(route) is frozenset:
        return route
    return ("?", route)


def depends(route: Route) -> Route:
    """A subquery that cannot restrict the query around it (in its select list, the nullable
    side of an outer join): TRUE if its rows are the same on every shard, else ALL."""
    return TRUE if route is ANY or route is TRUE else ALL


# --- evaluating ----------------------------------------------------------------


class _Unknown(Exception):
    """A parameter whose value cannot be read as a key: the condition restricts nothing."""


def parameter_format(formats: Sequence[int], index: int) -> int:
    # Bind's rule: no codes means text, one code applies to all, else one per parameter.
    if not formats:
        return 0
    if len(formats) == 1:
        return formats[0]
    return formats[index] if index < len(formats) else 0


def _param_hash(node: tuple, params: Sequence[bytes | None], formats: Sequence[int],
                types: Sequence[int]) -> int | None:
    index, data_type = node[1], node[2]
    if index >= len(params):
        raise BadKey(f"parameter ${index + 1} is missing")
    value = params[index]
    if value is None:
        return None
    if parameter_format(formats, index) == 1:
        return binary_hash(value, data_type, types[index] if index < len(types) else 0)
    if data_type == "bigint":
        try:
            return int_key_hash(int(value))  # plain decimal, the usual text form
        except ValueError:
            pass
    return text_hash(value, data_type)


def evaluate(route: Route, shards: int, params: Sequence[bytes | None], formats: Sequence[int],
             types: Sequence[int]) -> Route:
    """The route with parameter values read: ALL, ANY, TRUE or a frozenset."""
    if route is None or type(route) is not tuple:
        return route
    tag = route[0]
    if tag == "=":
        try:
            h = _param_hash(route, params, formats, types)
        except BadKey:
            return TRUE  # PostgreSQL will reject the value wherever it runs
        return _EMPTY if h is None else frozenset((h % shards,))
    if tag == "k":
        try:
            h = _param_hash(route, params, formats, types)
        except BadKey as exc:
            raise ShardingError("22P02", f"sharding key of an inserted row: {exc}") from None
        return frozenset((0 if h is None else h % shards,))
    if tag == "in":
        index = route[1]
        value = params[index] if index < len(params) else None
        if value is None:
            return _EMPTY if index < len(params) else TRUE
        try:
            hashes = array_hashes(value, parameter_format(formats, index) == 1, route[2])
        except BadKey:
            return TRUE
        return frozenset(h % shards for h in hashes)
    if tag == "&":
        return every(evaluate(part, shards, params, formats, types) for part in route[1])
    if tag == "|":
        return some(evaluate(part, shards, params, formats, types) for part in route[1])
    if tag == "?":
        return restrict(evaluate(route[1], shards, params, formats, types))
    if tag == "1":
        result = evaluate(route[1], shards, params, formats, types)
        if type(result) is frozenset and len(result) > 1:
            raise ShardingError(
                "0A000",
                "the rows of this multi-row INSERT belong to different shards and the proxy "
                "cannot split it here (inside WITH, or next to a data-modifying WITH); "
                "insert them with separate statements",
            )
        return result
    raise AssertionError(f"unknown route {route!r}")

