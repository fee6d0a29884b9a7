"""Finding sharding keys in statements: which shards a statement must run on, what is refused,
hints, parameters, and splitting a multi-row INSERT.

Unit tests walk many SQL shapes through `analyze` + `shards_for`; the tests at the end use a
real PostgreSQL as the oracle: a table hash-partitioned like the shards (MODULUS 4) must put
each row in the partition the proxy computes, for literals, text and binary Bind values and NULL,
and the INSERTs `split_insert` makes must insert exactly the rows of the original.
"""

from __future__ import annotations

import struct
import uuid

import psycopg
import pytest
from conftest import APP_DB, PG_USERS
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_pgdog.router.sharding import routes
from trio_pgdog.router.sharding.hashing import shard_of_int, shard_of_text, shard_of_uuid
from trio_pgdog.router.sharding.keys import (
    FactsCache,
    ShardingError,
    ShardingFacts,
    analyze,
    insert_rows_by_shard,
    shards_for,
)
from trio_pgdog.router.sharding.schema import ShardedColumn, ShardingSchema, identifier_parts
from trio_pgdog.router.sharding.split import split_insert
from trio_pgdog.router.sharding.values import parse_text_array

SHARDS = 4
SCHEMA = ShardingSchema(SHARDS, (
    ShardedColumn("orders", "customer_id"),
    ShardedColumn("items", "customer_id"),
    ShardedColumn("users", "email", "varchar"),
    ShardedColumn("sessions", "token", "uuid"),
))
# Keys 1, 2, 3, 4 live on shards 0, 2, 1, 3.
assert [shard_of_int(k, SHARDS) for k in (1, 2, 3, 4)] == [0, 2, 1, 3]
ALL = "all"
U1 = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"


def on(*keys: int) -> frozenset[int]:
    return frozenset(shard_of_int(k, SHARDS) for k in keys)


def route(sql: str, params=(), formats=(), schema: ShardingSchema = SCHEMA, **kw):
    result = shards_for(analyze(sql, schema), schema, params, formats, **kw)
    return ALL if result is None else result


def refused(sql: str, **kw) -> ShardingError:
    facts = analyze(sql, SCHEMA)
    with pytest.raises(ShardingError) as info:
        shards_for(facts, SCHEMA, **kw)
    return info.value


# --- where the key is found ------------------------------------------------------


@pytest.mark.parametrize(("sql", "expected"), [
    ("SELECT * FROM orders WHERE customer_id = 3", on(3)),
    ("SELECT * FROM orders WHERE 3 = customer_id", on(3)),
    ("SELECT * FROM orders o WHERE o.customer_id = 3", on(3)),
    ("SELECT * FROM orders WHERE orders.customer_id = 3", on(3)),
    ("SELECT * FROM public.orders WHERE public.orders.customer_id = 3", on(3)),
    ("SELECT * FROM sales.orders o WHERE o.customer_id = 3", on(3)),
    ("SELECT * FROM ORDERS WHERE Customer_ID = 3", on(3)),
    ("SELECT * FROM orders WHERE (customer_id = 3)", on(3)),
    ("select * from orders where customer_id = 3 and total > 10 and note like 'x%'", on(3)),
    ("SELECT * FROM orders WHERE customer_id IN (1, 3)", on(1, 3)),
    ("SELECT * FROM orders WHERE customer_id = ANY('{1,3}')", on(1, 3)),
    ("SELECT * FROM orders WHERE customer_id = ANY('{1,3}'::bigint[])", on(1, 3)),
    ("SELECT * FROM orders WHERE customer_id = ANY(ARRAY[1, 3])", on(1, 3)),
    ("SELECT * FROM orders WHERE customer_id = ANY('{{1,3},{4,NULL}}')", on(1, 3, 4)),
    ("SELECT * FROM orders WHERE customer_id = 1 OR customer_id = 3", on(1, 3)),
    ("SELECT * FROM orders WHERE customer_id IN (1, 2) AND customer_id IN (2, 3)", on(2)),
    ("SELECT * FROM orders WHERE (customer_id = 1 OR customer_id = 2) AND total > 1", on(1, 2)),
    ("SELECT * FROM orders WHERE customer_id = '3'", on(3)),
    ("SELECT * FROM orders WHERE customer_id = ' +3 '", on(3)),
    ("SELECT * FROM orders WHERE customer_id = '3'::bigint", on(3)),
    ("SELECT * FROM orders WHERE customer_id = 3::int4", on(3)),
    ("SELECT * FROM orders WHERE customer_id = 3.0", on(3)),
    ("SELECT * FROM orders WHERE customer_id = 9999999999", on(9999999999)),
    ("SELECT * FROM orders WHERE customer_id = -3", on(-3)),
    ("SELECT * FROM orders WHERE customer_id IS NULL", frozenset({0})),
    # What restricts nothing: every shard.
    ("SELECT * FROM orders", ALL),
    ("SELECT * FROM orders WHERE customer_id = 3 OR total > 10", ALL),
    ("SELECT * FROM orders WHERE NOT (customer_id = 3)", ALL),
    ("SELECT * FROM orders WHERE customer_id <> 3", ALL),
    ("SELECT * FROM orders WHERE customer_id > 3", ALL),
    ("SELECT * FROM orders WHERE customer_id NOT IN (1, 3)", ALL),
    ("SELECT * FROM orders WHERE customer_id IS NOT NULL", ALL),
    ("SELECT * FROM orders WHERE customer_id = id", ALL),
    ("SELECT * FROM orders WHERE customer_id = 'abc'", ALL),  # PostgreSQL rejects it itself
    ("SELECT * FROM orders WHERE customer_id = 3::text", ALL),  # no bigint = text operator
    ("SELECT * FROM orders WHERE customer_id = abs(-3)", ALL),
    ("SELECT * FROM orders WHERE customer_id + 0 = 3", ALL),
    ("SELECT * FROM orders WHERE other_id = 3", ALL),
    ("SELECT * FROM orders o WHERE x.customer_id = 3", ALL),
    ("SELECT * FROM orders GROUP BY customer_id HAVING customer_id = 3", ALL),
])
def test_key_in_where(sql, expected):
    assert route(sql) == expected


