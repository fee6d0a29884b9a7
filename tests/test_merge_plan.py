"""The merge plan of a SELECT over several shards: what the shards run, how their answers
combine, what is refused. (That the plans give PostgreSQL's answers is tests/test_row_merge.py.)
"""

from __future__ import annotations

import struct

import pytest
from pglast import parse_sql

from trio_pgdog.router.sharding.merge_plan import (
    Aggregate,
    Param,
    SortKey,
    plan_select,
    shard_parameters,
    shard_result_formats,
)


def _same_sql(a: str, b: str) -> bool:
    """Two texts PostgreSQL parses to the same statement."""
    return parse_sql(a) == parse_sql(b)


# --- what needs no merging ---------------------------------------------------------------------


@pytest.mark.parametrize("sql", [
    "SELECT id, name FROM orders WHERE total > 5",
    "SELECT * FROM orders JOIN items USING (order_id)",
    "SELECT id FROM orders FOR UPDATE",
    "INSERT INTO orders (id) VALUES (1) RETURNING id",
    "UPDATE orders SET total = 0 RETURNING *",
    "DELETE FROM orders RETURNING id",
    "EXPLAIN SELECT * FROM orders ORDER BY id",
    "VALUES (1), (2)",
    "SELECT * INTO copy FROM orders ORDER BY id",
    "SELECT a FROM t UNION ALL SELECT b FROM u",
    "SELECT id FROM orders; SELECT id FROM items",
    "SELECT id, generate_series(1, 3) FROM orders",
    "SELEC nonsense",
    "SELECT 1\x00",
    "",
    # A subquery that summarizes, but row by row of the outer query (co-located rows).
    "SELECT o.id, (SELECT count(*) FROM items i WHERE i.order_id = o.id) FROM orders o",
    "SELECT * FROM orders o, LATERAL (SELECT max(x) FROM items i WHERE i.order_id = o.id) m",
])
def test_concat(sql: str) -> None:
    plan = plan_select(sql)
    assert plan.kind == "concat", plan.refusal
    assert plan.shard_sql == sql and not plan.rewritten
    assert plan.refusal is None


def test_subqueries_over_tables_that_are_not_sharded_may_summarize() -> None:
    sql = "SELECT * FROM orders WHERE status IN (SELECT DISTINCT code FROM statuses LIMIT 5)"
    assert plan_select(sql).kind == "refused"  # without the list, every table may be sharded
    assert plan_select(sql, sharded_tables=[(None, "orders")]).kind == "concat"
    assert plan_select(sql, sharded_tables=[(None, "statuses")]).kind == "refused"
    with_cte = "WITH s AS (SELECT count(*) AS n FROM statuses) SELECT * FROM orders, s"
    assert plan_select(with_cte, sharded_tables=[(None, "orders")]).kind == "concat"
    reads_orders = "WITH s AS (SELECT count(*) AS n FROM orders) SELECT * FROM s"
    assert plan_select(reads_orders, sharded_tables=[("public", "orders")]).kind == "refused"


# --- sorting -------------------------------------------------------------------------------------


@pytest.mark.parametrize("order_by, key", [
    ("ORDER BY id", SortKey(0)),
    ("ORDER BY id ASC", SortKey(0)),
    ("ORDER BY id DESC", SortKey(0, descending=True, nulls_first=True)),
    ("ORDER BY id DESC NULLS LAST", SortKey(0, descending=True, nulls_first=False)),
    ("ORDER BY id NULLS FIRST", SortKey(0, nulls_first=True)),
    ("ORDER BY 2", SortKey(1)),
    ("ORDER BY who", SortKey(1)),  # the output alias
    ("ORDER BY o.name", SortKey(1)),
    ("ORDER BY created + 1", SortKey(2)),  # an expression equal to an output column
    ("ORDER BY count", SortKey(3)),  # an unaliased function's column name
    ("ORDER BY id USING >", SortKey(0, descending=True, nulls_first=True)),
    ("ORDER BY o.name COLLATE \"C\"", SortKey(1, collation="C")),
])
def test_sort_keys(order_by: str, key: SortKey) -> None:
    sql = f"SELECT id, o.name AS who, created + 1, count FROM orders o {order_by}"
    plan = plan_select(sql)
    assert plan.kind == "sort"
    assert plan.sort == (key,)
    assert plan.shard_sql == sql


