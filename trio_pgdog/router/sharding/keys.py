"""Where a statement must run on a sharded database: sans-IO, once per SQL text, plus a cheap
per-execution step that reads parameter values.

`analyze(sql, schema)` parses the text with `parse_sql_json` (never Python AST objects) and walks
the JSON into `ShardingFacts`: the statement's kind, the tables it touches (sharded or
omnisharded), its *route* (a small formula, see routes.py, with literals already turned into
shards), the keys of an INSERT's rows, hints, and what makes it impossible to run correctly
(`error`). The caller caches the facts per text (`FactsCache`). `shards_for(facts, schema,
params, formats)` reads the Bind values the route needs and returns the shards to run on.

How the route is found. A query's rows come from the shards its FROM items' rows come from,
narrowed by conditions that hold only on some shards:
  - a sharded table's rows differ on each shard (ALL); an omnisharded table's are the same
    everywhere (ANY: one shard is enough);
  - a key equality (``key = 5``, ``5 = t.key``, ``key = $1``, ``key IN (...)``,
    ``key = ANY($1)``, ``key = ANY('{...}')``, ``key IS NULL``) on a sharded table of the query,
    or of a query around it, holds only on the key's shard. Conditions combine with AND
    (intersection) and OR (union); any other condition restricts nothing;
  - only positions that filter the rows count: WHERE, the ON of an inner join not under the
    nullable side of an outer join, and EXISTS / IN / ANY subqueries there. The select list, the
    nullable side of an outer join, NOT, HAVING restrict nothing; a subquery there over sharded
    rows makes the query's rows differ by shard;
  - subqueries in FROM and CTEs carry their own route to where they are used; UNION unites,
    INTERSECT intersects, EXCEPT keeps its left side; a recursive CTE is where its first part is;
  - an UPDATE, DELETE or data-modifying CTE runs where the rows it changes are (a write to an
    omnisharded table: everywhere); an INSERT where its rows' keys belong.

Being conservative: a condition it cannot read restricts nothing, so the statement runs on more
shards, never fewer. A key equality no row can satisfy (``key = NULL``) leaves no shard: any one
shard answers then (the empty answer is the same everywhere).

Measured with timeit on this machine (2-core Xeon @ 2.50GHz, Python 3.11.7, pglast 8.8) while
other work loaded it (classify, ~31 µs for a one-table SELECT on a quiet machine, took 68 µs),
so read them against classify, measured alongside (best of 15 interleaved runs):
  - `analyze`, once per text, costs about what `classify` does: 78 µs vs 68 µs for
    ``SELECT * FROM orders WHERE customer_id = $1``; 260 µs vs 267 µs for a CTE, a 3-table join
    and two IN lists. Parsing (parse_sql_json + json.loads) is a third of it.
  - per execution: a `FactsCache` hit ~0.2 µs; hit + `shards_for` with one text parameter
    ~0.8 µs (one binary int8 parameter ~1.2-1.6 µs); a 4-row INSERT with parameters,
    `shards_for` + `insert_rows_by_shard` ~12-20 µs; `split_insert` ~4-7 µs cached,
    ~160 µs the first time for a text (pglast's scanner).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import attrs
from pglast.parser import ParseError, parse_sql_json

from ..classify import WRITING_FUNCTIONS, _only_item, _top_level, _Walker
from .hashing import int_key_hash
from .hints import CommentHints, Setting, comment_hints, key_shard, setting_of
from .literals import KEY_CATEGORY, NO_MATCH, NULL, key_hash, value_of
from .routes import ALL, ANY, TRUE, Route, ShardingError, depends, evaluate, every, restrict, some
from .schema import ShardingSchema
from .values import BadKey, parse_text_array

__all__ = ["FactsCache", "Setting", "ShardingError", "ShardingFacts", "analyze",
           "insert_rows_by_shard", "shards_for"]

Table = tuple[str | None, str]

_DML = ("SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt")
# Statements whose every table the analysis visits (the others get classify's walker).
_OWN_WALK = frozenset((*_DML, "CopyStmt"))
# Subtrees with no subquery, column or table in them.
_SKIP = frozenset({"A_Const", "ParamRef", "typeName", "String", "Integer", "Float", "A_Star",
                   "Boolean", "alias"})
# What `visit` looks at rather than walks through.
_SPECIAL = frozenset({"SubLink", "ColumnRef", "FuncCall", *_DML})


@attrs.frozen
class ShardingFacts:
    """What sharding needs to know about one SQL text (one or more statements)."""

    kind: str  # classify's: select, insert, update, delete, merge, copy, ddl, transaction, set, ...
    writes: bool  # classify's: needs a primary
    parse_ok: bool
    statements: int
    tables: tuple[Table, ...]  # every table touched, (schema or None, name)
    sharded_tables: tuple[Table, ...]  # of them, those sharded (or maybe: see docs/sharding.md)
    omnisharded_tables: tuple[Table, ...]  # of them, those on every shard in full
    # Reads omnisharded tables only (or none): any one shard answers. shards_for picks
    # `any_shard`; the session may spread these, or keep one shard for locks and sequences.
    omnisharded_read: bool
    # Writes an omnisharded table: it runs on every shard, and every shard answers the same.
    omnisharded_write: bool
    route: Route = attrs.field(repr=False)
    # For an INSERT ... VALUES the proxy may split: each row's key (a one-shard set, or a
    # parameter reference). None otherwise.
    insert_keys: tuple[Route, ...] | None = attrs.field(repr=False)
    needs_column_order: bool  # INSERT / COPY FROM into a sharded table without a column list
    copy_key_index: int | None  # COPY FROM: the key's position in the column list
    error: str | None  # SQLSTATE when the statement cannot be run correctly
    reason: str  # its message
    hint_overrides_error: bool  # a shard hint makes the statement runnable (it names the shard)
    shard_hint: int | None  # from /* pgdog_shard: N */ or /* pgdog_sharding_key: K */
    key_data_type: str | None  # the key type a pgdog.sharding_key hint is read as
    setting: Setting | None  # SET/RESET pgdog.shard, pgdog.sharding_key; RESET ALL


# --- scopes: what names a query level can see ---------------------------------


class _Item:
    """One FROM item (or DML target) and, for a table, its sharding key."""

    __slots__ = ("dtype", "key", "name", "named", "plain", "table")

    def __init__(self, name: str | None, table: Table | None = None,
                 key: tuple[str, str, bool] | None = None, plain: bool = False) -> None:
        self.name = name  # the alias, or the table's name
        self.table = table
        self.key, self.dtype, self.named = key if key is not None else (None, None, False)
        self.plain = plain  # a table without an alias: schema.table.column reaches it


class _Scope:
    __slots__ = ("items", "parent")

    def __init__(self, parent: _Scope | None) -> None:
        self.items: list[_Item] = []
        self.parent = parent


def _alias(node: dict[str, Any]) -> str | None:
    return node.get("alias", {}).get("aliasname")


def _target_names(targets: Sequence[dict[str, Any]]) -> list[str]:
    return [t["ResTarget"].get("name", "") for t in targets if "ResTarget" in t]


def _display(table: Table) -> str:
    return f"{table[0]}.{table[1]}" if table[0] else table[1]


# --- the walk ------------------------------------------------------------------


class _Analyzer:
    def __init__(self, schema: ShardingSchema, single: bool) -> None:
        self.schema = schema
        self.shards = schema.shards
        self.anywhere = schema.anywhere_column
        self.single = single  # one statement in the text: an INSERT may be split
        self.seen: set[Table] = set()  # tables shown to have the table-less key column
        self.effects: list[Route] = []
        self.error: tuple[str, str, bool] | None = None
        self.omni_write = False
        self.insert_keys: tuple[Route, ...] | None = None
        self.needs_column_order = False
        self.copy_key_index: int | None = None
        self.top = True  # the next INSERT seen is the statement itself, not one inside WITH
        # classify's notion of tables and writes, found on the way (its walker is not run again)
        self.tables: dict[Table, None] = {}
        self.writes = False

    def fail(self, sqlstate: str, message: str, *, overridable: bool = True) -> None:
        # The first problem is reported, but one a hint cannot fix beats one it can.
        if self.error is None or (self.error[2] and not overridable):
            self.error = (sqlstate, message, overridable)

    # statements

    def statement(self, node_type: str, node: dict[str, Any], outer: _Scope | None,
                  ctes: dict[str, Route]) -> Route:
        if node_type == "SelectStmt":
            self.top = False
            return self.select(node, outer, ctes)
        if node_type == "InsertStmt":
            return self.insert(node, outer, ctes)
        self.top = False
        if node_type == "UpdateStmt":
            return self.update(node, outer, ctes)
        if node_type == "DeleteStmt":
            return self.delete(node, outer, ctes)
        if node_type == "MergeStmt":
            return self.merge(node, outer, ctes)
        return ALL

    def wrapped(self, wrapper: dict[str, Any], outer: _Scope | None, ctes: dict[str, Route]) -> Route:
        node_type, node = _only_item(wrapper)
        return self.statement(node_type, node, outer, ctes)

    def with_clause(self, clause: dict[str, Any] | None, outer: _Scope | None,
                    ctes: dict[str, Route]) -> dict[str, Route]:
        if not clause:
            return ctes
        top, self.top = self.top, False
        ctes = dict(ctes)
        entries = [c["CommonTableExpr"] for c in clause.get("ctes", ())]
        recursive = bool(clause.get("recursive"))
        if recursive:
            for entry in entries:
                ctes[entry["ctename"]] = ALL  # a later CTE's rows: not known yet
        for entry in entries:
            name = entry["ctename"]
            if recursive:
                # Its own rows start empty: the rest of it can only add rows where its first
                # part has them (the least fixed point), so this one pass is exact.
                ctes[name] = frozenset()
            ctes[name] = self.wrapped(entry["ctequery"], outer, ctes)
        self.top = top
        return ctes

    def select(self, node: dict[str, Any], outer: _Scope | None, ctes: dict[str, Route]) -> Route:
        ctes = self.with_clause(node.get("withClause"), outer, ctes)
        op = node.get("op", "SETOP_NONE")
        if op != "SETOP_NONE":
            left = self.select(node["larg"], outer, ctes)
            right = self.select(node["rarg"], outer, ctes)
            if op == "SETOP_UNION":
                route = some((left, right))
            elif op == "SETOP_INTERSECT":
                route = every((left, right))
            else:  # EXCEPT: the left side's rows, some taken away
                route = every((left, depends(right)))
            rest = self.visit([node.get(k) for k in ("sortClause", "limitCount", "limitOffset")],
                              _Scope(outer), ctes)
            return every((route, rest))
        scope = _Scope(outer)
        if "valuesLists" in node:
            return every((ANY, self.visit(node["valuesLists"], scope, ctes)))
        parts: list[Route] = [ANY]
        for item in node.get("fromClause", ()):
            parts.append(self.from_item(item, scope, ctes, required=True))
        where = node.get("whereClause")
        if where is not None:
            parts.append(self.condition(where, scope, ctes))
        for key in ("targetList", "groupClause", "havingClause", "sortClause", "windowClause",
                    "distinctClause", "limitCount", "limitOffset"):
            if key in node:
                parts.append(self.visit(node[key], scope, ctes))
        if "lockingClause" in node:
            self.writes = True
        if "intoClause" in node:
            self.writes = True
            return ALL  # SELECT INTO creates a table: on every shard
        return every(parts)

    # FROM

    def from_item(self, wrapper: dict[str, Any], scope: _Scope, ctes: dict[str, Route], *,
                  required: bool) -> Route:
        node_type, node = _only_item(wrapper)
        if node_type == "RangeVar":
            route = self.range_var(node, scope, ctes)
        elif node_type == "JoinExpr":
            return self.join(node, scope, ctes, required)
        elif node_type == "RangeSubselect":
            outer = scope if node.get("lateral") else scope.parent
            route = self.wrapped(node["subquery"], outer, ctes)
            scope.items.append(_Item(_alias(node)))
        elif node_type == "RangeTableSample":
            route = self.from_item(node["relation"], scope, ctes, required=required)
            return every((route, self.visit([node.get("args"), node.get("repeatable")], scope, ctes)))
        else:  # functions, XMLTABLE, JSON_TABLE: no table of ours, maybe subqueries in arguments
            route = every((ANY, self.visit(node, scope, ctes)))
            scope.items.append(_Item(_alias(node)))
        return route if required else depends(route)

    def range_var(self, node: dict[str, Any], scope: _Scope, ctes: dict[str, Route]) -> Route:
        schema, name = node.get("schemaname"), node["relname"]
        alias = _alias(node)
        if schema is None and name in ctes:
            scope.items.append(_Item(alias or name))
            return ctes[name]
        key = self.schema.key_of(name, schema)
        self.tables[(schema, name)] = None
        scope.items.append(_Item(alias or name, (schema, name), key, plain=alias is None))
        return ANY if key is None else ALL

    def join(self, node: dict[str, Any], scope: _Scope, ctes: dict[str, Route],
             required: bool) -> Route:
        kind = node.get("jointype", "JOIN_INNER")
        parts = [
            self.from_item(node["larg"], scope, ctes,
                           required=required and kind in ("JOIN_INNER", "JOIN_LEFT")),
            self.from_item(node["rarg"], scope, ctes,
                           required=required and kind in ("JOIN_INNER", "JOIN_RIGHT")),
        ]
        quals = node.get("quals")
        if quals is not None:
            if required and kind == "JOIN_INNER":
                parts.append(self.condition(quals, scope, ctes))
            else:
                parts.append(self.visit(quals, scope, ctes))
        return every(parts)

    # conditions

    def condition(self, expr: dict[str, Any], scope: _Scope, ctes: dict[str, Route]) -> Route:
        node_type, node = _only_item(expr)
        if node_type == "BoolExpr":
            args = node.get("args", ())
            if node.get("boolop") == "AND_EXPR":
                return every([self.condition(arg, scope, ctes) for arg in args])
            if node.get("boolop") == "OR_EXPR":
                return some([self.condition(arg, scope, ctes) for arg in args])
        elif node_type == "A_Expr":
            found = self.comparison(node, scope)
            if found is not None:
                return found
        elif node_type == "SubLink" and node.get("subLinkType") in ("EXISTS_SUBLINK", "ANY_SUBLINK"):
            route = restrict(self.wrapped(node["subselect"], scope, ctes))
            test = node.get("testexpr")
            return every((route, self.visit(test, scope, ctes))) if test else route
        elif node_type == "NullTest" and node.get("nulltesttype") == "IS_NULL" and \
                self.key_ref(node.get("arg"), scope) is not None:
            return frozenset((0,))  # PostgreSQL's hash partitioning keeps NULL keys there
        return self.visit(expr, scope, ctes)

    def comparison(self, node: dict[str, Any], scope: _Scope) -> Route | None:
        names = node.get("name", ())
        if not names or names[-1].get("String", {}).get("sval") != "=":
            return None
        kind, left, right = node.get("kind"), node.get("lexpr"), node.get("rexpr")
        if kind == "AEXPR_OP":
            data_type, value = self.key_ref(left, scope), right
            if data_type is None:
                data_type, value = self.key_ref(right, scope), left
            return None if data_type is None else self.equals(value, data_type)
        data_type = self.key_ref(left, scope)
        if data_type is None or right is None:
            return None
        if kind == "AEXPR_IN" and "List" in right:
            return self.one_of(right["List"].get("items", ()), data_type)
        if kind == "AEXPR_OP_ANY":
            return self.any_of(right, data_type)
        return None

    def equals(self, expr: dict[str, Any] | None, data_type: str) -> Route | None:
        value = value_of(expr)
        if value is None or value[0] == "array":
            return None
        if value[0] == "param":
            return _param_route("=", value[1], data_type)
        found = key_hash(value, data_type)
        if found is None:
            return None
        if found is NULL or found is NO_MATCH:
            return frozenset()
        return frozenset((found % self.shards,))  # type: ignore[operator]

    def one_of(self, items: Sequence[dict[str, Any]], data_type: str) -> Route | None:
        parts = [self.equals(item, data_type) for item in items]
        return None if any(p is None for p in parts) else some(parts)

    def any_of(self, expr: dict[str, Any], data_type: str) -> Route | None:
        if "A_ArrayExpr" in expr:
            return self.one_of(expr["A_ArrayExpr"].get("elements", ()), data_type)
        value = value_of(expr)
        if value is None:
            return None
        if value[0] == "param":
            index, category, is_array = value[1]
            if category is not None and (not is_array or category != KEY_CATEGORY[data_type]):
                return None
            return ("in", index, data_type)
        if value[0] == "array":
            text, category = value[1]
            if category != KEY_CATEGORY[data_type]:
                return None
        elif value[0] == "unknown":
            text = value[1]
        else:
            return None
        try:
            elements = parse_text_array(text)
        except BadKey:
            return None
        parts = [self.equals({"A_Const": {"sval": {"sval": e}}} if e is not None
                             else {"A_Const": {"isnull": True}}, data_type) for e in elements]
        return None if any(p is None for p in parts) else some(parts)

    # names

    def key_ref(self, expr: dict[str, Any] | None, scope: _Scope) -> str | None:
        """The key type if `expr` is a sharded table's key column, else None."""
        ref = expr.get("ColumnRef") if expr else None
        if ref is None:
            return None
        names = []
        for field in ref.get("fields", ()):
            part = field.get("String")
            if part is None:
                return None
            names.append(part.get("sval", ""))
        if not names:
            return None
        column = names[-1]
        item = self.unqualified(column, scope) if len(names) == 1 else self.qualified(names[:-1], scope)
        if item is None or item.key != column:
            return None
        if not item.named and item.table is not None:
            self.seen.add(item.table)
        return item.dtype

    @staticmethod
    def qualified(names: list[str], scope: _Scope | None) -> _Item | None:
        relation, schema = names[-1], names[-2] if len(names) >= 2 else None
        while scope is not None:
            for item in scope.items:
                if schema is None:
                    if item.name == relation:
                        return item
                elif item.plain and item.table is not None and item.table[1] == relation and \
                        item.table[0] in (schema, None):
                    return item
            scope = scope.parent
        return None

    def unqualified(self, column: str, scope: _Scope | None) -> _Item | None:
        # Only the innermost level with FROM items: a name there may belong to any of them.
        while scope is not None and not scope.items:
            scope = scope.parent
        if scope is None:
            return None
        named = [item for item in scope.items if item.named and item.key == column]
        if named:
            return named[0] if len(named) == 1 else None
        if self.anywhere == column and all(it.table is not None and it.key is not None
                                           and not it.named for it in scope.items):
            # Every item may have the table-less key column; whichever has it is sharded on it.
            if len(scope.items) == 1:
                return scope.items[0]
            return _Item(None, None, (column, scope.items[0].dtype, False))  # which one: unknown
        return None

    def visit(self, value: Any, scope: _Scope, ctes: dict[str, Route]) -> Route:
        """Subqueries, writing functions and column names anywhere in `value`: TRUE, or ALL if a
        subquery's rows differ by shard."""
        found: Route = TRUE
        stack = [value]
        pop, push = stack.pop, stack.append
        while stack:
            current = pop()
            if type(current) is list:
                for child in current:
                    if type(child) is dict or type(child) is list:
                        push(child)
                continue
            if type(current) is not dict:
                continue
            for key, child in current.items():
                if type(child) is list:
                    push(child)
                elif type(child) is not dict or key in _SKIP:
                    continue
                elif key not in _SPECIAL:
                    push(child)
                elif key == "SubLink":
                    if depends(self.wrapped(child["subselect"], scope, ctes)) is ALL:
                        found = ALL
                    if "testexpr" in child:
                        push(child["testexpr"])
                elif key == "ColumnRef":
                    if self.anywhere is not None:
                        self.key_ref({"ColumnRef": child}, scope)
                elif key == "FuncCall":
                    name = child["funcname"][-1].get("String", {}).get("sval", "")
                    if name.lower() in WRITING_FUNCTIONS:
                        self.writes = True
                    push(child)
                elif depends(self.statement(key, child, scope, ctes)) is ALL:  # a statement node
                    found = ALL
        return found

    # writes

    def target(self, relation: dict[str, Any], scope: _Scope) -> _Item:
        schema, name = relation.get("schemaname"), relation["relname"]
        alias = _alias(relation)
        self.tables[(schema, name)] = None
        self.writes = True
        item = _Item(alias or name, (schema, name), self.schema.key_of(name, schema),
                     plain=alias is None)
        scope.items.append(item)
        return item

    def is_sharded(self, item: _Item, columns: Sequence[str] = ()) -> bool:
        if item.key is None:
            return False
        if not item.named and item.key in columns:
            self.seen.add(item.table)  # type: ignore[arg-type]
        return item.named or item.table in self.seen

    def written(self, item: _Item, route: Route) -> Route:
        """Record a write's route; what its RETURNING rows look like to a query using them."""
        if item.key is None:  # omnisharded: every copy changes alike
            self.omni_write = True
            self.effects.append(ALL)
            return ANY
        self.effects.append(route)
        return route

    def returning(self, node: dict[str, Any], scope: _Scope, ctes: dict[str, Route]) -> None:
        self.visit([node.get("returningList"), node.get("returningClause")], scope, ctes)

    def insert(self, node: dict[str, Any], outer: _Scope | None, ctes: dict[str, Route]) -> Route:
        top, self.top = self.top, False
        ctes = self.with_clause(node.get("withClause"), outer, ctes)
        scope = _Scope(outer)
        item = self.target(node["relation"], scope)
        columns = _target_names(node.get("cols", ()))
        source = node.get("selectStmt")
        rows = _values_rows(source)
        if rows is not None:
            self.visit(rows, _Scope(outer), ctes)
        elif source is not None:
            self.wrapped(source, outer, ctes)
        conflict = node.get("onConflictClause")
        if conflict is not None:
            self.visit(conflict, scope, ctes)
        self.returning(node, scope, ctes)
        sharded = self.is_sharded(item, columns)
        if sharded and conflict is not None and item.key in _target_names(conflict.get("targetList", ())):
            self._key_change(item, "INSERT ... ON CONFLICT DO UPDATE")
        if not sharded:
            return self.written(item, ALL)
        return self.written(item, self.insert_route(item, columns, rows, top and not self.effects))

    def insert_route(self, item: _Item, columns: list[str], rows: list[list[Any]] | None,
                     splittable: bool) -> Route:
        table, key = _display(item.table), item.key  # type: ignore[arg-type]
        if not columns:
            self.needs_column_order = True
            self.fail("0A000", f"INSERT INTO {table} without a column list: the proxy does not know "
                      f"the table's column order, so it cannot find the sharding key {key}; "
                      "name the columns")
            return ALL
        if key not in columns:
            self.fail("0A000", f"INSERT INTO {table} does not set the sharding key {key}: the proxy "
                      "cannot tell which shard the row belongs to; give it a value")
            return ALL
        if rows is None:
            self.fail("0A000", f"INSERT INTO {table} ... SELECT (or DEFAULT VALUES): the proxy "
                      "cannot tell which shard each row belongs to; use VALUES with the "
                      f"sharding key {key}, or route it with a pgdog_shard hint")
            return ALL
        position = columns.index(key)
        keys: list[Route] = []
        for number, row in enumerate(rows, 1):
            found = self.row_key(row[position] if position < len(row) else None, item.dtype)
            if found is None:
                self.fail("0A000", f"INSERT INTO {table}: the sharding key {key} in row {number} is "
                          "not a constant or a parameter of its type, so the proxy cannot tell "
                          "which shard the row belongs to")
                return ALL
            keys.append(found)
        route = some(keys)
        if splittable and self.single:
            self.insert_keys = tuple(keys)
        elif len(keys) > 1:
            if type(route) is frozenset and len(route) > 1:
                self.fail("0A000", f"the rows of this INSERT INTO {table} belong to different "
                          "shards and the proxy cannot split it here (inside WITH, next to a "
                          "data-modifying WITH, or among several statements); insert them with "
                          "separate statements")
            elif type(route) is tuple:
                route = ("1", route)
        return route

    def row_key(self, expr: dict[str, Any] | None, data_type: str) -> Route | None:
        value = value_of(expr)
        if value is None or value[0] == "array":
            return None
        if value[0] == "param":
            return _param_route("k", value[1], data_type)
        found = key_hash(value, data_type, assign=True)
        if found is None or found is NO_MATCH:
            return None
        return frozenset((0 if found is NULL else found % self.shards,))  # type: ignore[operator]

    def _key_change(self, item: _Item, what: str) -> None:
        self.fail("0A000", f"{what} sets the sharding key {item.key} of "
                  f"{_display(item.table)}: changing it would move rows between shards; "  # type: ignore[arg-type]
                  "delete the rows and insert them again instead", overridable=False)

    def update(self, node: dict[str, Any], outer: _Scope | None, ctes: dict[str, Route]) -> Route:
        ctes = self.with_clause(node.get("withClause"), outer, ctes)
        scope = _Scope(outer)
        item = self.target(node["relation"], scope)
        parts = self.filtered(node, "fromClause", scope, ctes)
        targets = node.get("targetList", ())
        self.visit(targets, scope, ctes)
        self.returning(node, scope, ctes)
        names = _target_names(targets)
        if self.is_sharded(item, names) and item.key in names:
            self._key_change(item, "UPDATE")
        return self.written(item, every((ALL, *parts)))

    def delete(self, node: dict[str, Any], outer: _Scope | None, ctes: dict[str, Route]) -> Route:
        ctes = self.with_clause(node.get("withClause"), outer, ctes)
        scope = _Scope(outer)
        item = self.target(node["relation"], scope)
        parts = self.filtered(node, "usingClause", scope, ctes)
        self.returning(node, scope, ctes)
        return self.written(item, every((ALL, *parts)))

    def filtered(self, node: dict[str, Any], from_key: str, scope: _Scope,
                 ctes: dict[str, Route]) -> list[Route]:
        parts = [self.from_item(f, scope, ctes, required=True) for f in node.get(from_key, ())]
        where = node.get("whereClause")
        if where is not None:
            parts.append(self.condition(where, scope, ctes))
        return parts

    def merge(self, node: dict[str, Any], outer: _Scope | None, ctes: dict[str, Route]) -> Route:
        ctes = self.with_clause(node.get("withClause"), outer, ctes)
        scope = _Scope(outer)
        item = self.target(node["relation"], scope)
        parts = [self.from_item(node["sourceRelation"], scope, ctes, required=True)]
        parts.append(self.condition(node["joinCondition"], scope, ctes))
        clauses = [c["MergeWhenClause"] for c in node.get("mergeWhenClauses", ())]
        self.visit(clauses, scope, ctes)
        self.returning(node, scope, ctes)
        updated = [n for c in clauses if c.get("commandType") == "CMD_UPDATE"
                   for n in _target_names(c.get("targetList", ()))]
        inserted = [n for c in clauses if c.get("commandType") == "CMD_INSERT"
                    for n in _target_names(c.get("targetList", ()))]
        if not self.is_sharded(item, updated + inserted):
            return self.written(item, ALL)
        if item.key in updated:
            self._key_change(item, "MERGE ... UPDATE")
        if any(c.get("commandType") == "CMD_INSERT" for c in clauses):
            self.fail("0A000", f"MERGE INTO {_display(item.table)} ... INSERT: the proxy cannot tell "  # type: ignore[arg-type]
                      "which shard new rows belong to; insert them with INSERT ... VALUES, or "
                      "route the MERGE with a pgdog_shard hint")
        if any(c.get("matchKind") == "MERGE_WHEN_NOT_MATCHED_BY_SOURCE" for c in clauses):
            return self.written(item, ALL)
        return self.written(item, every((ALL, *parts)))

    def copy(self, node: dict[str, Any]) -> Route:
        if "query" in node:
            return self.wrapped(node["query"], None, {})
        scope = _Scope(None)
        writes = self.writes
        item = self.target(node["relation"], scope)
        columns = [a.get("String", {}).get("sval", "") for a in node.get("attlist", ())]
        if node.get("whereClause") is not None:
            self.visit(node["whereClause"], scope, {})
        if not node.get("is_from"):
            self.writes = writes or "filename" in node  # COPY TO a server file: the primary's
            return ANY if item.key is None else ALL
        if not self.is_sharded(item, columns):
            return self.written(item, ALL)
        if not columns:
            self.needs_column_order = True
        elif item.key in columns:
            self.copy_key_index = columns.index(item.key)  # type: ignore[arg-type]
        else:
            self.fail("0A000", f"COPY {_display(item.table)} FROM without its sharding key "  # type: ignore[arg-type]
                      f"{item.key}: the proxy cannot tell which shard each row belongs to")
        self.effects.append(ALL)
        return ALL

    # one statement of the text

    def statement_route(self, node_type: str, node: dict[str, Any]) -> tuple[Route, Setting | None]:
        self.effects = []
        self.top = True
        if node_type in _DML:
            route = self.statement(node_type, node, None, {})
        elif node_type == "CopyStmt":
            route = self.copy(node)
        elif node_type == "ExplainStmt":
            return self.statement_route(*_only_item(node["query"]))
        elif node_type == "VariableShowStmt":
            route = ANY
        elif node_type == "VariableSetStmt":
            setting = setting_of(node)
            if isinstance(setting, str):
                self.fail("22023", setting, overridable=False)
                return ALL, None
            if setting is not None and setting.name == "shard" and setting.value is not None \
                    and not 0 <= setting.value < self.shards:  # type: ignore[operator]
                self.fail("22023", _out_of_range(setting.value, self.shards), overridable=False)  # type: ignore[arg-type]
            return ALL, setting
        else:  # DDL, transaction control, utility statements: every shard
            route = ALL
        unique: list[Route] = []
        for part in (route, *self.effects):
            if part not in unique:
                unique.append(part)
        return some(unique), None