@pytest.mark.parametrize("sql", [
    "SELECT * FROM orders WHERE customer_id = NULL",
    "SELECT * FROM orders WHERE customer_id = 1 AND customer_id = 3",
    "SELECT * FROM orders WHERE customer_id = 3.5",
    "SELECT * FROM orders WHERE customer_id IN (NULL)",
])
def test_no_row_can_match_goes_to_any_one_shard(sql):
    assert route(sql) == frozenset({0})
    assert route(sql, any_shard=2) == frozenset({2})


@pytest.mark.parametrize(("sql", "expected"), [
    # Joins: a key on either table restricts the whole join (rows of a join are on one shard).
    ("SELECT * FROM orders o JOIN items i ON i.order_id = o.id WHERE o.customer_id = 3", on(3)),
    ("SELECT * FROM orders o JOIN items i ON i.order_id = o.id WHERE i.customer_id = 3", on(3)),
    ("SELECT * FROM orders o JOIN items i ON i.order_id = o.id AND i.customer_id = 3", on(3)),
    ("SELECT * FROM orders o, items i WHERE i.order_id = o.id AND 3 = i.customer_id", on(3)),
    ("SELECT * FROM orders o JOIN countries c ON c.id = o.country WHERE o.customer_id = 3", on(3)),
    ("SELECT * FROM orders o JOIN items i ON o.customer_id = i.customer_id", ALL),
    # The nullable side of an outer join: its ON condition keeps every row of the other side.
    ("SELECT * FROM orders o LEFT JOIN items i ON i.order_id = o.id AND i.customer_id = 3", ALL),
    ("SELECT * FROM orders o LEFT JOIN items i ON i.order_id = o.id WHERE o.customer_id = 3", on(3)),
    ("SELECT * FROM orders o LEFT JOIN items i ON i.order_id = o.id WHERE i.customer_id = 3", on(3)),
    ("SELECT * FROM orders o RIGHT JOIN items i ON o.customer_id = 3", ALL),
    ("SELECT * FROM orders o FULL JOIN items i ON o.customer_id = 3", ALL),
    ("SELECT * FROM countries c LEFT JOIN orders o ON o.country = c.id", ALL),
    # Subqueries in FROM, EXISTS, IN; correlated references to the query around.
    ("SELECT * FROM (SELECT * FROM orders WHERE customer_id = 3) s", on(3)),
    ("SELECT * FROM (SELECT * FROM orders) s WHERE s.customer_id = 3", ALL),
    ("SELECT * FROM countries c WHERE EXISTS "
     "(SELECT 1 FROM orders o WHERE o.country = c.id AND o.customer_id = 3)", on(3)),
    ("SELECT * FROM countries c WHERE NOT EXISTS (SELECT 1 FROM orders WHERE customer_id = 3)", ALL),
    ("SELECT * FROM countries c WHERE EXISTS (SELECT 1 FROM orders o WHERE o.country = c.id)", ALL),
    ("SELECT * FROM items WHERE order_id IN (SELECT id FROM orders WHERE customer_id = 3)", on(3)),
    ("SELECT * FROM items WHERE order_id NOT IN (SELECT id FROM orders WHERE customer_id = 3)", ALL),
    ("SELECT * FROM orders o WHERE EXISTS (SELECT 1 FROM countries WHERE o.customer_id = 3)", on(3)),
    ("SELECT * FROM orders o WHERE EXISTS (SELECT 1 WHERE customer_id = 3)", on(3)),
    ("SELECT *, (SELECT count(*) FROM items i WHERE i.order_id = o.id) FROM orders o "
     "WHERE o.customer_id = 3", on(3)),
    ("SELECT c.*, (SELECT count(*) FROM orders o WHERE o.country = c.id) FROM countries c", ALL),
    ("SELECT * FROM orders o, LATERAL (SELECT * FROM items i WHERE i.order_id = o.id) x "
     "WHERE o.customer_id = 3", on(3)),
    # CTEs carry their route to where they are read; an unread CTE restricts nothing.
    ("WITH o AS (SELECT * FROM orders WHERE customer_id = 3) SELECT * FROM o", on(3)),
    ("WITH o AS (SELECT * FROM orders WHERE customer_id = 3) SELECT * FROM orders", ALL),
    ("WITH o AS (SELECT * FROM orders WHERE customer_id = 3) SELECT * FROM countries c "
     "WHERE c.id IN (SELECT country FROM o)", on(3)),
    ("WITH orders AS (SELECT 1 AS customer_id) SELECT * FROM orders WHERE customer_id = 3", "any"),
    ("WITH RECURSIVE t AS (SELECT id, parent FROM items WHERE customer_id = 3 "
     "UNION ALL SELECT i.id, i.parent FROM items i JOIN t ON i.parent = t.id) SELECT * FROM t", on(3)),
    # Set operations.
    ("SELECT id FROM orders WHERE customer_id = 1 UNION SELECT id FROM orders WHERE customer_id = 3",
     on(1, 3)),
    ("SELECT id FROM orders WHERE customer_id IN (1, 2) INTERSECT "
     "SELECT id FROM orders WHERE customer_id IN (2, 3)", on(2)),
    ("SELECT id FROM orders WHERE customer_id = 1 EXCEPT SELECT id FROM orders", on(1)),
    ("SELECT id FROM orders WHERE customer_id = 1 UNION ALL SELECT id FROM orders", ALL),
])
def test_key_through_joins_subqueries_and_ctes(sql, expected):
    expected = frozenset({0}) if expected == "any" else expected
    assert route(sql) == expected


