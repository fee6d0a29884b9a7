"""The sans-IO SQL classifier and its parse cache: no server needed."""

from __future__ import annotations

import pytest

from trio_pgdog.router.cache import ParseCache
from trio_pgdog.router.classify import KINDS, WRITING_FUNCTIONS, StatementFacts, classify

# (sql, kind, writes, read_only_transaction_start, parse_ok)
CASES = [
    # reads
    ("SELECT 1", "select", False, False, True),
    ("select abalance from pgbench_accounts where aid = $1", "select", False, False, True),
    ("SELECT * FROM a JOIN b ON a.id = b.a_id WHERE b.x > 3", "select", False, False, True),
    ("WITH x AS (SELECT * FROM t) SELECT * FROM x", "select", False, False, True),
    ("VALUES (1), (2)", "select", False, False, True),
    ("SHOW search_path", "show", False, False, True),
    ("SHOW ALL", "show", False, False, True),
    ("EXPLAIN SELECT * FROM t", "other", False, False, True),
    ("EXPLAIN ANALYZE SELECT * FROM t", "other", False, False, True),
    ("COPY t TO STDOUT", "copy", False, False, True),
    ("COPY (SELECT * FROM t) TO STDOUT WITH (FORMAT csv)", "copy", False, False, True),
    ("SELECT lo_get(42)", "select", False, False, True),
    ("", "other", False, False, True),
    ("/* only a comment */", "other", False, False, True),
    # data changes
    ("INSERT INTO t VALUES (1)", "insert", True, False, True),
    ("INSERT INTO t SELECT * FROM s", "insert", True, False, True),
    ("UPDATE t SET a = 1", "update", True, False, True),
    ("DELETE FROM t WHERE a = 1", "delete", True, False, True),
    (
        "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a",
        "merge",
        True,
        False,
        True,
    ),
    ("COPY t FROM STDIN", "copy", True, False, True),
    ("COPY t (a, b) FROM STDIN WITH (FORMAT binary)", "copy", True, False, True),
    ("COPY t TO '/tmp/t.csv'", "copy", True, False, True),
    ("TRUNCATE t", "other", True, False, True),
    ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", "other", True, False, True),
    # DDL
    ("CREATE TABLE t (a int)", "ddl", True, False, True),
    ("ALTER TABLE t ADD COLUMN b int", "ddl", True, False, True),
    ("DROP TABLE t", "ddl", True, False, True),
    ("CREATE INDEX ON t (a)", "ddl", True, False, True),
    ("CREATE VIEW v AS SELECT 1", "ddl", True, False, True),
    ("CREATE TABLE t2 AS SELECT * FROM t", "ddl", True, False, True),
    ("ALTER TABLE t RENAME TO u", "ddl", True, False, True),
    ("GRANT SELECT ON t TO bob", "ddl", True, False, True),
    ("COMMENT ON TABLE t IS 'x'", "ddl", True, False, True),
    # row locks, at the top or nested
    ("SELECT * FROM t FOR UPDATE", "select", True, False, True),
    ("SELECT * FROM t FOR NO KEY UPDATE", "select", True, False, True),
    ("SELECT * FROM t FOR SHARE", "select", True, False, True),
    ("SELECT * FROM t FOR KEY SHARE SKIP LOCKED", "select", True, False, True),
    ("SELECT * FROM (SELECT * FROM t FOR SHARE) s", "select", True, False, True),
    ("SELECT * FROM a WHERE id IN (SELECT a_id FROM b FOR UPDATE)", "select", True, False, True),
    # data-modifying CTEs
    ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", "select", True, False, True),
    ("WITH u AS (UPDATE t SET a = 1 RETURNING id) SELECT count(*) FROM u", "select", True, False, True),
    ("WITH i AS (INSERT INTO t VALUES (1) RETURNING id) SELECT id FROM i", "select", True, False, True),
    ("WITH r AS (SELECT 1) INSERT INTO t SELECT * FROM r", "insert", True, False, True),
    # SELECT INTO
    ("SELECT * INTO t2 FROM t", "select", True, False, True),
    # functions that write or lock, anywhere in the statement
    ("SELECT nextval('s')", "select", True, False, True),
    ("SELECT pg_catalog.nextval('s')", "select", True, False, True),
    ("SELECT * FROM t WHERE id = (SELECT nextval('s'))", "select", True, False, True),
    ("SELECT x FROM (SELECT NEXTVAL('s') AS x) q", "select", True, False, True),
    ("SELECT setval('s', 10)", "select", True, False, True),
    ("SELECT currval('s')", "select", True, False, True),
    ("SELECT pg_advisory_lock(1)", "select", True, False, True),
    ("SELECT pg_try_advisory_xact_lock(1, 2)", "select", True, False, True),
    ("SELECT pg_advisory_unlock_all()", "select", True, False, True),
    ("SELECT pg_notify('ch', 'hi')", "select", True, False, True),
    ("SELECT lo_create(0)", "select", True, False, True),
    ("SELECT lo_unlink(42)", "select", True, False, True),
    ("SELECT txid_current()", "select", True, False, True),
    ("SELECT pg_current_xact_id()", "select", True, False, True),
    ("SELECT set_config('search_path', 'x', false)", "select", True, False, True),
    ("SELECT * FROM generate_series(1, nextval('s'))", "select", True, False, True),
    ("SELECT 1 UNION ALL SELECT nextval('s')", "select", True, False, True),
    # EXPLAIN follows what it explains
    ("EXPLAIN ANALYZE INSERT INTO t VALUES (1)", "other", True, False, True),
    ("EXPLAIN (ANALYZE, BUFFERS) DELETE FROM t", "other", True, False, True),
    ("EXPLAIN SELECT * FROM t FOR UPDATE", "other", True, False, True),
    # transactions
    ("BEGIN", "transaction", True, False, True),
    ("BEGIN READ ONLY", "transaction", False, True, True),
    ("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY", "transaction", False, True, True),
    ("BEGIN READ WRITE", "transaction", True, False, True),
    ("BEGIN READ ONLY, READ WRITE", "transaction", True, False, True),
    ("START TRANSACTION", "transaction", True, False, True),
    ("START TRANSACTION READ ONLY", "transaction", False, True, True),
    ("START TRANSACTION ISOLATION LEVEL SERIALIZABLE READ ONLY", "transaction", False, True, True),
    ("START TRANSACTION ISOLATION LEVEL SERIALIZABLE", "transaction", True, False, True),
    ("COMMIT", "transaction", False, False, True),
    ("ROLLBACK", "transaction", False, False, True),
    ("SAVEPOINT s1", "transaction", False, False, True),
    ("RELEASE SAVEPOINT s1", "transaction", False, False, True),
    ("ROLLBACK TO SAVEPOINT s1", "transaction", False, False, True),
    ("PREPARE TRANSACTION 'x'", "transaction", True, False, True),
    ("COMMIT PREPARED 'x'", "transaction", True, False, True),
    # session statements go to the primary
    ("SET search_path TO app", "set", True, False, True),
    ("SET LOCAL statement_timeout = 1000", "set", True, False, True),
    ("SET TRANSACTION READ ONLY", "set", True, False, True),
    ("RESET ALL", "set", True, False, True),
    ("SET pgdog.role TO 'replica'", "set", True, False, True),
    ("DISCARD ALL", "other", True, False, True),
    ("LISTEN ch", "other", True, False, True),
    ("PREPARE p AS SELECT 1", "other", True, False, True),
    ("DEALLOCATE p", "other", True, False, True),
    ("DO $$ BEGIN END $$", "other", True, False, True),
    ("CALL proc()", "other", True, False, True),
    ("VACUUM t", "other", True, False, True),
    # several statements: the first one's kind, writes if any writes
    ("SELECT 1; SELECT 2", "select", False, False, True),
    ("SELECT 1; INSERT INTO t VALUES (1)", "select", True, False, True),
    ("BEGIN READ ONLY; SELECT * FROM t; COMMIT", "transaction", False, True, True),
    ("BEGIN; SELECT * FROM t; COMMIT", "transaction", True, False, True),
    # not parseable: primary
    ("SELEC 1", "other", True, False, False),
    ("SELECT 'unterminated", "other", True, False, False),
    ("SELECT 1 FROM", "other", True, False, False),
    ("SELECT 1\x00; DELETE FROM t", "other", True, False, False),
]