def _param_route(op: str, param: tuple[int, str | None, bool], data_type: str) -> Route | None:
    """A key that is a Bind parameter: the route reads its value per execution ("=": a
    condition, "k": an inserted row's key); None if the parameter cannot be a key."""
    index, category, is_array = param
    if is_array or category not in (None, KEY_CATEGORY[data_type]):
        return None
    return (op, index, data_type)


def _values_rows(source: dict[str, Any] | None) -> list[list[Any]] | None:
    """The rows of ``INSERT ... VALUES``; None for any other source (or DEFAULT VALUES)."""
    if source is None:
        return None
    node_type, node = _only_item(source)
    if node_type != "SelectStmt" or "valuesLists" not in node:
        return None
    if any(k in node for k in ("withClause", "sortClause", "limitCount", "limitOffset")):
        return None
    return [row.get("List", {}).get("items", []) for row in node["valuesLists"]]


def _out_of_range(shard: int, shards: int) -> str:
    return f"shard {shard} does not exist: the database has {shards} shard(s), 0 to {shards - 1}"


# --- the public API ------------------------------------------------------------


def analyze(sql: str | bytes, schema: ShardingSchema) -> ShardingFacts:
    """The sharding facts of one SQL text (one or more statements); never raises for bad SQL
    (it runs on every shard, where PostgreSQL reports the error), unless a hint routes it."""
    if isinstance(sql, bytes):
        try:
            text = sql.decode("utf-8")
        except UnicodeDecodeError:
            return _unparsed(None, schema)
    else:
        text = sql
    hints = comment_hints(text)
    if "\x00" in text:
        return _unparsed(hints, schema)
    try:
        tree = json.loads(parse_sql_json(text))
    except ParseError:
        return _unparsed(hints, schema)
    statements = tree.get("stmts", ())
    analyzer = _Analyzer(schema, single=len(statements) == 1)
    walker = _Walker()
    kind, writes = "other", False
    routes: list[Route] = []
    settings: list[Setting] = []
    for i, raw in enumerate(statements):
        node_type, node = _only_item(raw["stmt"])
        statement_kind, statement_writes, _ = _top_level(node_type, node)
        inner = _only_item(node["query"])[0] if node_type == "ExplainStmt" else node_type
        if inner not in _OWN_WALK:
            walker.walk(raw["stmt"], frozenset())  # the analysis below sees no tables there
        if i == 0:
            kind = statement_kind
        writes = writes or statement_writes
        route, setting = analyzer.statement_route(node_type, node)
        routes.append(route)
        if setting is not None:
            settings.append(setting)
    if settings and len(statements) > 1:
        analyzer.fail("0A000", "SET pgdog.shard / pgdog.sharding_key must be sent on its own, "
                      "not with other statements in one query", overridable=False)
    tables = tuple(dict.fromkeys([*analyzer.tables, *walker.tables]))
    return _facts(analyzer, schema, hints, kind=kind, writes=writes or analyzer.writes,
                  statements=len(statements), tables=tables,
                  route=_outermost(some(routes) if routes else ANY),
                  setting=settings[0] if len(statements) == 1 and settings else None)