def test_varchar_and_uuid_keys():
    assert route("SELECT * FROM users WHERE email = 'a@b.c'") == {shard_of_text("a@b.c", SHARDS)}
    assert route("SELECT * FROM users WHERE email = 'é'::text") == {shard_of_text("é", SHARDS)}
    assert route("SELECT * FROM users WHERE email = 5") == ALL  # PostgreSQL refuses it
    assert route(f"SELECT * FROM sessions WHERE token = '{U1}'") == {shard_of_uuid(U1, SHARDS)}
    spelled = "{" + U1.upper().replace("-", "") + "}"
    assert route(f"SELECT * FROM sessions WHERE token = '{spelled}'::uuid") == {shard_of_uuid(U1, SHARDS)}
    assert route("SELECT * FROM sessions WHERE token = 'not-a-uuid'") == ALL


# --- what kind of statement, which tables ----------------------------------------


def test_omnisharded_reads_and_writes():
    facts = analyze("SELECT * FROM countries c JOIN regions r ON r.id = c.region", SCHEMA)
    assert facts.omnisharded_read and not facts.omnisharded_write
    assert facts.omnisharded_tables == ((None, "countries"), (None, "regions"))
    assert facts.sharded_tables == ()
    assert shards_for(facts, SCHEMA, any_shard=3) == {3}
    for sql in ("SELECT 1", "SELECT now()", "SHOW search_path", "VALUES (1), (2)",
                "COPY countries TO STDOUT", "EXPLAIN SELECT * FROM countries"):
        assert analyze(sql, SCHEMA).omnisharded_read, sql
    for sql in ("INSERT INTO countries (id) VALUES (1)", "UPDATE countries SET name = 'x'",
                "DELETE FROM countries WHERE id = 3", "COPY countries FROM STDIN",
                "WITH x AS (INSERT INTO countries (id) VALUES (1) RETURNING id) SELECT * FROM x"):
        facts = analyze(sql, SCHEMA)
        assert facts.omnisharded_write and not facts.omnisharded_read, sql
        assert shards_for(facts, SCHEMA) is None, sql
    facts = analyze("SELECT * FROM orders o JOIN countries c ON c.id = o.country", SCHEMA)
    assert facts.sharded_tables == ((None, "orders"),)
    assert facts.omnisharded_tables == ((None, "countries"),)
    assert not facts.omnisharded_read and shards_for(facts, SCHEMA) is None


@pytest.mark.parametrize(("sql", "kind", "writes"), [
    ("SELECT * FROM orders WHERE customer_id = 3", "select", False),
    ("SELECT * FROM orders WHERE customer_id = 3 FOR UPDATE", "select", True),
    ("SELECT nextval('s') FROM orders WHERE customer_id = 3", "select", True),
    ("INSERT INTO orders (customer_id) VALUES (3)", "insert", True),
    ("UPDATE orders SET total = 1 WHERE customer_id = 3", "update", True),
    ("DELETE FROM orders WHERE customer_id = 3", "delete", True),
    ("CREATE TABLE t (id int)", "ddl", True),
    ("ALTER TABLE orders ADD COLUMN x int", "ddl", True),
    ("BEGIN", "transaction", True),
    ("SET search_path TO x", "set", True),
    ("SHOW search_path", "show", False),
    ("COPY orders TO STDOUT", "copy", False),
    ("TRUNCATE orders", "other", True),
])
def test_kind_and_writes_are_classifys(sql, kind, writes):
    facts = analyze(sql, SCHEMA)
    assert (facts.kind, facts.writes) == (kind, writes)


def test_ddl_and_utility_statements_run_everywhere():
    for sql in ("CREATE TABLE t (id int)", "CREATE INDEX ON orders (total)", "DROP TABLE items",
                "TRUNCATE orders", "VACUUM orders", "BEGIN", "COMMIT", "SET search_path TO x",
                "LOCK orders", "CALL p()", "DO $$ BEGIN END $$"):
        assert route(sql) == ALL, sql
    facts = analyze("ALTER TABLE orders ADD COLUMN x int", SCHEMA)
    assert facts.tables == ((None, "orders"),) and facts.sharded_tables == ((None, "orders"),)


def test_several_statements_in_one_query():
    assert route("SELECT * FROM orders WHERE customer_id = 1; "
                 "SELECT * FROM orders WHERE customer_id = 3") == on(1, 3)
    assert route("SELECT * FROM orders WHERE customer_id = 1; SELECT * FROM orders") == ALL
    facts = analyze("SELECT 1; SELECT * FROM orders", SCHEMA)
    assert facts.statements == 2 and facts.kind == "select"


def test_sql_that_does_not_parse_goes_everywhere():
    facts = analyze("SELEC * FROM orders WHERE customer_id = 3", SCHEMA)
    assert not facts.parse_ok and facts.writes
    assert shards_for(facts, SCHEMA) is None
    assert route("/* pgdog_shard: 2 */ SELEC 1") == {2}
    assert not analyze(b"SELECT '\xff'", SCHEMA).parse_ok


# --- writes ------------------------------------------------------------------------


def test_update_and_delete_run_where_their_rows_are():
    assert route("UPDATE orders SET total = 0 WHERE customer_id = 3") == on(3)
    assert route("UPDATE orders SET total = 0 WHERE id = 3") == ALL
    assert route("DELETE FROM orders WHERE customer_id IN (1, 4) RETURNING id") == on(1, 4)
    assert route("DELETE FROM orders") == ALL
    assert route("DELETE FROM items i USING orders o WHERE i.order_id = o.id AND o.customer_id = 3") \
        == on(3)
    assert route("UPDATE items i SET total = 0 FROM orders o "
                 "WHERE o.id = i.order_id AND o.customer_id = 3") == on(3)
    assert route("WITH d AS (DELETE FROM orders WHERE customer_id = 3 RETURNING *) "
                 "SELECT count(*) FROM d") == on(3)
    assert route("WITH d AS (DELETE FROM orders WHERE customer_id = 3) SELECT 1") == on(3)
    assert route("WITH d AS (DELETE FROM orders WHERE customer_id = 3) "
                 "SELECT * FROM orders WHERE customer_id = 1") == on(1, 3)