@pytest.mark.parametrize(("sql", "kind", "writes", "ro_start", "parse_ok"), CASES)
def test_classification(sql: str, kind: str, writes: bool, ro_start: bool, parse_ok: bool) -> None:
    facts = classify(sql)
    assert (facts.kind, facts.writes, facts.read_only_transaction_start, facts.parse_ok) == (
        kind,
        writes,
        ro_start,
        parse_ok,
    )
    assert facts.kind in KINDS


def test_bytes_and_str_agree() -> None:
    sql = "SELECT * FROM pg_catalog.pg_class /* pgdog_role: primary */"
    assert classify(sql.encode()) == classify(sql)
    assert classify(b"SELECT '\xff'").parse_ok is False  # not UTF-8


def test_writing_functions_are_lower_case_names() -> None:
    assert all(name == name.lower() and "." not in name for name in WRITING_FUNCTIONS)


def test_facts_are_frozen_and_hashable() -> None:
    facts = classify("SELECT 1")
    hash(facts)
    with pytest.raises(AttributeError):
        facts.writes = True  # type: ignore[misc]


@pytest.mark.parametrize(
    ("sql", "tables"),
    [
        ("SELECT * FROM pg_catalog.pg_authid", (("pg_catalog", "pg_authid"),)),
        ("SELECT * FROM accounts", ((None, "accounts"),)),
        ("SELECT * FROM public.a JOIN b ON true", (("public", "a"), (None, "b"))),
        ("SELECT * FROM a, a AS a2", ((None, "a"),)),
        # a table used in a CTE body counts; the CTE's own name does not
        ("WITH x AS (SELECT * FROM app.orders) SELECT * FROM x", (("app", "orders"),)),
        (
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d JOIN u USING (id)",
            {(None, "t"), (None, "u")},
        ),
        ("SELECT * FROM a WHERE id IN (SELECT a_id FROM s.b)", {(None, "a"), ("s", "b")}),
        ("SELECT (SELECT max(x) FROM c) FROM a", {(None, "a"), (None, "c")}),
        ("INSERT INTO t SELECT * FROM s.src", {(None, "t"), ("s", "src")}),
        ("COPY t FROM STDIN", ((None, "t"),)),
        ("COPY app.t (a) TO STDOUT", (("app", "t"),)),
        ("UPDATE t SET a = o.a FROM other o WHERE o.id = t.id", {(None, "t"), (None, "other")}),
        ("DELETE FROM s.t USING u WHERE u.id = t.id", {("s", "t"), (None, "u")}),
        ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", {(None, "t"), (None, "s")}),
        ("SELECT * INTO new_t FROM t", {(None, "new_t"), (None, "t")}),
        ("LOCK TABLE a, s.b", {(None, "a"), ("s", "b")}),
        ("EXPLAIN SELECT * FROM t", ((None, "t"),)),
        ("SELECT 1; SELECT * FROM a; SELECT * FROM a", ((None, "a"),)),
        ("SELECT * FROM generate_series(1, 3)", ()),
        ("SELEC * FROM t", ()),
    ],
)
def test_tables(sql: str, tables: tuple[tuple[str | None, str], ...] | set[tuple[str | None, str]]) -> None:
    found = classify(sql).tables
    assert len(found) == len(set(found))  # no duplicates
    if isinstance(tables, set):
        assert set(found) == tables
    else:
        assert found == tables