def _outermost(route: Route) -> Route:
    """``key = $1`` on a sharded table: ("&", (("=", ...), ALL)) is just the parameter's shard at
    the outermost level, where TRUE (a value that is not a key) and ALL both mean every shard."""
    if type(route) is tuple and route[0] == "&" and len(route[1]) == 2 and ALL in route[1]:
        other = route[1][0] if route[1][1] is ALL else route[1][1]
        if type(other) is tuple and other[0] in ("=", "in"):
            return other
    return route


def _facts(analyzer: _Analyzer, schema: ShardingSchema, hints: CommentHints | None, *, kind: str,
           writes: bool, statements: int, tables: tuple[Table, ...], route: Route,
           setting: Setting | None, parse_ok: bool = True) -> ShardingFacts:
    sharded, omnisharded, certain = [], [], []
    key_types: set[str] = set()
    for schema_name, name in tables:
        key = schema.key_of(name, schema_name)
        if key is None:
            omnisharded.append((schema_name, name))
            continue
        sharded.append((schema_name, name))
        if key[2] or (schema_name, name) in analyzer.seen:
            certain.append((schema_name, name))
            key_types.add(key[1])
    if analyzer.omni_write and certain:
        analyzer.fail("0A000", "this statement writes to an omnisharded table (every shard has a "
                      f"copy) using rows of the sharded table {_display(certain[0])}: the copies "
                      "would differ from shard to shard", overridable=False)
    if len(key_types) != 1:
        key_types = set(schema.data_types) if not key_types and len(schema.data_types) == 1 else set()
    key_type = next(iter(key_types)) if key_types else None
    shard_hint = _hinted_shard(analyzer, hints, key_type)
    error = analyzer.error
    omni_read = route is ANY and not analyzer.omni_write
    return ShardingFacts(
        kind=kind, writes=writes, parse_ok=parse_ok, statements=statements, tables=tables,
        sharded_tables=tuple(sharded), omnisharded_tables=tuple(omnisharded),
        omnisharded_read=omni_read, omnisharded_write=analyzer.omni_write, route=route,
        insert_keys=analyzer.insert_keys, needs_column_order=analyzer.needs_column_order,
        copy_key_index=analyzer.copy_key_index, error=error[0] if error else None,
        reason=error[1] if error else "", hint_overrides_error=bool(error and error[2]),
        shard_hint=shard_hint, key_data_type=key_type, setting=setting,
    )