@pytest.mark.parametrize("sql", [
    "UPDATE orders SET customer_id = 4 WHERE customer_id = 3",
    "UPDATE orders o SET total = 1, customer_id = 4",
    "UPDATE orders SET (total, customer_id) = (1, 4) WHERE id = 1",
    "INSERT INTO orders (id, customer_id) VALUES (1, 3) "
    "ON CONFLICT (id) DO UPDATE SET customer_id = excluded.customer_id",
    "MERGE INTO orders o USING (SELECT 1 AS id) s ON o.id = s.id "
    "WHEN MATCHED THEN UPDATE SET customer_id = 4",
    "WITH u AS (UPDATE orders SET customer_id = 4 RETURNING 1) SELECT * FROM u",
])
def test_changing_the_key_is_refused_even_with_a_hint(sql):
    error = refused(sql)
    assert error.sqlstate == "0A000"
    assert "changing it would move rows between shards" in error.message
    assert "customer_id" in error.message
    with pytest.raises(ShardingError):
        shards_for(analyze("/* pgdog_shard: 1 */ " + sql, SCHEMA), SCHEMA)
    with pytest.raises(ShardingError):
        shards_for(analyze(sql, SCHEMA), SCHEMA, shard=1)


def test_insert_rows_go_where_their_keys_belong():
    assert route("INSERT INTO orders (id, customer_id) VALUES (10, 3)") == on(3)
    assert route("INSERT INTO orders (customer_id, id) VALUES (1, 10), (4, 11), ('3', 12)") \
        == on(1, 3, 4)
    assert route("INSERT INTO orders (id, customer_id) VALUES (1, NULL)") == {0}
    assert route("INSERT INTO orders (id, customer_id) VALUES (1, 3.5)") == on(4)  # rounds
    assert route("INSERT INTO orders (id, customer_id) VALUES (1, $2)", [b"1", b"4"]) == on(4)
    assert route("INSERT INTO orders (id, customer_id) VALUES (1, $1)", [None]) == {0}
    assert route("INSERT INTO users (email) VALUES (5)") == {shard_of_text("5", SHARDS)}
    assert route("INSERT INTO orders (id, customer_id) VALUES (1, 3) ON CONFLICT (id) "
                 "DO UPDATE SET total = excluded.total RETURNING *") == on(3)
    facts = analyze("INSERT INTO orders (customer_id) VALUES ($1), (2), ($2)", SCHEMA)
    assert insert_rows_by_shard(facts, SCHEMA, [b"4", b"1"]) == {3: (0,), 2: (1,), 0: (2,)}
    assert insert_rows_by_shard(facts, SCHEMA, [b"2", b"2"]) == {2: (0, 1, 2)}
    error = refused("INSERT INTO orders (customer_id) VALUES ($1)", params=[b"abc"])
    assert error.sqlstate == "22P02" and "'abc'" in error.message


@pytest.mark.parametrize(("sql", "words"), [
    ("INSERT INTO orders VALUES (1, 3)", "without a column list"),
    ("INSERT INTO orders (id, total) VALUES (1, 3)", "does not set the sharding key customer_id"),
    ("INSERT INTO orders (id, customer_id) SELECT id, customer_id FROM orders_old",
     "INSERT INTO orders ... SELECT"),
    ("INSERT INTO orders DEFAULT VALUES", "without a column list"),
    ("INSERT INTO orders (customer_id) VALUES (DEFAULT)", "in row 1 is not a constant"),
    ("INSERT INTO orders (customer_id) VALUES (1), (nextval('s'))", "in row 2 is not a constant"),
    ("INSERT INTO orders (customer_id) VALUES ('abc')", "in row 1 is not a constant"),
    ("MERGE INTO orders o USING new_orders n ON o.id = n.id "
     "WHEN NOT MATCHED THEN INSERT (id, customer_id) VALUES (n.id, n.customer_id)", "MERGE INTO orders"),
    ("WITH x AS (INSERT INTO orders (customer_id) VALUES (1), (2) RETURNING id) SELECT * FROM x",
     "belong to different shards"),
])
def test_inserts_the_proxy_cannot_place_are_refused_unless_hinted(sql, words):
    facts = analyze(sql, SCHEMA)
    assert facts.error == "0A000" and facts.hint_overrides_error
    assert words in facts.reason
    with pytest.raises(ShardingError) as info:
        shards_for(facts, SCHEMA)
    assert info.value.sqlstate == "0A000" and info.value.message == facts.reason
    assert route("/* pgdog_shard: 1 */ " + sql) == {1}
    assert shards_for(facts, SCHEMA, shard=2) == {2}


def test_insert_without_column_list_needs_the_column_order():
    assert analyze("INSERT INTO orders VALUES (1, 3)", SCHEMA).needs_column_order
    assert not analyze("INSERT INTO orders (id, customer_id) VALUES (1, 3)", SCHEMA).needs_column_order
    assert not analyze("INSERT INTO countries VALUES (1, 'x')", SCHEMA).needs_column_order