def test_order_by_a_column_not_in_the_output_is_a_hidden_column() -> None:
    # pgDog #1135 returned these in the wrong order.
    plan = plan_select("SELECT id, name FROM orders ORDER BY created DESC, id")
    assert plan.kind == "sort" and plan.hidden == 1
    assert plan.sort == (SortKey(2, True, True), SortKey(0))
    assert _same_sql(plan.shard_sql, "SELECT id, name, created AS __pgdog_hidden_0 FROM orders "
                                     "ORDER BY created DESC, id")


def test_an_input_column_is_not_taken_for_an_output_column_of_another_name() -> None:
    # name may be another table's column than o.name: a hidden column is always right.
    plan = plan_select("SELECT id, o.name AS who FROM orders o JOIN users u USING (id) ORDER BY name")
    assert plan.sort == (SortKey(2),) and plan.hidden == 1


def test_order_by_after_a_star() -> None:
    plan = plan_select("SELECT * FROM orders ORDER BY total DESC")
    assert plan.sort == (SortKey(None, True, True, name="total"),)
    assert plan.columns is None and not plan.rewritten
    hidden = plan_select("SELECT *, 1 AS one FROM orders ORDER BY orders.total, one")
    # The qualified name is an input expression (hidden, last column); the alias comes just
    # before the hidden column, counted from the end.
    assert hidden.sort == (SortKey(-1), SortKey(-2))
    assert hidden.hidden == 1


def test_distinct() -> None:
    plan = plan_select("SELECT DISTINCT a, b FROM t ORDER BY b DESC")
    assert (plan.kind, plan.distinct, plan.sort) == ("sort", True, (SortKey(1, True, True),))
    assert plan_select("SELECT DISTINCT a FROM t").kind == "stream"
    refused = plan_select("SELECT DISTINCT a FROM t ORDER BY b")
    assert refused.refusal == ("42P10", "for SELECT DISTINCT, ORDER BY expressions must appear "
                                        "in select list")
    assert plan_select("SELECT DISTINCT ON (a) a, b FROM t ORDER BY a, b").kind == "refused"


def test_union() -> None:
    plan = plan_select("SELECT a FROM t UNION SELECT b FROM u ORDER BY 1 DESC LIMIT 3")
    assert (plan.kind, plan.distinct, plan.limit) == ("sort", True, 3)
    assert plan.sort == (SortKey(0, True, True),)
    assert plan_select("SELECT a FROM t UNION SELECT b FROM u").kind == "stream"
    assert plan_select("SELECT a FROM t UNION ALL SELECT b FROM u ORDER BY a").kind == "sort"
    for sql in ("SELECT a FROM t INTERSECT SELECT b FROM u",
                "SELECT a FROM t EXCEPT ALL SELECT b FROM u",
                "(SELECT a FROM t UNION SELECT b FROM u) UNION ALL SELECT c FROM v",
                "SELECT a FROM t UNION ALL (SELECT b FROM u LIMIT 1)",
                "SELECT count(*) FROM t UNION ALL SELECT count(*) FROM u",
                "SELECT a FROM t UNION SELECT b FROM u ORDER BY a + 1"):
        assert plan_select(sql).kind == "refused", sql
    countries = "SELECT code FROM countries INTERSECT SELECT code FROM regions"
    assert plan_select(countries, sharded_tables=[(None, "orders")]).kind == "concat"


# --- LIMIT and OFFSET ----------------------------------------------------------------------------