def _hinted_shard(analyzer: _Analyzer, hints: CommentHints | None, key_type: str | None) -> int | None:
    if hints is None:
        return None
    shards = analyzer.shards
    if hints.shard is not None:
        try:
            shard = int(hints.shard)
        except ValueError:
            analyzer.fail("22023", f"pgdog_shard must be a shard number, got {hints.shard!r}",
                          overridable=False)
            return None
        if not 0 <= shard < shards:
            analyzer.fail("22023", _out_of_range(shard, shards), overridable=False)
            return None
        return shard
    if key_type is None:
        analyzer.fail("0A000", "pgdog_sharding_key: the proxy cannot tell the key's type (the "
                      "statement touches no sharded table, or tables with keys of different "
                      "types); use pgdog_shard instead", overridable=False)
        return None
    try:
        return key_shard(hints.key, key_type, shards)  # type: ignore[arg-type]
    except BadKey as exc:
        analyzer.fail("22P02", f"pgdog_sharding_key: {exc}", overridable=False)
        return None


def _unparsed(hints: CommentHints | None, schema: ShardingSchema) -> ShardingFacts:
    # PostgreSQL will say what is wrong with it, wherever it runs; every shard is the safe guess.
    analyzer = _Analyzer(schema, single=True)
    return _facts(analyzer, schema, hints, kind="other", writes=True, statements=0, tables=(),
                  route=ALL, setting=None, parse_ok=False)