def test_rows_that_cannot_be_split_must_share_a_shard():
    sql = "WITH x AS (INSERT INTO orders (customer_id) VALUES ($1), ($2) RETURNING id) SELECT * FROM x"
    facts = analyze(sql, SCHEMA)
    assert facts.insert_keys is None and facts.error is None
    assert shards_for(facts, SCHEMA, [b"1", b"12"]) == on(1)  # 1 and 12: both shard 0
    with pytest.raises(ShardingError, match="belong to different shards"):
        shards_for(facts, SCHEMA, [b"1", b"2"])
    facts = analyze("INSERT INTO orders (customer_id) VALUES ($1); INSERT INTO orders "
                    "(customer_id) VALUES (1), (2)", SCHEMA)
    assert facts.error == "0A000" and facts.insert_keys is None


def test_writes_to_omnisharded_tables_from_sharded_rows_are_refused():
    for sql in ("INSERT INTO countries (id) SELECT country FROM orders",
                "UPDATE countries c SET n = 1 FROM orders o WHERE o.country = c.id",
                "DELETE FROM countries WHERE id IN (SELECT country FROM orders WHERE customer_id = 3)"):
        error = refused(sql)
        assert error.sqlstate == "0A000" and "the copies would differ" in error.message, sql
    assert route("INSERT INTO countries (id) SELECT id FROM regions") == ALL


def test_copy():
    facts = analyze("COPY orders (id, customer_id, total) FROM STDIN", SCHEMA)
    assert (facts.kind, facts.copy_key_index, facts.needs_column_order) == ("copy", 1, False)
    assert shards_for(facts, SCHEMA) is None and not facts.omnisharded_write
    assert analyze("COPY orders FROM STDIN", SCHEMA).needs_column_order
    assert refused("COPY orders (id, total) FROM STDIN").sqlstate == "0A000"
    assert route("COPY (SELECT * FROM orders WHERE customer_id = 3) TO STDOUT") == on(3)
    assert route("COPY orders TO STDOUT") == ALL


# --- hints --------------------------------------------------------------------------


def test_comment_hints():
    assert route("/* pgdog_shard: 2 */ SELECT * FROM orders WHERE customer_id = 1") == {2}
    assert route("SELECT * FROM orders /* app=x, PGDOG_SHARD:3 */") == {3}
    assert route("/* pgdog_sharding_key: 4 */ SELECT * FROM orders") == on(4)
    assert route("/* pgdog_sharding_key: 'a@b.c' */ SELECT * FROM users") == {shard_of_text("a@b.c", SHARDS)}
    # Not in a comment: nothing.
    assert route("SELECT * FROM orders WHERE note = '/* pgdog_shard: 2 */'") == ALL
    # The key's type follows the tables the statement touches.
    assert analyze("/* pgdog_sharding_key: 4 */ SELECT * FROM orders", SCHEMA).key_data_type == "bigint"
    error = refused("/* pgdog_shard: 4 */ SELECT 1")
    assert error.sqlstate == "22023" and "0 to 3" in error.message
    assert refused("/* pgdog_shard: x */ SELECT 1").sqlstate == "22023"
    assert refused("/* pgdog_sharding_key: abc */ SELECT * FROM orders").sqlstate == "22P02"
    assert refused("/* pgdog_sharding_key: 1 */ SELECT 1").sqlstate == "0A000"  # which key type?
    one_type = ShardingSchema(2, (ShardedColumn("orders", "customer_id"),))
    assert route("/* pgdog_sharding_key: 2 */ SELECT 1", schema=one_type) == \
        {shard_of_int(2, 2)}


@pytest.mark.parametrize(("sql", "name", "value", "local"), [
    ("SET pgdog.shard TO 1", "shard", 1, False),
    ("SET pgdog.shard = '3'", "shard", 3, False),
    ("set local PGDOG.SHARD to 0", "shard", 0, True),
    ("SET pgdog.sharding_key TO 'a@b.c'", "sharding_key", "a@b.c", False),
    ("SET LOCAL pgdog.sharding_key = 42", "sharding_key", "42", True),
    ("RESET pgdog.shard", "shard", None, False),
    ("SET pgdog.sharding_key TO DEFAULT", "sharding_key", None, False),
    ("RESET ALL", "all", None, False),
])
def test_set_hints(sql, name, value, local):
    facts = analyze(sql, SCHEMA)
    assert facts.kind == "set" and facts.error is None
    assert (facts.setting.name, facts.setting.value, facts.setting.local) == (name, value, local)


def test_set_hints_that_cannot_be():
    assert analyze("SET search_path TO x", SCHEMA).setting is None
    for sql in ("SET pgdog.shard TO 4", "SET pgdog.shard TO 'x'", "SET pgdog.shard TO 1, 2"):
        assert analyze(sql, SCHEMA).error == "22023", sql
    facts = analyze("SET pgdog.shard TO 1; SELECT 1", SCHEMA)
    assert facts.error == "0A000" and facts.setting is None


def test_session_hints_and_their_precedence():
    sql = "SELECT * FROM orders WHERE customer_id = 1"
    assert route(sql, shard=3) == {3}
    assert route(sql, sharding_key="4") == on(4)
    assert route(sql, shard=3, sharding_key="4") == {3}
    assert route("/* pgdog_shard: 2 */ " + sql, shard=3) == {2}
    with pytest.raises(ShardingError) as info:
        route(sql, shard=7)
    assert info.value.sqlstate == "22023"
    with pytest.raises(ShardingError) as info:
        route(sql, sharding_key="x")
    assert info.value.sqlstate == "22P02"


# --- parameters ---------------------------------------------------------------------


def _binary_array(values: list[int | None], oid: int = 20, size: int = 8) -> bytes:
    out = struct.pack("!iiI", 1, int(None in values), oid) + struct.pack("!ii", len(values), 1)
    for v in values:
        out += struct.pack("!i", -1) if v is None else struct.pack("!i", size) + \
            v.to_bytes(size, "big", signed=True)
    return out