@pytest.mark.parametrize("clause, limit, offset, shard_clause, shard_params", [
    ("LIMIT 10", 10, 0, "LIMIT 10", ()),
    ("LIMIT 10 OFFSET 20", 10, 20, "LIMIT 30 OFFSET 0", ()),
    ("OFFSET 20 LIMIT 10", 10, 20, "OFFSET 0 LIMIT 30", ()),
    ("OFFSET 5", None, 5, "OFFSET 0", ()),
    ("LIMIT ALL OFFSET 5", None, 5, "LIMIT ALL OFFSET 0", ()),
    ("OFFSET 1 ROWS FETCH FIRST 2 ROWS ONLY", 2, 1, "OFFSET 0 ROWS FETCH FIRST 3 ROWS ONLY", ()),
    ("LIMIT $1", Param(0), 0, "LIMIT $1", ()),
    ("LIMIT $1 OFFSET 5", Param(0), 5, "LIMIT $1 OFFSET 0", ((0, "limit"),)),
    ("LIMIT 5 OFFSET $1", 5, Param(0), "LIMIT $1 OFFSET 0", ((0, "limit"),)),
    ("LIMIT 5 OFFSET $1::int8", 5, Param(0), "LIMIT $1 OFFSET 0::int8", ((0, "limit"),)),
    ("LIMIT $1 OFFSET $2", Param(0), Param(1), "LIMIT $1 OFFSET $2", ((0, "limit"), (1, "zero"))),
    ("OFFSET $1", None, Param(0), "OFFSET $1", ((0, "zero"),)),
    ("LIMIT $1::int OFFSET $2::bigint", Param(0), Param(1), "LIMIT $1::int OFFSET $2::bigint",
     ((0, "limit"), (1, "zero"))),
    ("LIMIT -1", -1, 0, "LIMIT -1", ()),  # PostgreSQL refuses it on every shard
])
def test_limit_and_offset(clause: str, limit: object, offset: object, shard_clause: str,
                          shard_params: tuple[tuple[int, str], ...]) -> None:
    plan = plan_select(f"SELECT id FROM orders ORDER BY id {clause}")
    assert (plan.kind, plan.limit, plan.offset) == ("sort", limit, offset)
    assert _same_sql(plan.shard_sql, f"SELECT id FROM orders ORDER BY id {shard_clause}")
    assert plan.shard_params == shard_params
    stream = plan_select(f"SELECT id FROM orders {clause}")
    assert stream.kind == "stream" and stream.limit == limit


def test_limit_must_be_a_constant_or_parameter() -> None:
    for clause in ("LIMIT 1 + 1", "LIMIT (SELECT 5)", "LIMIT 2.5", "OFFSET $1 LIMIT $1",
                   "ORDER BY id FETCH FIRST 3 ROWS WITH TIES"):
        plan = plan_select(f"SELECT id FROM orders {clause}")
        assert plan.kind == "refused" and plan.refusal[0] == "0A000", clause  # type: ignore[index]


def test_shard_parameters() -> None:
    plan = plan_select("SELECT id FROM orders ORDER BY id LIMIT $1 OFFSET $2")
    # text
    assert shard_parameters(plan, [b"10", b"20"]) == ([b"30", b"0"], ())
    assert shard_parameters(plan, [None, b"20"]) == ([None, b"0"], ())
    assert shard_parameters(plan, [b"10", None]) == ([b"10", b"0"], ())
    # binary, each value keeps its width
    params = [struct.pack("!q", 10), struct.pack("!i", 20)]
    assert shard_parameters(plan, params, [1]) == (
        [struct.pack("!q", 30), struct.pack("!i", 0)], [1])
    wide = [struct.pack("!i", 2**31 - 1), struct.pack("!i", 5)]
    assert shard_parameters(plan, wide, [1])[0][0] == struct.pack("!i", 2**31 - 1)
    # negative or unreadable: unchanged, so that the shards give PostgreSQL's error
    for bad in ([b"-1", b"20"], [b"10", b"-3"], [b"ten", b"2"]):
        assert shard_parameters(plan, bad) == (bad, ())
    # nothing to change: the same objects back
    unchanged = [b"1"]
    simple = plan_select("SELECT id FROM orders WHERE customer = $1 ORDER BY id")
    assert shard_parameters(simple, unchanged)[0] is unchanged
    offset_only = plan_select("SELECT id FROM orders LIMIT 5 OFFSET $1")
    assert shard_parameters(offset_only, [b"7"]) == ([b"12"], ())
    aggregate = plan_select("SELECT g, count(*) FROM t GROUP BY g ORDER BY 2 LIMIT $1 OFFSET $2")
    assert shard_parameters(aggregate, [b"3", b"4"]) == ([None, b"0"], ())


def test_shard_result_formats() -> None:
    plan = plan_select("SELECT id, name FROM orders ORDER BY created")
    assert shard_result_formats(plan, [1, 0]) == (1, 0, 0)
    assert shard_result_formats(plan, [1]) == [1]
    assert shard_result_formats(plan, []) == []
    assert shard_result_formats(plan_select("SELECT id FROM t ORDER BY id"), [1]) == [1]


# --- aggregates ------------------------------------------------------------------------------------