@pytest.mark.parametrize(
    ("sql", "hint"),
    [
        ("/* pgdog_role: replica */ SELECT 1", "replica"),
        ("SELECT 1 /* pgdog_role: primary */", "primary"),
        ("SELECT a, /* pgdog_role: replica */ b FROM t", "replica"),
        ("SELECT * FROM t WHERE /*pgdog_role:primary*/ a = 1", "primary"),
        ("/* PGDOG_ROLE: Replica */ SELECT 1", "replica"),
        ("/* app=web pgdog_role: replica */ SELECT 1", "replica"),
        ("/* pgdog_role: replica */ SELECT 1 /* pgdog_role: primary */", "primary"),  # the safe one wins
        ("SELECT '/* pgdog_role: replica */'", None),  # inside a string, not a comment
        ("SELECT 1 /* pgdog_role: elsewhere */", None),
        ("SELECT 1", None),
        ("/* pgdog_role: replica */ SELEC 1", "replica"),  # kept even when the SQL does not parse
        ("/* pgdog_role: primary */ SELECT 'unterminated", "primary"),
    ],
)
def test_role_hint(sql: str, hint: str | None) -> None:
    assert classify(sql).role_hint == hint


def test_role_hint_does_not_change_writes() -> None:
    # The hint is reported, not applied: the router decides what it overrides.
    facts = classify("/* pgdog_role: replica */ INSERT INTO t VALUES (1)")
    assert facts.writes is True
    assert facts.role_hint == "replica"


