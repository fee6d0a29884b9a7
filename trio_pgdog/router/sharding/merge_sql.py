"""Reading a SELECT's JSON parse tree for the merge planner (merge_plan.py), and the few AST
edits a rewrite for the shards needs: sans-IO helpers, no planning decisions but one, which
subqueries summarize sharded rows on their own (`check_subqueries`).

The tree is `parse_sql_json`'s, walked as dicts and lists; nodes are {"NodeType": {fields}}.
The AST helpers (`ast_at`, `rename`, ...) work on pglast's Python AST, built only when the
shards must run a rewritten text.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import attrs

from ..classify import _only_item

Table = tuple[str | None, str]
Path = tuple[str | int, ...]  # a path in the AST (JSON keys without node type names)
FEATURE_NOT_SUPPORTED = "0A000"


class Refused(Exception):
    """A statement whose merge would be wrong: (message, SQLSTATE)."""

    def __init__(self, message: str, sqlstate: str = FEATURE_NOT_SUPPORTED) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message


# Aggregates whose per-shard results combine exactly.
MERGEABLE = frozenset({"count", "sum", "min", "max", "avg", "bool_and", "bool_or", "every"})
# ... of which these give the same answer over distinct values.
DISTINCT_SAFE = frozenset({"min", "max", "bool_and", "bool_or", "every"})
# Built-in aggregates that do not combine from per-shard results (refused by name).
OTHER_AGGREGATES = frozenset({
    "string_agg", "array_agg", "json_agg", "jsonb_agg", "json_agg_strict", "jsonb_agg_strict",
    "json_object_agg", "jsonb_object_agg", "json_object_agg_strict", "json_object_agg_unique",
    "json_object_agg_unique_strict", "jsonb_object_agg_strict", "jsonb_object_agg_unique",
    "jsonb_object_agg_unique_strict", "xmlagg", "percentile_cont", "percentile_disc", "mode",
    "rank", "dense_rank", "percent_rank", "cume_dist", "stddev", "stddev_pop", "stddev_samp",
    "variance", "var_pop", "var_samp", "corr", "covar_pop", "covar_samp", "regr_avgx",
    "regr_avgy", "regr_count", "regr_intercept", "regr_r2", "regr_slope", "regr_sxx",
    "regr_sxy", "regr_syy", "bit_and", "bit_or", "bit_xor", "range_agg",
    "range_intersect_agg", "any_value", "grouping",
})
AGGREGATES = MERGEABLE | OTHER_AGGREGATES
# Set-returning functions: after aggregation they multiply a group's row per shard.
SET_RETURNING = frozenset({
    "generate_series", "generate_subscripts", "unnest", "json_array_elements",
    "jsonb_array_elements", "json_array_elements_text", "jsonb_array_elements_text",
    "json_each", "jsonb_each", "json_each_text", "jsonb_each_text", "json_object_keys",
    "jsonb_object_keys", "json_populate_recordset", "jsonb_populate_recordset",
    "json_to_recordset", "jsonb_to_recordset", "jsonb_path_query", "regexp_matches",
    "regexp_split_to_table", "string_to_table", "pg_get_keywords", "pg_options_to_table",
})
# --- small JSON helpers --------------------------------------------------------------------


_POSITIONS = frozenset({"location", "rexpr_list_start", "rexpr_list_end", "stmt_location",
                        "stmt_len"})


def strip_positions(node: Any) -> Any:
    """A node without its source locations, for comparing expressions."""
    if isinstance(node, dict):
        return {k: strip_positions(v) for k, v in node.items() if k not in _POSITIONS}
    if isinstance(node, list):
        return [strip_positions(v) for v in node]
    return node


def func_name(call: dict[str, Any]) -> str | None:
    """The lower-case name of a function call, None when schema-qualified by another schema
    than pg_catalog (a user's function: not one the proxy knows)."""
    names = [part["String"]["sval"] for part in call.get("funcname", ()) if "String" in part]
    if not names:
        return None
    if len(names) > 1 and names[-2] != "pg_catalog":
        return None
    return names[-1].lower()


_SUBQUERIES = frozenset({"SubLink", "SelectStmt"})


def walk(node: Any, skip_subqueries: bool = True):
    """Every (type, fields) node under `node` (in no particular order), not entering
    subqueries unless asked to."""
    stack = [node]
    pop, push = stack.pop, stack.append
    while stack:
        item = pop()
        if type(item) is dict:
            for key, value in item.items():
                kind = type(value)
                if kind is dict:
                    if skip_subqueries and key in _SUBQUERIES:
                        continue
                    if key[:1].isupper():
                        yield key, value
                    push(value)
                elif kind is list:
                    push(value)
        elif type(item) is list:
            stack.extend(item)


def has_window(node: Any) -> bool:
    return any(t == "FuncCall" and "over" in f for t, f in walk(node))


def aggregate_calls(node: Any) -> list[tuple[str | None, dict[str, Any]]]:
    out = []
    for node_type, fields in walk(node):
        if node_type != "FuncCall" or "over" in fields:
            continue
        name = func_name(fields)
        if name in AGGREGATES or fields.get("agg_star") or fields.get("agg_within_group") \
                or "agg_filter" in fields or "agg_order" in fields or fields.get("agg_distinct"):
            out.append((name, fields))
    return out


def param_numbers(node: Any) -> list[int]:
    return [fields["number"] for t, fields in walk(node, skip_subqueries=False)
            if t == "ParamRef" and "number" in fields]


def int_const(node: dict[str, Any]) -> int | None:
    if "A_Const" in node and "ival" in node["A_Const"]:
        return node["A_Const"]["ival"].get("ival", 0)
    return None


def bare_name(node: dict[str, Any]) -> str | None:
    if "ColumnRef" in node:
        fields = node["ColumnRef"].get("fields", ())
        if len(fields) == 1 and "String" in fields[0]:
            return fields[0]["String"]["sval"]
    return None


def last_name(node: dict[str, Any]) -> str | None:
    if "ColumnRef" in node:
        fields = node["ColumnRef"].get("fields", ())
        if fields and "String" in fields[-1]:
            return fields[-1]["String"]["sval"]
    return None


def implicit_name(val: dict[str, Any]) -> str | None:
    """PostgreSQL's column name for an unaliased output expression (FigureColname), for the
    shapes ORDER BY can name."""
    node_type, fields = _only_item(val)
    if node_type == "ColumnRef":
        return last_name(val)
    if node_type == "FuncCall":
        names = [p["String"]["sval"] for p in fields.get("funcname", ()) if "String" in p]
        return names[-1] if names else None
    if node_type == "TypeCast":
        inner = implicit_name(fields["arg"])
        if inner is not None:
            return inner
        names = [p["String"]["sval"] for p in fields["typeName"].get("names", ()) if "String" in p]
        return names[-1] if names else None
    if node_type == "CoalesceExpr":
        return "coalesce"
    if node_type == "CaseExpr":
        return "case"
    return None


def is_star(val: dict[str, Any]) -> bool:
    if "ColumnRef" in val:
        fields = val["ColumnRef"].get("fields", ())
        return bool(fields) and "A_Star" in fields[-1]
    return False


# --- subqueries: per-shard summaries -------------------------------------------------------


@attrs.frozen
class Shape:
    nested: bool  # a SELECT inside the statement (subquery, CTE)
    calls: bool  # a function call somewhere
    ctes: bool  # a WITH somewhere


class Tables:
    """Which query blocks read sharded tables."""

    def __init__(self, root: dict[str, Any], sharded: Collection[Table] | None,
                 shape: Shape) -> None:
        self.sharded = None if sharded is None else {(s, n) for s, n in sharded}
        self.sharded_names = None if sharded is None else {n for _s, n in sharded}
        self.ctes: dict[str, dict[str, Any]] = {}
        for node_type, fields in walk(root, skip_subqueries=False) if shape.ctes else ():
            if node_type == "CommonTableExpr":
                self.ctes[fields["ctename"]] = fields["ctequery"]
        self._cte_reads: dict[str, bool] = {}

    def reads_sharded(self, block: Any, seen: frozenset[str] = frozenset()) -> bool:
        for node_type, fields in walk(block, skip_subqueries=False):
            if node_type != "RangeVar":
                continue
            schema, name = fields.get("schemaname"), fields["relname"]
            if schema is None and name in self.ctes:
                if name in seen:
                    continue
                if name not in self._cte_reads:
                    self._cte_reads[name] = self.reads_sharded(self.ctes[name], seen | {name})
                if self._cte_reads[name]:
                    return True
                continue
            if self.sharded is None:
                return True
            if (schema, name) in self.sharded or (schema is not None and (None, name) in self.sharded) \
                    or (schema is None and name in self.sharded_names):
                return True
        return False


def summarizes(block: dict[str, Any]) -> str | None:
    """What makes a query block's result depend on having all the rows, if anything."""
    op = block.get("op", "SETOP_NONE")
    if op != "SETOP_NONE" and (op != "SETOP_UNION" or not block.get("all")):
        return "a set operation (UNION, INTERSECT, EXCEPT)"
    if "groupClause" in block or "havingClause" in block:
        return "GROUP BY"
    if "distinctClause" in block:
        return "DISTINCT"
    if "limitCount" in block or "limitOffset" in block:
        return "LIMIT/OFFSET"
    own = [block.get(k) for k in ("targetList", "sortClause")]
    if has_window(own):
        return "a window function"
    if aggregate_calls(own):
        return "an aggregate"
    return None


def _own_names(block: Any) -> set[str]:
    """Aliases and table names a query block (and the blocks inside it) can qualify with."""
    names: set[str] = set()
    for node_type, fields in walk(block, skip_subqueries=False):
        if node_type == "RangeVar":
            names.add(fields.get("alias", {}).get("aliasname") or fields["relname"])
            if "alias" in fields:
                names.add(fields["relname"])
        elif node_type in ("RangeSubselect", "RangeFunction", "JoinExpr") and "alias" in fields:
            names.add(fields["alias"]["aliasname"])
        elif node_type == "CommonTableExpr":
            names.add(fields["ctename"])
    return names


def _correlated(block: dict[str, Any]) -> bool:
    """The block qualifies a column with a name it does not define: it refers to the query
    around it, row by row."""
    own = _own_names(block)
    for node_type, fields in walk(block, skip_subqueries=False):
        if node_type == "ColumnRef":
            parts = fields.get("fields", ())
            if len(parts) >= 2 and "String" in parts[0]:
                qualifier = parts[-2]["String"]["sval"] if "String" in parts[-2] else None
                if qualifier is not None and qualifier not in own:
                    return True
    return False


def check_subqueries(top: dict[str, Any], tables: Tables) -> None:
    """Refuse a subquery that summarizes sharded rows by itself."""
    for block, correlatable in _nested_blocks(top):
        what = summarizes(block)
        if what is None:
            continue
        if correlatable and _correlated(block):
            continue
        if not tables.reads_sharded(block):
            continue
        raise Refused(
            f"a subquery with {what} over a sharded table would be computed on each shard "
            "separately, giving a wrong result: run it on one shard (a sharding key) or "
            "move it to the outer query")


def _nested_blocks(top: dict[str, Any]):
    """(query block, may be correlated) for every SELECT inside the statement."""
    def inner(node: Any, correlatable: bool):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "SelectStmt":
                    yield value, correlatable
                    yield from inner(value, correlatable)
                elif key == "SubLink":
                    yield from inner(value, True)
                elif key == "RangeSubselect":
                    yield from inner(value, bool(value.get("lateral")))
                elif key in ("larg", "rarg") and isinstance(value, dict):
                    yield value, False
                    yield from inner(value, False)
                else:
                    yield from inner(value, correlatable)
        elif isinstance(node, list):
            for item in node:
                yield from inner(item, correlatable)
    for key, value in top.items():
        if key in ("larg", "rarg"):
            continue  # a set operation's branches: checked as such by the planner
        yield from inner(value, False)


def direction(sort_by: dict[str, Any]) -> tuple[bool, bool]:
    """(descending, nulls_first) with PostgreSQL's defaults."""
    direction = sort_by.get("sortby_dir", "SORTBY_DEFAULT")
    if direction == "SORTBY_USING":
        ops = [p["String"]["sval"] for p in sort_by.get("useOp", ()) if "String" in p]
        if ops and ops[-1] in ("<", ">"):
            descending = ops[-1] == ">"
        else:
            raise Refused("ORDER BY ... USING an operator other than < or > cannot be merged")
    else:
        descending = direction == "SORTBY_DESC"
    nulls = sort_by.get("sortby_nulls", "SORTBY_NULLS_DEFAULT")
    nulls_first = descending if nulls == "SORTBY_NULLS_DEFAULT" else nulls == "SORTBY_NULLS_FIRST"
    return descending, nulls_first


def set_ops(node: dict[str, Any]) -> list[tuple[str, bool]]:
    op = node.get("op", "SETOP_NONE")
    if op == "SETOP_NONE":
        return []
    return [(op, bool(node.get("all"))), *set_ops(node["larg"]), *set_ops(node["rarg"])]


def branches(node: dict[str, Any]) -> list[dict[str, Any]]:
    if node.get("op", "SETOP_NONE") == "SETOP_NONE":
        return [node]
    return branches(node["larg"]) + branches(node["rarg"])


# --- AST edits (only when the shards run something else) -------------------------------------


def ast_at(stmt: Any, path: Path) -> Any:
    node = stmt
    for step in path:
        node = node[step] if isinstance(step, int) else getattr(node, step)
    return node


def rename(call: Any, name: str) -> None:
    from pglast import ast
    names = tuple(call.funcname)
    call.funcname = (*names[:-1], ast.String(sval=name))


def drop(attribute: str) -> Callable[[Any], None]:
    def edit(stmt: Any) -> None:
        setattr(stmt, attribute, None)
    return edit


def const_node(value: int) -> Callable[[], Any]:
    def build() -> Any:
        from pglast import ast
        return ast.A_Const(isnull=False, val=ast.Integer(ival=value))
    return build


def param_node(index: int) -> Callable[[], Any]:
    def build() -> Any:
        from pglast import ast
        return ast.ParamRef(number=index + 1)
    return build