def test_group_by_with_plain_columns() -> None:
    # pgDog #1172: a plain column next to an aggregate.
    plan = plan_select("SELECT customer_id, count(*) FROM orders GROUP BY customer_id")
    assert plan.kind == "aggregate" and plan.grouped
    assert plan.group_keys == (0,)
    assert plan.aggregates == (Aggregate(1, "count"),)
    assert not plan.rewritten


def test_group_by_a_column_not_in_the_output() -> None:
    # pgDog #638: the count per group, with the group not in the select list.
    plan = plan_select("SELECT count(*) FROM orders GROUP BY customer_id")
    assert plan.group_keys == (1,) and plan.hidden == 1
    assert _same_sql(plan.shard_sql, "SELECT count(*), customer_id AS __pgdog_hidden_0 FROM "
                                     "orders GROUP BY customer_id")


@pytest.mark.parametrize("group_by", ["GROUP BY 1", "GROUP BY day", "GROUP BY date_trunc('day', ts)"])
def test_group_by_names_an_output_column(group_by: str) -> None:
    plan = plan_select(f"SELECT date_trunc('day', ts) AS day, sum(x) FROM t {group_by}")
    assert plan.group_keys == (0,) and plan.hidden == 0


def test_aggregate_functions() -> None:
    plan = plan_select("SELECT count(*), count(x), sum(x), min(x), max(x), bool_and(b), "
                       "bool_or(b), every(b), max(DISTINCT x), count(*) FILTER (WHERE x > 1) FROM t")
    assert [a.function for a in plan.aggregates] == [
        "count", "count", "sum", "min", "max", "bool_and", "bool_or", "bool_and", "max", "count"]
    assert not plan.grouped and plan.group_keys == ()
    assert not plan.rewritten


def test_avg_is_a_sum_and_a_hidden_count() -> None:
    plan = plan_select("SELECT g, avg(x), avg(y) AS mean FROM t GROUP BY g")
    assert plan.aggregates == (Aggregate(1, "avg", 3), Aggregate(2, "avg", 4))
    assert plan.hidden == 2
    assert _same_sql(plan.shard_sql, "SELECT g, sum(x) AS avg, sum(y) AS mean, count(x) AS "
                                     "__pgdog_hidden_0, count(y) AS __pgdog_hidden_1 FROM t GROUP BY g")


def test_having_is_evaluated_after_the_merge() -> None:
    plan = plan_select("SELECT g, count(*) FROM t GROUP BY g HAVING count(*) > 2 AND g > 0 "
                       "AND (max(x) BETWEEN 1 AND $1 OR min(y) IS NULL) AND sum(z) IN (1, 2)")
    assert plan.having == ("and", (
        ("cmp", ">", ("col", 1), ("const", "2")),
        ("or", (("and", (("cmp", ">=", ("col", 2), ("const", "1")),
                         ("cmp", "<=", ("col", 2), ("param", 0)))),
                ("null", ("col", 3), True))),
        ("or", (("cmp", "=", ("col", 4), ("const", "1")), ("cmp", "=", ("col", 4), ("const", "2")))),
    ))
    # The group-key condition stays on the shards; the aggregate ones go; the one with a
    # parameter stays harmless (every parameter must stay in use).
    assert _same_sql(plan.shard_sql,
                     "SELECT g, count(*), max(x) AS __pgdog_hidden_0, min(y) AS __pgdog_hidden_1, "
                     "sum(z) AS __pgdog_hidden_2 FROM t GROUP BY g HAVING g > 0 AND "
                     "((max(x) BETWEEN 1 AND $1 OR min(y) IS NULL) OR true)")
    only = plan_select("SELECT count(*) FROM t HAVING count(*) > 10")
    assert only.having == ("cmp", ">", ("col", 0), ("const", "10"))
    assert _same_sql(only.shard_sql, "SELECT count(*) FROM t")


def test_having_too_complex_is_refused() -> None:
    for having in ("sum(a) - sum(b) > 0", "count(*) > 1 + 1", "lower(max(s)) = 'a'",
                   "count(*) > (SELECT 1)"):
        plan = plan_select(f"SELECT g FROM t GROUP BY g HAVING {having}")
        assert plan.kind == "refused", having