def bigint_key_shard(facts: ShardingFacts, schema: ShardingSchema,
                     params: Sequence[bytes | None], formats: Sequence[int] = (),
                     param_types: Sequence[int] = ()) -> int | None:
    """The common case, inline: `WHERE key = $n` with a bigint key and no hint. The shard,
    -1 for a NULL key (no row: any shard), None when the general path must tell."""
    route = facts.route
    if type(route) is not tuple or route[0] != "=" or route[2] != "bigint" \
            or facts.error is not None or facts.shard_hint is not None:
        return None
    index = route[1]
    if index >= len(params):
        return None
    value = params[index]
    if value is None:
        return -1  # NULL equals no key
    binary = bool(formats) and (formats[0] if len(formats) == 1 else
                                formats[index] if index < len(formats) else 0) == 1
    try:
        if not binary:
            return int_key_hash(int(value)) % schema.shards
        if not param_types and len(value) in (2, 4, 8):
            return int_key_hash(int.from_bytes(value, "big", signed=True)) % schema.shards
    except ValueError:
        pass  # not plain decimal: the general path reads it
    return None


def shards_for(facts: ShardingFacts, schema: ShardingSchema,
               params: Sequence[bytes | None] = (), formats: Sequence[int] = (), *,
               param_types: Sequence[int] = (), shard: int | None = None,
               sharding_key: str | None = None, any_shard: int = 0) -> frozenset[int] | None:
    """The shards one execution must run on; None means every shard.

    `params` are the Bind values (None for NULL), `formats` their format codes as Bind sends
    them (none: all text; one: for all; else one each) and `param_types` the type oids the
    client declared in Parse (0 or missing: unknown). `shard` and `sharding_key` are the
    session's SET pgdog.shard / pgdog.sharding_key. Precedence: a comment hint, then `shard`,
    then `sharding_key`, then the statement's own keys. When any one shard will do (omnisharded
    reads, or no row can match), the answer is `any_shard`.

    An INSERT whose rows go to several shards must be split (`insert_rows_by_shard`,
    `split.split_insert`): sending it whole to each would insert every row on each.

    Raises ShardingError (sqlstate, message) when the statement cannot run correctly: facts.error
    (unless a hint names the shard and facts.hint_overrides_error), a key hint that is not a key,
    or an inserted row's key parameter that is not a value of the key's type (22P02).
    """
    error = facts.error
    route = facts.route
    single = schema.single
    if shard is None and sharding_key is None:
        found = bigint_key_shard(facts, schema, params, formats, param_types)
        if found is not None:
            return single[any_shard % schema.shards if found < 0 else found]
    if error is not None and not facts.hint_overrides_error:
        raise ShardingError(error, facts.reason)
    if facts.shard_hint is not None:
        return single[facts.shard_hint]
    if shard is not None:
        if not 0 <= shard < schema.shards:
            raise ShardingError("22023", _out_of_range(shard, schema.shards))
        return single[shard]
    if sharding_key is not None:
        if facts.key_data_type is None:
            raise ShardingError("0A000", "pgdog.sharding_key: the proxy cannot tell the key's "
                                "type for this statement; use pgdog.shard instead")
        try:
            return single[key_shard(sharding_key, facts.key_data_type, schema.shards)]
        except BadKey as exc:
            raise ShardingError("22P02", f"pgdog.sharding_key: {exc}") from None
    if error is not None:
        raise ShardingError(error, facts.reason)
    if type(route) is tuple:
        route = evaluate(route, schema.shards, params, formats, param_types)
    if type(route) is frozenset:
        return route if route else single[any_shard % schema.shards]
    if route is ANY:
        return single[any_shard % schema.shards]
    return None