def test_parameters_text_and_binary():
    sql = "SELECT * FROM orders WHERE customer_id = $1"
    assert route(sql, [b"3"]) == on(3)
    assert route(sql, [b" -3 "]) == on(-3)
    assert route(sql, [b"1_000"]) == on(1000)
    assert route(sql, [(3).to_bytes(8, "big")], [1]) == on(3)
    assert route(sql, [(-3).to_bytes(4, "big", signed=True)], [1]) == on(-3)
    assert route(sql, [(3).to_bytes(2, "big")], [1]) == on(3)
    assert route(sql, [b"3"], [1], param_types=[25]) == on(3)  # declared text, sent binary
    assert route(sql, [None]) == {0}  # NULL matches nothing: any one shard
    assert route(sql, [b"abc"]) == ALL  # PostgreSQL rejects it on every shard
    assert route(sql, [b"99999999999999999999"]) == ALL
    assert route(sql, [b"\x00\x03"], [1], param_types=[20]) == ALL
    assert route(sql, []) == ALL
    two = "SELECT * FROM orders WHERE customer_id = $2 AND total > $1"
    assert route(two, [b"\x00\x00\x00\x01", b"4"], [1, 0]) == on(4)
    assert route("SELECT * FROM orders WHERE customer_id = $1::bigint", [b"4"]) == on(4)
    assert route("SELECT * FROM orders WHERE customer_id = $1::text", [b"4"]) == ALL
    assert route("SELECT * FROM orders WHERE customer_id IN ($1, $2)", [b"1", b"4"]) == on(1, 4)
    assert route("SELECT * FROM users WHERE email = $1", ["é".encode()]) == {shard_of_text("é", SHARDS)}
    assert route("SELECT * FROM users WHERE email = $1", ["é".encode()], [1]) == \
        {shard_of_text("é", SHARDS)}
    token = "SELECT * FROM sessions WHERE token = $1"
    assert route(token, [U1.encode()]) == {shard_of_uuid(U1, SHARDS)}
    assert route(token, [uuid.UUID(U1).bytes], [1]) == {shard_of_uuid(U1, SHARDS)}
    assert route(token, [b"short"], [1]) == ALL


def test_array_parameters():
    sql = "SELECT * FROM orders WHERE customer_id = ANY($1)"
    assert route(sql, [b"{1,4}"]) == on(1, 4)
    assert route(sql, [b' { "1" , 4, NULL } ']) == on(1, 4)
    assert route(sql, [b"[0:1]={1,4}"]) == on(1, 4)
    assert route(sql, [b"{{1},{4}}"]) == on(1, 4)
    assert route(sql, [b"{}"]) == {0}
    assert route(sql, [None]) == {0}
    assert route(sql, [b"{1,x}"]) == ALL
    assert route(sql, [b"{1,"]) == ALL
    assert route(sql, [_binary_array([1, None, 4])], [1]) == on(1, 4)
    assert route(sql, [_binary_array([1, 4], oid=23, size=4)], [1]) == on(1, 4)
    assert route(sql, [struct.pack("!iiI", 0, 0, 20)], [1]) == {0}  # empty
    assert route(sql, [_binary_array([1, 4])[:-3]], [1]) == ALL  # truncated
    assert route("SELECT * FROM orders WHERE customer_id = ANY($1::bigint[])", [b"{3}"]) == on(3)
    assert route("SELECT * FROM orders WHERE customer_id = ANY($1::text[])", [b"{3}"]) == ALL
    users = "SELECT * FROM users WHERE email = ANY($1)"
    assert route(users, [b'{"a,b",c}']) == {shard_of_text("a,b", SHARDS), shard_of_text("c", SHARDS)}


def test_text_array_parser():
    assert parse_text_array('{1, "a\\"b", NULL, "NULL", nulls}') == ["1", 'a"b', None, "NULL", "nulls"]
    assert parse_text_array("{}") == []
    for bad in ("", "{", "{1,}", "{1} x", "{a b\"c}", "1,2"):
        with pytest.raises(ValueError):
            parse_text_array(bad)


# --- the route formulas ------------------------------------------------------------

_LEAVES = st.one_of(
    st.sampled_from([routes.ALL, routes.ANY, routes.TRUE]),
    st.frozensets(st.integers(0, SHARDS - 1), max_size=3),
    st.builds(lambda i: ("=", i, "bigint"), st.integers(0, 2)),
)
_TREES = st.recursive(_LEAVES, lambda kids: st.tuples(st.sampled_from(["and", "or", "?"]),
                                                      st.lists(kids, min_size=1, max_size=3)),
                      max_leaves=8)


def _built(tree):
    if isinstance(tree, tuple) and tree[0] in ("and", "or", "?"):
        parts = [_built(t) for t in tree[1]]
        if tree[0] == "?":
            return routes.restrict(parts[0])
        return routes.every(parts) if tree[0] == "and" else routes.some(parts)
    return tree


def _reference(tree, params):
    """Every part evaluated first, then combined: what the folded formula must agree with."""
    if isinstance(tree, tuple) and tree[0] in ("and", "or", "?"):
        parts = [_reference(t, params) for t in tree[1]]
        if tree[0] == "?":
            return routes.restrict(parts[0])
        return routes.every(parts) if tree[0] == "and" else routes.some(parts)
    return routes.evaluate(tree, SHARDS, params, (), ())


@settings(max_examples=300, deadline=None)
@given(tree=_TREES, params=st.lists(st.sampled_from([b"1", b"2", b"3", b"x", None]),
                                    min_size=3, max_size=3))
def test_folding_a_route_does_not_change_what_it_evaluates_to(tree, params):
    assert routes.evaluate(_built(tree), SHARDS, params, (), ()) == _reference(tree, params)


# --- caching and cost ---------------------------------------------------------------


def test_facts_cache_is_bounded_lru():
    cache = FactsCache(SCHEMA, max_entries=2)
    first = cache.get("SELECT * FROM orders WHERE customer_id = $1")
    assert cache.get("SELECT * FROM orders WHERE customer_id = $1") is first
    cache.get("SELECT 1")
    cache.get("SELECT 2")
    assert len(cache) == 2
    assert cache.get("SELECT * FROM orders WHERE customer_id = $1") is not first
    assert isinstance(first, ShardingFacts)