def test_order_by_and_limit_with_aggregates() -> None:
    top = plan_select("SELECT customer_id, count(*) AS n FROM orders GROUP BY customer_id "
                      "ORDER BY n DESC LIMIT 10")
    # Each shard's top 10 is not the top 10: the shards return every group.
    assert top.sort == (SortKey(1, True, True),) and top.limit == 10 and not top.limit_pushed
    assert _same_sql(top.shard_sql, "SELECT customer_id, count(*) AS n FROM orders "
                                    "GROUP BY customer_id")
    first = plan_select("SELECT customer_id, count(*) FROM orders GROUP BY customer_id "
                        "ORDER BY customer_id LIMIT 10 OFFSET 5")
    # Ordered by the group keys, a group among the first 15 is among each shard's first 15.
    assert first.limit_pushed and first.check_shard_order
    assert _same_sql(first.shard_sql, "SELECT customer_id, count(*) FROM orders GROUP BY "
                                      "customer_id ORDER BY customer_id LIMIT 15 OFFSET 0")
    hidden = plan_select("SELECT g FROM t GROUP BY g ORDER BY avg(x) DESC, max(y)")
    assert hidden.aggregates == (Aggregate(1, "avg", 2), Aggregate(3, "max"))
    assert hidden.sort == (SortKey(1, True, True), SortKey(3))


def test_distinct_with_aggregates_is_applied_after_the_merge() -> None:
    plan = plan_select("SELECT DISTINCT count(*) FROM t GROUP BY g")
    assert plan.kind == "aggregate" and plan.distinct
    assert _same_sql(plan.shard_sql, "SELECT count(*), g AS __pgdog_hidden_0 FROM t GROUP BY g")


@pytest.mark.parametrize("sql, words", [
    ("SELECT count(DISTINCT x) FROM t", "count(DISTINCT"),
    ("SELECT sum(DISTINCT x) FROM t", "sum(DISTINCT"),
    ("SELECT avg(DISTINCT x) FROM t", "avg(DISTINCT"),
    ("SELECT sum(a) / count(b) FROM t", "inside an expression"),
    ("SELECT coalesce(sum(a), 0) FROM t", "inside an expression"),
    ("SELECT string_agg(s, ',') FROM t", "string_agg"),
    ("SELECT array_agg(s ORDER BY s) FROM t", "array_agg"),
    ("SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x) FROM t", "percentile_cont"),
    ("SELECT stddev(x) FROM t", "stddev"),
    ("SELECT id, row_number() OVER () FROM t", "window"),
    ("SELECT id FROM t ORDER BY rank() OVER (ORDER BY x)", "window"),
    ("SELECT g, sum(x) FROM t GROUP BY ROLLUP (g)", "ROLLUP"),
    ("SELECT generate_series(1, 2), count(*) FROM t", "set-returning"),
    ("SELECT g FROM t GROUP BY g ORDER BY sum(x) / count(*)", "over aggregates"),
    ("SELECT id, lower(name), count(*) FROM t GROUP BY id", "may be an aggregate"),
    ("SELECT *, count(*) FROM t", "*"),
    ("SELECT * FROM t WHERE x > (SELECT avg(x) FROM t)", "subquery"),
    ("SELECT * FROM (SELECT * FROM t ORDER BY id LIMIT 5) s", "subquery"),
    ("SELECT DISTINCT ON (a) a FROM t", "DISTINCT ON"),
])
def test_refused(sql: str, words: str) -> None:
    plan = plan_select(sql)
    assert plan.kind == "refused"
    assert plan.refusal is not None and plan.refusal[0] == "0A000"
    assert words in plan.refusal[1], plan.refusal
    assert plan.shard_sql == sql


def test_every_rewrite_is_valid_sql() -> None:
    for sql in (
        "SELECT a, avg(b) FILTER (WHERE c > 1) AS m, count(*) FROM t WHERE x = $1 GROUP BY 1 "
        "HAVING count(*) > $2 ORDER BY m DESC NULLS LAST LIMIT $3 OFFSET 5",
        "WITH w AS (SELECT * FROM t) SELECT id FROM w ORDER BY x COLLATE \"C\" DESC LIMIT 1 OFFSET 1",
        "SELECT a, \"weird name\" FROM t ORDER BY lower(\"weird name\") LIMIT 3 OFFSET 3",
        "SELECT g, avg(x) FROM t GROUP BY g HAVING avg(x) > 'NaN'::numeric ORDER BY avg(y)",
    ):
        plan = plan_select(sql)
        assert plan.kind != "refused", plan.refusal
        assert plan.rewritten
        parse_sql(plan.shard_sql)