def test_cache_counts_and_reuses() -> None:
    cache = ParseCache()
    assert cache.max_entries == 10_000
    first = cache.get("SELECT 1")
    assert (cache.hits, cache.misses, len(cache)) == (0, 1, 1)
    assert cache.get("SELECT 1") is first
    assert (cache.hits, cache.misses) == (1, 1)
    cache.get(b"SELECT 1")  # bytes are their own key
    assert (cache.hits, cache.misses, len(cache)) == (1, 2, 2)
    assert isinstance(cache.get(b"SELECT 1"), StatementFacts)
    assert cache.hits == 2


def test_cache_bound_evicts_least_recently_used() -> None:
    cache = ParseCache(max_entries=3)
    for sql in ("SELECT 1", "SELECT 2", "SELECT 3"):
        cache.get(sql)
    cache.get("SELECT 1")  # now the most recent
    cache.get("SELECT 4")  # evicts SELECT 2
    assert len(cache) == 3
    assert cache.evictions == 1
    assert "SELECT 2" not in cache
    assert all(sql in cache for sql in ("SELECT 1", "SELECT 3", "SELECT 4"))
    cache.get("SELECT 2")
    assert (cache.hits, cache.misses, cache.evictions) == (1, 5, 2)
    assert "SELECT 3" not in cache
    for i in range(100):
        cache.get(f"SELECT {i}")
    assert len(cache) == 3


def test_cache_skips_huge_texts_and_clears() -> None:
    cache = ParseCache(max_entries=10, max_text_length=20)
    big = "SELECT 1 FROM t WHERE a = 12345"
    assert cache.get(big).tables == ((None, "t"),)
    cache.get(big)
    assert (cache.hits, cache.misses, len(cache)) == (0, 2, 0)
    cache.get("SELECT 1")
    cache.clear()
    assert len(cache) == 0
    assert cache.misses == 3


def test_cache_rejects_empty_bound() -> None:
    with pytest.raises(ValueError):
        ParseCache(max_entries=0)


@pytest.mark.parametrize("sql", [
    b"SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
    b"select nextval('s')", b"select * from t for update", b"select 1; delete from t",
    b"select x into y from t", b"/* pgdog_role: primary */ select 1", b"SELECT 'for'",
    b"with x as (delete from t returning *) select * from x", b"select lo_unlink(1)",
    b" select 1 -- ; nextval", b"select pg_advisory_lock(1)", b"SELECT * FROM t FOR SHARE",
])
def test_plain_select_shortcut_never_calls_a_write_a_read(sql):
    from trio_pgdog.router.fastpath import plain_select

    if plain_select(sql):
        assert not classify(sql).writes


def test_plain_select_shortcut_takes_literal_only_selects():
    from trio_pgdog.router.fastpath import plain_select

    assert plain_select(b"SELECT abalance FROM pgbench_accounts WHERE aid = 48213;")
    assert plain_select(b"select a, b from t join u using (id) where x > 3 order by a")
    assert not plain_select(b"select nextval('s')")