# --- the schema and the table-less entry ----------------------------------------------


def test_schema_names():
    assert identifier_parts('Sales."Big Orders"') == ("sales", "Big Orders")
    assert identifier_parts(' a . "b""c" ') == ("a", 'b"c')
    for bad in ("", "a..b", '"open', "a b"):
        with pytest.raises(ValueError):
            identifier_parts(bad)
    schema = ShardingSchema(2, (ShardedColumn("Orders", "Customer_ID"),
                                ShardedColumn('sales."Big"', "k", "uuid"),
                                ShardedColumn("public.items", "k")))
    assert schema.key_of("orders") == ("customer_id", "bigint", True)
    assert schema.key_of("orders", "anything") == ("customer_id", "bigint", True)
    assert schema.key_of("Orders") is None  # "Orders" quoted in SQL is another table
    assert schema.key_of("Big", "sales") == ("k", "uuid", True)
    assert schema.key_of("big", "sales") is None
    assert schema.key_of("items") == ("k", "bigint", True)
    assert schema.key_of("items", "other") is None
    anywhere = ShardingSchema(2, (ShardedColumn(None, "tenant_id", "uuid"),
                                  ShardedColumn("orders", "customer_id")))
    assert anywhere.sharded_column("orders") == ShardedColumn("orders", "customer_id")
    assert anywhere.sharded_column("plans") == ShardedColumn(None, "tenant_id", "uuid")
    assert schema.sharded_column("plans") is None
    with pytest.raises(ValueError):
        ShardingSchema(0)
    assert route('SELECT * FROM "Orders" WHERE customer_id = 1') == frozenset({0})  # omnisharded


def test_table_less_entry_shards_every_table_with_the_column():
    schema = ShardingSchema(SHARDS, (ShardedColumn(None, "tenant_id"),
                                     ShardedColumn("orders", "customer_id")))
    assert route("SELECT * FROM users WHERE tenant_id = 3", schema=schema) == on(3)
    assert route("SELECT * FROM users u JOIN posts p ON p.user_id = u.id WHERE p.tenant_id = 3",
                 schema=schema) == on(3)
    # The orders entry wins for orders: tenant_id there is an ordinary column.
    assert route("SELECT * FROM orders WHERE tenant_id = 3", schema=schema) == ALL
    assert route("SELECT * FROM orders WHERE customer_id = 3", schema=schema) == on(3)
    facts = analyze("SELECT * FROM plans", schema)
    assert facts.sharded_tables == ((None, "plans"),) and shards_for(facts, schema) is None
    assert route("INSERT INTO users (id, tenant_id) VALUES (1, 4)", schema=schema) == on(4)
    assert route("INSERT INTO plans (id) VALUES (1)", schema=schema) == ALL
    assert analyze("UPDATE users SET tenant_id = 1", schema).error == "0A000"


# --- PostgreSQL as the oracle ------------------------------------------------------------


@pytest.fixture(scope="module")
def conn(pg):
    """A connection to a database with tables hash-partitioned like the shards (MODULUS 4)."""
    pg.sql(
        "DROP TABLE IF EXISTS hk_orders, hk_users, hk_sessions, hk_split_a, hk_split_b;"
        "CREATE TABLE hk_orders (id int, customer_id bigint) PARTITION BY HASH (customer_id);"
        "CREATE TABLE hk_users (email varchar) PARTITION BY HASH (email);"
        "CREATE TABLE hk_sessions (token uuid) PARTITION BY HASH (token);"
        + "".join(f"CREATE TABLE hk_{t}_{r} PARTITION OF hk_{t} "
                  f"FOR VALUES WITH (MODULUS {SHARDS}, REMAINDER {r});"
                  for t in ("orders", "users", "sessions") for r in range(SHARDS))
        + "CREATE TABLE hk_split_a (id int, customer_id bigint, note text);"
          "CREATE TABLE hk_split_b (id int, customer_id bigint, note text);"
          "GRANT ALL ON ALL TABLES IN SCHEMA public TO app;"
          "GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO app",
        dbname=APP_DB)
    with psycopg.connect(pg.dsn("app", PG_USERS["app"][0], APP_DB), autocommit=True) as c:
        yield c


ORACLE = ShardingSchema(SHARDS, (ShardedColumn("hk_orders", "customer_id"),
                                 ShardedColumn("hk_users", "email", "varchar"),
                                 ShardedColumn("hk_sessions", "token", "uuid")))


def _partition_of(conn, sql: str, params=(), formats=(), types=()) -> int:
    """Run an INSERT ... RETURNING tableoid::regclass with raw Bind values; the partition's
    remainder, which is the shard PostgreSQL chose."""
    result = conn.pgconn.exec_params(sql.encode(), list(params), list(types) or None,
                                     list(formats) or None)
    assert result.status == psycopg.pq.ExecStatus.TUPLES_OK, result.error_message
    return int(result.get_value(0, 0).decode().rsplit("_", 1)[1])


@pytest.mark.parametrize(("literal", "table", "column"), [
    ("42", "orders", "customer_id"), ("-7", "orders", "customer_id"),
    ("' 42 '", "orders", "customer_id"), ("'-9223372036854775808'", "orders", "customer_id"),
    ("9999999999", "orders", "customer_id"), ("4.5", "orders", "customer_id"),
    ("NULL", "orders", "customer_id"), ("'x'", "users", "email"), ("''", "users", "email"),
    ("'日本語'", "users", "email"), ("NULL", "users", "email"),
    (f"'{U1}'", "sessions", "token"), (f"'{{{U1.replace('-', '').upper()}}}'", "sessions", "token"),
])
def test_literal_keys_land_where_postgresql_puts_them(conn, literal, table, column):
    sql = f"INSERT INTO hk_{table} ({column}) VALUES ({literal}) RETURNING tableoid::regclass"
    assert route(sql, schema=ORACLE) == {_partition_of(conn, sql)}


