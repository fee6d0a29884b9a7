"""How to merge a SELECT's answers from several shards: sans-IO, once per SQL text.

A statement without a sharding key runs on every shard, and the client must get exactly what
one PostgreSQL holding all the rows would return. `plan_select(sql)` reads the statement
(`parse_sql_json`, walked as JSON) and says how (`MergePlan`):

  - kind "concat": the shards' rows, one after the other, are the answer (no ORDER BY,
    aggregate, DISTINCT, LIMIT or OFFSET to honour), and so is every statement that is not a
    SELECT;
  - kind "stream": rows in any order, but DISTINCT and/or LIMIT/OFFSET apply after the merge;
  - kind "sort": each shard sorts, the proxy merges the sorted streams (k-way) by `sort`,
    then DISTINCT, OFFSET, LIMIT;
  - kind "aggregate": each shard aggregates its rows per group; the proxy combines the
    partial results per group, then HAVING, DISTINCT, ORDER BY, OFFSET, LIMIT;
  - kind "refused": `refusal` = (SQLSTATE, message); running it would give a wrong answer.

`shard_sql` is what every shard runs: the text itself when it can be, else a rewrite
(pglast's deparser on the AST, built only then): `avg(x)` becomes `sum(x)` in place plus a
hidden `count(x)`; an ORDER BY, GROUP BY or HAVING term that is not an output column becomes a
hidden trailing column; HAVING conditions on aggregates are taken off (the proxy evaluates
them on the combined groups); LIMIT n OFFSET m becomes LIMIT n+m (as parameters too: see
`shard_parameters`); an aggregate query's DISTINCT is taken off. Hidden columns come after
every output column; the merge drops them.

Column positions (`SortKey.column`, `Aggregate.column`, `group_keys`) index the shard's row
(output columns then hidden ones): >= 0 counts from the start, < 0 from the end (Python-like).
Negative positions appear only after a `*` in the select list, whose width the plan cannot
know; the engine resolves them with the RowDescription.

Assumptions, as for routing: rows a query relates across tables (joins, correlated
subqueries) live on the same shard. A subquery that summarizes a sharded table on its own
(an aggregate, DISTINCT, LIMIT, a window, a set operation) would be computed per shard: it
is refused unless it refers to the query around it (correlated) or reads no sharded table
(`sharded_tables` given).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Collection, Sequence
from typing import Any

import attrs
from pglast.parser import ParseError, parse_sql_json

from ..classify import _only_item
from .merge_sql import (
    DISTINCT_SAFE,
    FEATURE_NOT_SUPPORTED,
    MERGEABLE,
    OTHER_AGGREGATES,
    SET_RETURNING,
    Path,
    Refused,
    Shape,
    Table,
    Tables,
    aggregate_calls,
    ast_at,
    bare_name,
    branches,
    check_subqueries,
    const_node,
    direction,
    drop,
    func_name,
    has_window,
    implicit_name,
    int_const,
    is_star,
    last_name,
    param_node,
    param_numbers,
    rename,
    set_ops,
    strip_positions,
    summarizes,
    walk,
)
from .routes import parameter_format

__all__ = ["Aggregate", "MergePlan", "Param", "SortKey", "bind_bound", "plan_select",
           "shard_parameters", "shard_result_formats"]

_COMPARISONS = {"=": "=", "<>": "<>", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


@attrs.frozen
class Param:
    """A Bind parameter, 0-based ($1 is Param(0))."""

    index: int


Bound = int | Param | None


@attrs.frozen
class SortKey:
    """One ORDER BY term: a column of the shard's row (None: the output column `name`,
    found in the RowDescription, after a `*`), its direction and where NULLs go (PostgreSQL's
    defaults: NULLS LAST for ASC, FIRST for DESC)."""

    column: int | None
    descending: bool = False
    nulls_first: bool = False
    name: str | None = None
    collation: str | None = None  # an explicit COLLATE on the term


@attrs.frozen
class Aggregate:
    """An aggregate column: `function` is count, sum, min, max, avg, bool_and or bool_or
    (every is bool_and); for avg the shard returns sum(x) at `column` and count(x) at
    `count_column`."""

    column: int
    function: str
    count_column: int | None = None


@attrs.frozen
class MergePlan:
    kind: str  # concat | stream | sort | aggregate | refused
    sql: str
    shard_sql: str
    refusal: tuple[str, str] | None = None  # (SQLSTATE, message) when kind == "refused"
    sort: tuple[SortKey, ...] = ()
    limit: Bound = None  # None: no limit
    offset: int | Param = 0
    distinct: bool = False  # over the output columns, after the merge
    grouped: bool = False  # GROUP BY (else an aggregate query is one group: one row)
    group_keys: tuple[int, ...] = ()
    aggregates: tuple[Aggregate, ...] = ()
    # HAVING conditions the proxy evaluates after combining groups: a tree of tuples
    #   ("and", (c, ...)) ("or", (c, ...)) ("not", c) ("cmp", op, a, b) ("null", a, is_null)
    # where op is = <> < <= > >=, and operands are ("col", position), ("const", text|None)
    # or ("param", index).
    having: tuple[Any, ...] | None = None
    hidden: int = 0  # trailing columns the shards return and the client never sees
    columns: int | None = None  # output columns, when known (no `*` in the select list)
    # Bind values the shards get instead of the client's: (index, action), action "limit"
    # (the limit plus the offset), "zero" or "null". See shard_parameters.
    shard_params: tuple[tuple[int, str], ...] = ()
    limit_pushed: bool = False  # shards apply LIMIT n+m themselves
    # An aggregate query whose LIMIT the shards apply: the engine checks that each shard's
    # groups arrive in the merge's order (they must, for the limit to be right).
    check_shard_order: bool = False

    @property
    def rewritten(self) -> bool:
        return self.shard_sql != self.sql


# --- the entry point -----------------------------------------------------------------------


def plan_select(sql: str, sharded_tables: Collection[Table] | None = None) -> MergePlan:
    """The merge plan of `sql` (one or more statements). `sharded_tables` (schema or None,
    name), from ShardingFacts.sharded_tables, lets subqueries over other tables summarize;
    without it every table counts as sharded. Text that does not parse is "concat": the
    shards report the syntax error."""
    if "\x00" in sql:
        return MergePlan("concat", sql, sql)
    try:
        text = parse_sql_json(sql)
    except ParseError:
        return MergePlan("concat", sql, sql)
    tree = json.loads(text)
    # What the text holds at all, to skip the walks that would find nothing.
    shape = Shape(nested=text.count('"SelectStmt"') > len(tree.get("stmts", ())),
                   calls='"FuncCall"' in text, ctes='"CommonTableExpr"' in text)
    statements = tree.get("stmts", ())
    plans = []
    for raw in statements:
        node_type, node = _only_item(raw["stmt"])
        if node_type != "SelectStmt" or "intoClause" in node:
            plans.append(MergePlan("concat", sql, sql))
            continue
        try:
            plans.append(_Planner(sql, node, sharded_tables, shape).plan())
        except Refused as refused:
            plans.append(MergePlan("refused", sql, sql, refusal=(refused.sqlstate, refused.message)))
        except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
            # A statement shape this planner does not know: refusing beats a wrong answer.
            plans.append(MergePlan("refused", sql, sql, refusal=(
                FEATURE_NOT_SUPPORTED, "the proxy cannot tell how to merge this statement's "
                f"results across shards ({type(exc).__name__}): use a sharding key")))
    if not plans:
        return MergePlan("concat", sql, sql)
    if len(plans) == 1:
        return plans[0]
    for plan in plans:
        if plan.kind == "refused":
            return plan
    if any(plan.kind != "concat" for plan in plans):
        return MergePlan("refused", sql, sql, refusal=(
            FEATURE_NOT_SUPPORTED, "a query string of several statements whose results must be "
            "merged across shards: send the statements one at a time"))
    return plans[0]


# --- the planner ---------------------------------------------------------------------------

Ref = tuple[str, int]  # ("start", i) | ("end", j) | ("hidden", h): resolved to a position at the end


class _Target:
    __slots__ = ("implicit", "name", "ref", "star", "val")

    def __init__(self, val: dict[str, Any], name: str | None, ref: Ref | None) -> None:
        self.val = val
        self.star = is_star(val)
        self.name = name  # the explicit alias
        self.implicit = name if name is not None else implicit_name(val)
        self.ref = ref


class _Planner:
    def __init__(self, sql: str, node: dict[str, Any], sharded: Collection[Table] | None,
                 shape: Shape) -> None:
        self.sql = sql
        self.node = node
        self.shape = shape
        self.tables = Tables(node, sharded, shape)
        self.edits: list[Callable[[Any], None]] = []
        self.hidden: list[Callable[[Any], Any]] = []  # each builds its AST ResTarget
        self.shard_params: list[tuple[int, str]] = []
        self.group_items: dict[Ref, dict[str, Any]] = {}  # each group key's expression
        self.splices: list[list[tuple[str, str]]] = []  # text versions of the bound edits

    # the plan

    def plan(self) -> MergePlan:
        node = self.node
        if node.get("op", "SETOP_NONE") != "SETOP_NONE":
            return self.set_operation()
        if "valuesLists" in node:
            return MergePlan("concat", self.sql, self.sql)
        if self.shape.nested:
            check_subqueries(node, self.tables)
        self.targets = self.read_targets(node.get("targetList", ()))
        calls = self.shape.calls
        if "windowClause" in node or (calls and has_window([node.get("targetList"),
                                                               node.get("sortClause")])):
            raise Refused("window functions cannot be computed from each shard's rows: "
                           "run the query on one shard (a sharding key) or without the window")
        distinct = node.get("distinctClause")
        if distinct is not None and distinct != [{}]:
            raise Refused("DISTINCT ON cannot be merged across shards yet: use a sharding key")
        aggregated = ("groupClause" in node or "havingClause" in node
                      or (calls and bool(aggregate_calls([node.get("targetList"),
                                                           node.get("sortClause")]))))
        if aggregated:
            return self.aggregate(distinct is not None)
        sort = self.sort_keys(node.get("sortClause", ()), distinct is not None)
        return self.rows(sort, distinct is not None)

    def finish(self, kind: str, **fields: Any) -> MergePlan:
        shard_sql = self.sql
        if self.edits or self.hidden:
            spliced = self.splice() if len(self.splices) == len(self.edits) and not self.hidden \
                else None
            shard_sql = spliced if spliced is not None else self.deparse()
        return MergePlan(kind, self.sql, shard_sql, hidden=len(self.hidden),
                         shard_params=tuple(self.shard_params), **fields)

    def splice(self) -> str | None:
        """The text with LIMIT/OFFSET tokens replaced, or None when a token is not where and
        what it should be (then the deparser does it)."""
        raw = self.sql.encode("utf-8")
        changes = []
        for splices in self.splices:
            for key, text in splices:
                node = self.node[key]
                if "TypeCast" in node:
                    node = node["TypeCast"]["arg"]
                inner = node.get("A_Const") or node.get("ParamRef") or {}
                start = inner.get("location", -1)
                if start < 0 or ("A_Const" in node and "ival" not in node["A_Const"]):
                    return None
                end = start + 1 if raw[start : start + 1] == b"$" else start
                while raw[end : end + 1].isdigit():
                    end += 1
                if end == start or raw[start:end] == b"$":
                    return None
                changes.append((start, end, text.encode("ascii")))
        for start, end, text in sorted(changes, reverse=True):
            raw = raw[:start] + text + raw[end:]
        return raw.decode("utf-8")

    def deparse(self) -> str:
        from pglast import ast, parse_sql
        from pglast.stream import RawStream

        (raw,) = parse_sql(self.sql)
        stmt = raw.stmt
        hidden = [build(stmt) for build in self.hidden]
        for edit in self.edits:
            edit(stmt)
        if hidden:
            stmt.targetList = tuple(stmt.targetList or ()) + tuple(
                ast.ResTarget(name=f"__pgdog_hidden_{i}", val=val) for i, val in enumerate(hidden))
        return RawStream()(stmt)

    # positions

    def position(self, ref: Ref) -> int:
        kind, i = ref
        if kind == "start":
            return i
        if kind == "hidden":
            if self.star is None:
                return self.explicit + i
            return -(len(self.hidden) - i)
        return -(len(self.hidden) + i)  # "end": i-th explicit target counted from the last

    def read_targets(self, targets: Sequence[dict[str, Any]]) -> list[_Target]:
        out: list[_Target] = []
        stars = [i for i, t in enumerate(targets) if is_star(t["ResTarget"]["val"])]
        self.star = stars[0] if stars else None
        self.explicit = len(targets)
        for i, wrapper in enumerate(targets):
            target = wrapper["ResTarget"]
            ref: Ref | None
            if not stars or i < stars[0]:
                ref = ("start", i)
            elif i > stars[-1]:
                ref = ("end", len(targets) - i)
            else:
                ref = None  # between two stars (or a star itself): no fixed position
            out.append(_Target(target["val"], target.get("name"), ref))
        return out

    def hide(self, path: Path, as_function: str | None = None) -> Ref:
        """A hidden trailing column computing the AST node at `path` (as `as_function` when
        given: the same call renamed)."""
        def build(stmt: Any) -> Any:
            node = copy.deepcopy(ast_at(stmt, path))
            if as_function is not None:
                rename(node, as_function)
            return node
        self.hidden.append(build)
        return ("hidden", len(self.hidden) - 1)

    # ORDER BY without aggregates

    def sort_keys(self, clause: Sequence[dict[str, Any]], distinct: bool
                  ) -> list[tuple[Ref | str, bool, bool, str | None]]:
        keys = []
        for i, wrapper in enumerate(clause):
            sort_by = wrapper["SortBy"]
            expr, collation, path = self.uncollated(sort_by["node"], ("sortClause", i, "node"))
            ref = self.output_by_name_or_position(expr)
            if ref is None:
                ref = self.output_by_expression(expr)
            if ref is None:
                if distinct:
                    raise Refused("for SELECT DISTINCT, ORDER BY expressions must appear in "
                                   "select list", "42P10")
                ref = self.hide(path)
            keys.append((ref, *direction(sort_by), collation))
        return keys

    def uncollated(self, expr: dict[str, Any], path: Path) -> tuple[dict[str, Any], str | None, Path]:
        if "CollateClause" in expr:
            clause = expr["CollateClause"]
            names = [p["String"]["sval"] for p in clause.get("collname", ()) if "String" in p]
            if self.output_by_expression(expr) is None:
                return clause["arg"], names[-1] if names else None, (*path, "arg")
        return expr, None, path

    def output_by_name_or_position(self, expr: dict[str, Any]) -> Ref | str | None:
        """ORDER BY 2 or ORDER BY name: an output column, as PostgreSQL reads them first; a
        name not among the explicit targets but maybe inside a `*` is returned as a string."""
        position = int_const(expr)
        if position is not None:
            if not 1 <= position <= (self.explicit if self.star is None else 1 << 30):
                raise Refused(f"ORDER BY position {position} is not in select list", "42P10")
            return ("start", position - 1)
        name = bare_name(expr)
        if name is None:
            return None
        for target in self.targets:
            if target.implicit == name and not target.star:
                if target.ref is None:
                    raise Refused(f"ORDER BY {name}: the column's position between two * "
                                   "cannot be told; order by position or list the columns")
                return target.ref
        if self.star is not None:
            return name  # maybe a column of the *: found by name in the RowDescription
        return None

    def output_by_expression(self, expr: dict[str, Any]) -> Ref | None:
        wanted = strip_positions(expr)
        for target in self.targets:
            if not target.star and strip_positions(target.val) == wanted:
                if target.ref is None:
                    return None
                return target.ref
        return None

    # LIMIT / OFFSET

    def bound(self, key: str) -> Bound:
        node = self.node.get(key)
        if node is None:
            return None
        if "TypeCast" in node:
            node = node["TypeCast"]["arg"]
        if "ParamRef" in node:
            number = node["ParamRef"]["number"]
            if param_numbers(self.node).count(number) > 1:
                raise Refused(f"LIMIT/OFFSET parameter ${number} is also used elsewhere in the "
                               "statement: the proxy must send the shards another value for it")
            return Param(number - 1)
        if "A_Const" in node:
            const = node["A_Const"]
            if const.get("isnull"):
                return None
            if "ival" in const:
                return const["ival"].get("ival", 0)
            if "sval" in const:
                text = const["sval"].get("sval", "").strip()
                if text.lstrip("+-").isdigit():
                    return int(text)
        raise Refused("LIMIT and OFFSET must be integer constants or parameters for a query "
                       "over several shards")

    def limits(self, push: bool) -> tuple[Bound, int | Param, bool]:
        """(limit, offset, pushed) with the shard SQL edits and Bind adjustments made."""
        node = self.node
        if node.get("limitOption") == "LIMIT_OPTION_WITH_TIES":
            raise Refused("FETCH FIRST ... WITH TIES cannot be merged across shards yet")
        limit, offset = self.bound("limitCount"), self.bound("limitOffset")
        offset = 0 if offset is None else offset
        if "limitCount" not in node and "limitOffset" not in node:
            return limit, offset, False
        negative = any(isinstance(b, int) and b < 0 for b in (limit, offset))
        if negative:
            return limit, offset, False  # the shards refuse it, with PostgreSQL's message
        if not push:
            self.drop_bounds()
            return limit, offset, False
        if isinstance(limit, int) and isinstance(offset, int):
            if offset:
                self.set_bounds(const_node(limit + offset), None, str(limit + offset), "0")
        elif limit is None and isinstance(offset, int):
            if offset:
                self.set_bounds("keep", None, None, "0")
        elif limit is None:  # OFFSET $n: the shards skip nothing
            self.shard_params.append((offset.index, "zero"))
        elif isinstance(limit, Param) and isinstance(offset, int):
            if offset:
                self.set_bounds("keep", None, None, "0")
                self.shard_params.append((limit.index, "limit"))
        elif isinstance(limit, int) and isinstance(offset, Param):
            # LIMIT $n carries limit + offset
            self.set_bounds(param_node(offset.index), None, f"${offset.index + 1}", "0")
            self.shard_params.append((offset.index, "limit"))
        else:
            assert isinstance(limit, Param) and isinstance(offset, Param)
            self.shard_params.append((limit.index, "limit"))
            self.shard_params.append((offset.index, "zero"))
        return limit, offset, True

    def drop_bounds(self) -> None:
        """No LIMIT/OFFSET on the shards: constants go, parameters stay (every Bind value
        must be used) with values that limit nothing."""
        count, offset = self.node.get("limitCount"), self.node.get("limitOffset")
        keep_count = count is not None and bool(param_numbers(count))
        keep_offset = offset is not None and bool(param_numbers(offset))
        if keep_count:
            self.shard_params.append((param_numbers(count)[0] - 1, "null"))
        if keep_offset:
            self.shard_params.append((param_numbers(offset)[0] - 1, "zero"))
        self.set_bounds("keep" if keep_count else None, "keep" if keep_offset else None)

    def set_bounds(self, count: Any, offset: Any, count_text: str | None = None,
                   offset_text: str | None = None) -> None:
        """Change LIMIT (`count`) and OFFSET on the shards: "keep", None (remove) or a builder
        of the new AST node. When `*_text` are given, the same change as the token to put in
        place of the constant or parameter (OFFSET 0 for none): the text can then be spliced
        instead of deparsed, which costs a hundredth of it."""
        if (count == "keep" or count_text is not None) and (offset == "keep" or offset_text is not None):
            splices = [(key, text) for key, text in (("limitCount", count_text),
                                                     ("limitOffset", offset_text)) if text is not None]
            self.splices.append(splices)

        def edit(stmt: Any) -> None:
            if count != "keep":
                stmt.limitCount = count() if callable(count) else None
            if offset != "keep":
                stmt.limitOffset = offset() if callable(offset) else None
            if stmt.limitCount is None and stmt.limitOffset is None:
                from pglast import enums
                stmt.limitOption = enums.LimitOption.LIMIT_OPTION_DEFAULT
        self.edits.append(edit)

    # plain rows: concat, stream, sort

    def rows(self, sort: list[Any], distinct: bool) -> MergePlan:
        limit, offset, pushed = self.limits(push=True)
        keys = tuple(self.sort_key(*key) for key in sort)
        kind = "sort" if keys else ("stream" if distinct or limit is not None or offset != 0
                                    else "concat")
        return self.finish(kind, sort=keys, limit=limit, offset=offset, distinct=distinct,
                           columns=None if self.star is not None else self.explicit,
                           limit_pushed=pushed)

    def sort_key(self, ref: Ref | str, descending: bool, nulls_first: bool,
                 collation: str | None) -> SortKey:
        if isinstance(ref, str):
            return SortKey(None, descending, nulls_first, name=ref, collation=collation)
        return SortKey(self.position(ref), descending, nulls_first, collation=collation)

    # set operations

    def set_operation(self) -> MergePlan:
        node = self.node
        ops = set_ops(node)
        if any(op in ("SETOP_INTERSECT", "SETOP_EXCEPT") for op, _all in ops) and \
                self.tables.reads_sharded(node):
            raise Refused("INTERSECT and EXCEPT over sharded tables cannot be computed "
                           "shard by shard: a row may be on one shard and its match on another")
        top_distinct = node["op"] == "SETOP_UNION" and not node.get("all")
        if not top_distinct and any(op == "SETOP_UNION" and not every for op, every in ops):
            raise Refused("a UNION (without ALL) inside a UNION ALL cannot be merged across "
                           "shards: write UNION ALL, or UNION at the top")
        for branch in branches(node):
            if self.shape.nested:
                check_subqueries(branch, self.tables)
            what = summarizes(branch)
            if what is not None and self.tables.reads_sharded(branch):
                raise Refused(f"a UNION branch with {what} over a sharded table would be "
                               "computed on each shard separately: move it out of the UNION")
        first = node
        while first.get("op", "SETOP_NONE") != "SETOP_NONE":
            first = first["larg"]
        self.targets = self.read_targets(first.get("targetList", ()))
        sort = []
        for i, wrapper in enumerate(node.get("sortClause", ())):
            sort_by = wrapper["SortBy"]
            expr, collation, _path = self.uncollated(sort_by["node"], ("sortClause", i, "node"))
            ref = self.output_by_name_or_position(expr)
            if ref is None:
                raise Refused("invalid UNION/INTERSECT/EXCEPT ORDER BY clause: only result "
                               "column names can be used", "0A000")
            sort.append((ref, *direction(sort_by), collation))
        return self.rows(sort, top_distinct)

    # aggregates

    def aggregate(self, distinct: bool) -> MergePlan:
        node = self.node
        if any(t.star for t in self.targets) and "groupClause" not in node:
            raise Refused("a * next to aggregates without GROUP BY cannot be merged")
        group_refs = self.group_keys(node.get("groupClause", ()))
        aggregates: list[tuple[Ref, str, Ref | None]] = []
        group_set = set(group_refs)
        for i, target in enumerate(self.targets):
            if target.star:
                continue
            if target.ref is None:
                raise Refused("an output column between two * in an aggregate query: list "
                               "the columns")
            call = self.aggregate_call(target.val)
            if call is not None:
                name, _fields = call
                aggregates.append(self.aggregate_column(name, target.ref, ("targetList", i, "val"),
                                                        target.name or implicit_name(target.val)))
                continue
            if aggregate_calls(target.val):
                raise Refused("an aggregate inside an expression (such as sum(a) / count(b) or "
                               "coalesce(sum(a), 0)) cannot be merged across shards: select the "
                               "aggregates themselves and compute in the application")
            if target.ref in group_set:
                continue
            self.check_carried(target.val, group_refs)
        having, shard_having = self.having(node.get("havingClause"), aggregates)
        sort = self.aggregate_sort(node.get("sortClause", ()), aggregates, group_refs)
        if distinct:
            self.edits.append(drop("distinctClause"))
        group_positions = tuple(dict.fromkeys(self.position(r) for r in group_refs))
        sort_keys = tuple(self.sort_key(*key) for key in sort)
        grouped = "groupClause" in node
        push = (grouped and having is None and not distinct and bool(group_positions)
                and {k.column for k in sort_keys[: len(group_positions)]} == set(group_positions)
                and all(k.column is not None for k in sort_keys))
        limit, offset, pushed = self.limits(push=push)
        if not pushed and "sortClause" in node and not param_numbers(node["sortClause"]):
            self.edits.append(drop("sortClause"))
        if shard_having is not _KEEP:
            self.edits.append(shard_having)
        return self.finish(
            "aggregate", sort=sort_keys, limit=limit, offset=offset, distinct=distinct,
            grouped=grouped, group_keys=group_positions,
            aggregates=tuple(Aggregate(self.position(ref), name,
                                       None if count is None else self.position(count))
                             for ref, name, count in aggregates),
            having=None if having is None else _resolve(having, self.position),
            columns=None if self.star is not None else self.explicit,
            limit_pushed=pushed, check_shard_order=pushed)

    def aggregate_call(self, val: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """A mergeable aggregate call at the top of an expression; refuses the others."""
        if "FuncCall" not in val:
            return None
        fields = val["FuncCall"]
        name = func_name(fields)
        if "over" in fields:
            return None
        if name in OTHER_AGGREGATES or fields.get("agg_within_group"):
            raise Refused(f"{name}() cannot be combined from each shard's partial result: "
                           "run it on one shard (a sharding key)")
        if name not in MERGEABLE:
            if fields.get("agg_star") or "agg_filter" in fields or "agg_order" in fields \
                    or fields.get("agg_distinct"):
                raise Refused(f"the aggregate {name or 'function'}() is not one the proxy can "
                               "merge across shards (count, sum, min, max, avg, bool_and, "
                               "bool_or)")
            return None
        if fields.get("agg_distinct") and name not in DISTINCT_SAFE:
            raise Refused(f"{name}(DISTINCT ...) cannot be merged across shards: a value may "
                           "be on several shards (count the distinct values in the "
                           "application, or GROUP BY the value)")
        if fields.get("func_variadic"):
            raise Refused(f"{name}(VARIADIC ...) cannot be merged across shards")
        args = fields.get("args", ())
        if name == "count" and fields.get("agg_star"):
            pass
        elif len(args) != 1:
            raise Refused(f"{name}() with {len(args)} arguments cannot be merged across shards")
        if aggregate_calls(args) or has_window(args):
            raise Refused("nested aggregate or window calls cannot be merged across shards")
        return ("bool_and" if name == "every" else name), fields

    def hidden_aggregate(self, name: str, path: Path) -> tuple[Ref, str, Ref | None]:
        """An aggregate the shards return in hidden columns (for ORDER BY or HAVING)."""
        if name != "avg":
            return self.hide(path), name, None
        total = self.hide(path, as_function="sum")
        return total, "avg", self.hide(path, as_function="count")

    def aggregate_column(self, name: str, ref: Ref, path: Path,
                         output_name: str | None) -> tuple[Ref, str, Ref | None]:
        if name != "avg":
            return ref, name, None
        count = self.hide(path, as_function="count")
        column_name = output_name or "avg"

        def edit(stmt: Any, _path: Path = path) -> None:
            rename(ast_at(stmt, _path), "sum")
            target = ast_at(stmt, _path[:-1])
            target.name = column_name  # the client sees the column as avg
        self.edits.append(edit)
        return ref, "avg", count

    def group_keys(self, clause: Sequence[dict[str, Any]]) -> list[Ref]:
        refs: list[Ref] = []
        for i, item in enumerate(clause):
            if "GroupingSet" in item:
                raise Refused("GROUPING SETS, ROLLUP and CUBE cannot be merged across shards yet")
            if aggregate_calls(item):
                raise Refused("aggregate functions are not allowed in GROUP BY", "42803")
            ref = self.group_ref(item, ("groupClause", i))
            self.group_items.setdefault(ref, item)
            refs.append(ref)
        return refs

    def group_ref(self, item: dict[str, Any], path: Path) -> Ref:
        position = int_const(item)
        if position is not None:
            if not 1 <= position <= (self.explicit if self.star is None else 1 << 30):
                raise Refused(f"GROUP BY position {position} is not in select list", "42P10")
            if self.star is not None and position > (self.star or 0):
                raise Refused("GROUP BY a position after a * cannot be merged: name the column")
            return ("start", position - 1)
        name = bare_name(item)
        if name is not None:
            # GROUP BY prefers an input column: an output column that is that column first.
            for target in self.targets:
                if not target.star and last_name(target.val) == name and \
                        (target.name is None or target.name == name) and target.ref is not None:
                    return target.ref
            for target in self.targets:
                if target.name == name and target.ref is not None:
                    return target.ref
        ref = self.output_by_expression(item)
        if ref is not None:
            return ref
        return self.hide(path)

    def check_carried(self, val: dict[str, Any], group_refs: list[Ref]) -> None:
        """An output column that is neither a group key nor an aggregate: its value is the
        same for every row of a group (PostgreSQL checked that), so any shard's will do. A
        function call over a column that is not a group key may be a user-defined aggregate,
        which the proxy cannot combine: refused."""
        keys = [strip_positions(self.key_expression(ref)) for ref in group_refs]
        for node_type, fields in walk(val):
            if node_type == "FuncCall" and func_name(fields) in SET_RETURNING:
                raise Refused(f"a set-returning function ({func_name(fields)}) next to "
                               "aggregates cannot be merged across shards")
            if node_type != "FuncCall":
                continue
            for inner_type, inner in walk(fields.get("args", [])):
                if inner_type == "ColumnRef" and strip_positions({"ColumnRef": inner}) not in keys and \
                        not any(last_name(k) == last_name({"ColumnRef": inner}) for k in keys if k):
                    raise Refused(
                        f"the output expression calling {func_name(fields) or 'a function'}() "
                        "on a column that is not in GROUP BY may be an aggregate the proxy "
                        "does not know: add the column to GROUP BY")

    def key_expression(self, ref: Ref) -> dict[str, Any]:
        for target in self.targets:
            if target.ref == ref and not target.star:
                return target.val
        return self.group_items.get(ref, {})

    def aggregate_sort(self, clause: Sequence[dict[str, Any]], aggregates: list[Any],
                       group_refs: list[Ref]) -> list[Any]:
        keys = []
        for i, wrapper in enumerate(clause):
            sort_by = wrapper["SortBy"]
            expr, collation, path = self.uncollated(sort_by["node"], ("sortClause", i, "node"))
            ref = self.output_by_name_or_position(expr)
            if isinstance(ref, str):
                ref = None  # maybe a column of the *: a hidden copy of it is the same value
            if ref is None:
                ref = self.output_by_expression(expr)
            if ref is None:
                call = self.aggregate_call(expr)
                if call is not None:
                    ref, name, count = self.hidden_aggregate(call[0], path)
                    aggregates.append((ref, name, count))
                elif aggregate_calls(expr):
                    raise Refused("ORDER BY an expression over aggregates cannot be merged "
                                   "across shards: select the aggregates and order by them")
                else:
                    self.check_carried(expr, group_refs)
                    ref = self.hide(path)
            keys.append((ref, *direction(sort_by), collation))
        return keys

    # HAVING

    def having(self, clause: dict[str, Any] | None, aggregates: list[Any]) -> tuple[Any, Any]:
        """(the condition the proxy evaluates, the edit of the shards' HAVING)."""
        if clause is None:
            return None, _KEEP
        conjuncts: list[tuple[dict[str, Any], Path]] = []
        if "BoolExpr" in clause and clause["BoolExpr"].get("boolop") == "AND_EXPR":
            for i, arg in enumerate(clause["BoolExpr"].get("args", ())):
                conjuncts.append((arg, ("havingClause", "args", i)))
        else:
            conjuncts.append((clause, ("havingClause",)))
        ours: list[Any] = []
        keep: list[tuple[Path, bool]] = []  # (path, neutralized: "(c) OR true")
        for expr, path in conjuncts:
            if not aggregate_calls(expr):
                keep.append((path, False))  # a condition on the group keys: each shard applies it
                continue
            ours.append(self.condition(expr, path, aggregates))
            if param_numbers(expr):
                keep.append((path, True))  # its parameters must stay in use
        having = ours[0] if len(ours) == 1 else ("and", tuple(ours))
        if not ours:
            return None, _KEEP
        if len(keep) == len(conjuncts) and not any(n for _p, n in keep):
            return having, _KEEP

        def edit(stmt: Any, _keep: list[tuple[Path, bool]] = keep) -> None:
            from pglast import ast, enums
            parts = []
            for path, neutral in _keep:
                expr = copy.deepcopy(ast_at(stmt, path))
                if neutral:
                    expr = ast.BoolExpr(boolop=enums.BoolExprType.OR_EXPR, args=(
                        expr, ast.A_Const(isnull=False, val=ast.Boolean(boolval=True))))
                parts.append(expr)
            if not parts:
                stmt.havingClause = None
            elif len(parts) == 1:
                stmt.havingClause = parts[0]
            else:
                stmt.havingClause = ast.BoolExpr(boolop=enums.BoolExprType.AND_EXPR, args=tuple(parts))
        return having, edit

    def condition(self, expr: dict[str, Any], path: Path, aggregates: list[Any]) -> tuple[Any, ...]:
        node_type, fields = _only_item(expr)
        if node_type == "BoolExpr":
            args = [self.condition(a, (*path, "args", i), aggregates)
                    for i, a in enumerate(fields.get("args", ()))]
            op = fields.get("boolop")
            if op == "NOT_EXPR":
                return ("not", args[0])
            return ("and" if op == "AND_EXPR" else "or", tuple(args))
        if node_type == "NullTest":
            operand = self.operand(fields["arg"], (*path, "arg"), aggregates)
            return ("null", operand, fields.get("nulltesttype") == "IS_NULL")
        if node_type == "A_Expr":
            kind = fields.get("kind")
            names = [p["String"]["sval"] for p in fields.get("name", ()) if "String" in p]
            op = names[-1] if names else ""
            left = self.operand(fields["lexpr"], (*path, "lexpr"), aggregates) \
                if "lexpr" in fields else None
            if kind == "AEXPR_OP" and op in _COMPARISONS and left is not None:
                right = self.operand(fields["rexpr"], (*path, "rexpr"), aggregates)
                return ("cmp", _COMPARISONS[op], left, right)
            if kind in ("AEXPR_BETWEEN", "AEXPR_NOT_BETWEEN") and left is not None:
                low, high = (self.operand(item, (*path, "rexpr", i), aggregates)
                             for i, item in enumerate(fields["rexpr"]["List"]["items"]))
                between = ("and", (("cmp", ">=", left, low), ("cmp", "<=", left, high)))
                return between if kind == "AEXPR_BETWEEN" else ("not", between)
            if kind == "AEXPR_IN" and left is not None and op in ("=", "<>"):
                items = [self.operand(item, (*path, "rexpr", i), aggregates)
                         for i, item in enumerate(fields["rexpr"]["List"]["items"])]
                if op == "=":
                    return ("or", tuple(("cmp", "=", left, item) for item in items))
                return ("and", tuple(("cmp", "<>", left, item) for item in items))
        raise Refused("this HAVING condition on aggregates cannot be evaluated by the proxy "
                       "after merging shards: use comparisons of aggregates and GROUP BY "
                       "columns with constants, combined with AND, OR, NOT")

    def operand(self, expr: dict[str, Any], path: Path, aggregates: list[Any]) -> tuple[str, Any]:
        if "TypeCast" in expr and ("A_Const" in expr["TypeCast"]["arg"]
                                   or "ParamRef" in expr["TypeCast"]["arg"]):
            return self.operand(expr["TypeCast"]["arg"], (*path, "arg"), aggregates)
        if "A_Const" in expr:
            const = expr["A_Const"]
            if const.get("isnull"):
                return ("const", None)
            for key, inner in (("ival", "ival"), ("fval", "fval"), ("sval", "sval")):
                if key in const:
                    return ("const", str(const[key].get(inner, 0)))
            if "boolval" in const:
                return ("const", "true" if const["boolval"].get("boolval") else "false")
        if "ParamRef" in expr:
            return ("param", expr["ParamRef"]["number"] - 1)
        ref = self.output_by_expression(expr)
        if ref is not None:
            return ("col", ref)
        call = self.aggregate_call(expr)
        if call is not None:
            ref, name, count = self.hidden_aggregate(call[0], path)
            aggregates.append((ref, name, count))
            return ("col", ref)
        wanted = strip_positions(expr)
        for ref, item in self.group_items.items():
            if strip_positions(item) == wanted:
                return ("col", ref)
        name = bare_name(expr)
        if name is not None:
            for target in self.targets:
                if not target.star and (last_name(target.val) == name or target.name == name) \
                        and target.ref is not None:
                    return ("col", target.ref)
        raise Refused("this HAVING condition on aggregates cannot be evaluated by the proxy "
                       "after merging shards: compare aggregates and GROUP BY columns with "
                       "constants")


_KEEP = object()


def _resolve(condition: Any, position: Callable[[Ref], int]) -> Any:
    """A HAVING tree with its column references turned into positions."""
    kind = condition[0]
    if kind in ("and", "or"):
        return (kind, tuple(_resolve(c, position) for c in condition[1]))
    if kind == "not":
        return ("not", _resolve(condition[1], position))
    if kind == "null":
        return ("null", _resolve(condition[1], position), condition[2])
    if kind == "cmp":
        return ("cmp", condition[1], _resolve(condition[2], position),
                _resolve(condition[3], position))
    if kind == "col":
        return ("col", position(condition[1]))
    return condition


# --- per execution -------------------------------------------------------------------------

_INT_LENGTHS = {2: "!h", 4: "!i", 8: "!q"}
_INT_MAX = {2: (1 << 15) - 1, 4: (1 << 31) - 1, 8: (1 << 63) - 1}


def bind_bound(bound: Bound, params: Sequence[bytes | None], formats: Sequence[int]) -> int | None:
    """A LIMIT/OFFSET's value for one execution: None when it is NULL (no limit) or cannot
    be read (the shards then refuse the statement themselves)."""
    if bound is None or isinstance(bound, int):
        return bound
    index = bound.index
    if index >= len(params) or params[index] is None:
        return None
    value = params[index]
    assert value is not None
    if parameter_format(formats, index):
        if len(value) not in _INT_LENGTHS:
            return None
        return int.from_bytes(value, "big", signed=True)
    try:
        return int(value)
    except ValueError:
        return None


def shard_parameters(plan: MergePlan, params: Sequence[bytes | None],
                     formats: Sequence[int] = ()) -> tuple[Sequence[bytes | None], Sequence[int]]:
    """The Bind values (and their format codes) the shards get for one execution of the plan
    (unchanged, the same objects, when nothing changes): LIMIT $n OFFSET $m runs as LIMIT
    n+m OFFSET 0 on the shards; an aggregate query's limit runs as LIMIT NULL. Values that
    are negative or cannot be read go unchanged: the shards refuse them."""
    if not plan.shard_params:
        return params, formats
    limit = bind_bound(plan.limit, params, formats)
    offset = bind_bound(plan.offset, params, formats)
    if (limit is not None and limit < 0) or (offset is not None and offset < 0):
        return params, formats
    for index, _action in plan.shard_params:
        if index >= len(params) or (params[index] is not None and
                                    bind_bound(Param(index), params, formats) is None):
            return params, formats  # unreadable: the shards report it
    out = list(params)
    for index, action in plan.shard_params:
        binary = parameter_format(formats, index) == 1
        width = len(params[index] or b"") if binary else 8
        if action == "null":
            value = None
        elif action == "zero":
            value = 0
        else:
            value = None if limit is None else limit + (offset or 0)
        if value is None:
            out[index] = None
        elif binary:
            width = width if width in _INT_LENGTHS else 8
            out[index] = min(value, _INT_MAX[width]).to_bytes(width, "big", signed=True)
        else:
            out[index] = str(value).encode("ascii")
    return out, formats


def shard_result_formats(plan: MergePlan, formats: Sequence[int]) -> Sequence[int]:
    """The result format codes for the shards' Bind: one per column when the client gave
    one per column, with text for the hidden columns (else unchanged)."""
    if plan.hidden and len(formats) > 1:
        return (*formats, *([0] * plan.hidden))
    return formats