def insert_rows_by_shard(facts: ShardingFacts, schema: ShardingSchema,
                         params: Sequence[bytes | None] = (), formats: Sequence[int] = (), *,
                         param_types: Sequence[int] = ()) -> dict[int, tuple[int, ...]]:
    """For an INSERT ... VALUES (facts.insert_keys set): each shard's rows, as 0-based row
    numbers in statement order. Raises ShardingError like shards_for."""
    if facts.insert_keys is None:
        raise ValueError("not an INSERT ... VALUES the proxy can split")
    if facts.error is not None:
        raise ShardingError(facts.error, facts.reason)
    rows: dict[int, list[int]] = {}
    for number, key in enumerate(facts.insert_keys):
        shards = key if type(key) is frozenset else evaluate(key, schema.shards, params, formats,
                                                              param_types)
        (shard,) = shards
        rows.setdefault(shard, []).append(number)
    return {shard: tuple(numbers) for shard, numbers in rows.items()}


class FactsCache:
    """A bounded LRU of `analyze` results for one sharding schema, keyed by the exact text.

    Texts longer than `max_text_length` are analyzed every time and never stored. Not
    thread-safe; meant for one Trio thread.
    """

    def __init__(self, schema: ShardingSchema, max_entries: int = 10_000,
                 max_text_length: int = 65_536) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.schema = schema
        self.max_entries = max_entries
        self.max_text_length = max_text_length
        self._entries: OrderedDict[str | bytes, ShardingFacts] = OrderedDict()

    def get(self, sql: str | bytes) -> ShardingFacts:
        facts = self._entries.get(sql)
        if facts is not None:
            self._entries.move_to_end(sql)
            return facts
        facts = analyze(sql, self.schema)
        if len(sql) <= self.max_text_length:
            self._entries[sql] = facts
            if len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return facts

    def __len__(self) -> int:
        return len(self._entries)