@pytest.mark.parametrize(("value", "fmt", "oid"), [
    (b"42", 0, 0), (b" -42 ", 0, 0), (b"+0", 0, 20), (None, 0, 0),
    ((42).to_bytes(8, "big"), 1, 20), ((-42).to_bytes(4, "big", signed=True), 1, 23),
    ((42).to_bytes(2, "big"), 1, 21), ((1 << 40).to_bytes(8, "big"), 1, 0),
])
def test_bind_values_land_where_postgresql_puts_them(conn, value, fmt, oid):
    sql = "INSERT INTO hk_orders (customer_id) VALUES ($1) RETURNING tableoid::regclass"
    expected = _partition_of(conn, sql, [value], [fmt], [oid])
    assert route(sql, [value], [fmt], schema=ORACLE, param_types=[oid] if oid else ()) == {expected}


@pytest.mark.parametrize(("value", "fmt", "table", "column"), [
    ("ß@x".encode(), 0, "users", "email"), ("ß@x".encode(), 1, "users", "email"),
    (U1.encode(), 0, "sessions", "token"), (uuid.UUID(U1).bytes, 1, "sessions", "token"),
    (None, 1, "sessions", "token"),
])
def test_text_and_uuid_bind_values_land_where_postgresql_puts_them(conn, value, fmt, table, column):
    sql = f"INSERT INTO hk_{table} ({column}) VALUES ($1) RETURNING tableoid::regclass"
    assert route(sql, [value], [fmt], schema=ORACLE) == {_partition_of(conn, sql, [value], [fmt])}


def test_where_reads_find_the_rows_postgresql_partitioned(conn):
    conn.execute("INSERT INTO hk_orders (id, customer_id) SELECT g, g % 50 FROM generate_series(1, 200) g")
    for key in (0, 7, 13, 49):
        sql = f"SELECT DISTINCT tableoid::regclass::text FROM hk_orders WHERE customer_id = {key}"
        found = {int(row[0].rsplit("_", 1)[1]) for row in conn.execute(sql)}
        assert route(sql, schema=ORACLE) == found
    sql = "SELECT DISTINCT tableoid::regclass::text FROM hk_orders WHERE customer_id = ANY($1)"
    rows = conn.execute(sql.replace("$1", "%s"), [[3, 4, 5]]).fetchall()
    assert route(sql, [b"{3,4,5}"], schema=ORACLE) == {int(r[0].rsplit("_", 1)[1]) for r in rows}


SPLIT = [
    ("INSERT INTO {t} (id, customer_id, note) VALUES (1, 1, 'a'), (2, 2, 'b'), (3, 3, 'c'), "
     "(4, 4, 'd'), (5, 12, 'e, (f)')", ()),
    ("/* app */ INSERT INTO {t} (note, customer_id, id) VALUES\n  ($1, $2, 1),\n  ($3, $4, 2),"
     "\n  ($5, 1, $6) RETURNING id, note || $7",
     (b"x", b"4", b"y", b"2", b"z", b"3", b"!")),
    ("WITH v AS (SELECT 'w' AS w) INSERT INTO {t} (id, customer_id, note) VALUES "
     "($1, $2, (SELECT w FROM v)), ($3, $4, 'n') RETURNING *", (b"1", b"1", b"2", b"2")),
]


@pytest.mark.parametrize(("template", "params"), SPLIT)
def test_split_inserts_insert_the_same_rows(conn, template, params):
    conn.execute("TRUNCATE hk_split_a, hk_split_b")
    schema = ShardingSchema(SHARDS, (ShardedColumn("hk_split_b", "customer_id"),))
    whole = template.format(t="hk_split_a")
    result = conn.pgconn.exec_params(whole.encode(), list(params))
    assert result.status in (psycopg.pq.ExecStatus.TUPLES_OK, psycopg.pq.ExecStatus.COMMAND_OK), \
        result.error_message
    sql = template.format(t="hk_split_b")
    facts = analyze(sql, schema)
    groups = insert_rows_by_shard(facts, schema, params)
    assert len(groups) > 1
    pieces = split_insert(sql, facts, groups)
    assert set(pieces) == set(groups)
    for shard, (piece, indexes) in pieces.items():
        result = conn.pgconn.exec_params(piece.encode(), [params[i] for i in indexes])
        assert result.status in (psycopg.pq.ExecStatus.TUPLES_OK, psycopg.pq.ExecStatus.COMMAND_OK), \
            (piece, result.error_message)
        # Each statement holds only rows of its shard.
        part = analyze(piece, schema)
        assert shards_for(part, schema, [params[i] for i in indexes]) == {shard}
    rows = "SELECT id, customer_id, note FROM {} ORDER BY id, customer_id, note"
    assert conn.execute(rows.format("hk_split_a")).fetchall() == \
        conn.execute(rows.format("hk_split_b")).fetchall()


def test_split_insert_of_one_shard_is_the_statement_itself():
    sql = "INSERT INTO orders (customer_id, id) VALUES ($1, $3), (1, $2)"
    facts = analyze(sql, SCHEMA)
    groups = insert_rows_by_shard(facts, SCHEMA, [b"12", b"5", b"6"])
    assert groups == {0: (0, 1)}
    assert split_insert(sql, facts, groups) == {0: (sql, (0, 1, 2))}
    with pytest.raises(ValueError):
        split_insert(sql, facts, {0: (0,)})
    with pytest.raises(ValueError):
        split_insert("SELECT 1", analyze("SELECT 1", SCHEMA), {0: (0,)})
