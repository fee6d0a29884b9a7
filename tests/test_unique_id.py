"""`pgdog.unique_id()`: 64-bit ids made by the proxy (time, node_id, sequence).

The generator on its own (a fake clock going back, 4,096 ids in one millisecond), the text
replacement (never inside strings, names or comments), and through a proxy in front of three
real shards: 16 clients x 10,000 ids all different, an INSERT routed by the id it got, ids
increasing over time and across a restart, prepared statements with new ids at each
execution.
"""

from __future__ import annotations

import concurrent.futures
import textwrap

import psycopg
import pytest
from conftest import APP_DB, PROTOCOLS, users_toml
from psycopg import pq
from test_sharding import placed_right, sharded_toml
from test_two_phase import rows

from trio_pgdog.config import ConfigError
from trio_pgdog.config.loader import load_config_text
from trio_pgdog.router.sharding.unique_id import (
    EPOCH_MS,
    UniqueIds,
    describe,
    replace_unique_ids,
)

# --- the generator ---------------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: int = 1000):
        self.now = now
        self.reads = 0

    def __call__(self) -> int:
        self.reads += 1
        return self.now


def test_ids_carry_time_node_and_sequence():
    clock = FakeClock(12345)
    ids = UniqueIds(clock)
    first, second = ids.next(7), ids.next(7)
    assert describe(first) == (EPOCH_MS + 12345, 7, 0)
    assert describe(second) == (EPOCH_MS + 12345, 7, 1)
    clock.now += 1
    assert describe(ids.next(1023)) == (EPOCH_MS + 12346, 1023, 0)
    assert 0 < first < second < 2**63


def test_a_clock_going_back_never_makes_ids_go_back():
    clock = FakeClock(5000)
    ids = UniqueIds(clock)
    made = [ids.next(0)]
    clock.now = 4000  # NTP stepped the clock back a second
    made += [ids.next(0) for _ in range(10)]
    clock.now = 5001
    made += [ids.next(0) for _ in range(10)]
    assert made == sorted(made) and len(set(made)) == len(made)
    assert describe(made[1])[0] == EPOCH_MS + 5000  # the last millisecond, not the clock's


def test_past_4096_ids_in_one_millisecond_the_next_one_is_used():
    clock = FakeClock(7000)
    ids = UniqueIds(clock)
    made = [ids.next(3) for _ in range(4096)]
    assert describe(made[-1]) == (EPOCH_MS + 7000, 3, 4095)
    following = ids.next(3)  # the clock is stuck: the ids run one millisecond ahead
    assert describe(following) == (EPOCH_MS + 7001, 3, 0)
    assert len(set([*made, following])) == 4097


@pytest.mark.parametrize("sql, expected", [
    ("SELECT pgdog.unique_id()", "SELECT 0"),
    ("select PGDOG . Unique_Id ( ), pgdog.unique_id()", "select 0, 1"),
    ("SELECT 'pgdog.unique_id()', \"pgdog.unique_id()\", pgdog.unique_id()",
     "SELECT 'pgdog.unique_id()', \"pgdog.unique_id()\", 0"),
    ("SELECT $$pgdog.unique_id()$$, $q$ pgdog.unique_id() $q$, E'\\'pgdog.unique_id()'",
     None),
    ("SELECT 1 -- pgdog.unique_id()\n/* pgdog.unique_id() */", None),
    ("SELECT xpgdog.unique_id(), pgdog.unique_id(1)", None),
])
def test_each_call_in_the_text_is_replaced_and_nothing_else(sql, expected):
    # The fake clock stands at the epoch and the node is 0: the ids are 0, 1, 2...
    assert replace_unique_ids(sql, 0, UniqueIds(FakeClock(0))) == expected


def test_node_id_is_checked():
    config = load_config_text("[general]\nnode_id = 1023\n", None)
    assert config.general.node_id == 1023
    with pytest.raises(ConfigError, match=r"node_id.*from 0 to 1023, got 1024"):
        load_config_text(textwrap.dedent("""
            [general]
            node_id = 1024
            """), None)


# --- through the proxy -------------------------------------------------------------------------


@pytest.fixture
def start(shard_clusters, proxy_factory):
    for cluster in shard_clusters:
        cluster.sql("TRUNCATE orders", dbname=APP_DB)

    def start_one(**general: object):
        return proxy_factory(pgdog_text=lambda port: sharded_toml(
            shard_clusters, port, **general), users=users_toml())

    return start_one


def _ids(proxy, statements: int, per_statement: int) -> list[int]:
    sql = "SELECT " + ", ".join(["pgdog.unique_id()"] * per_statement)
    made: list[int] = []
    with proxy.connect(**PROTOCOLS["simple"]) as conn:
        for _ in range(statements):
            made += conn.execute(sql).fetchone()
    return made


def test_sixteen_clients_get_ten_thousand_different_ids_each(start):
    proxy = start(node_id=5)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        per_client = list(pool.map(lambda _: _ids(proxy, 100, 100), range(16)))
    every = [i for made in per_client for i in made]
    assert len(every) == 160_000 and len(set(every)) == 160_000
    for made in per_client:
        assert made == sorted(made)  # one client's ids increase
    assert {describe(i)[1] for i in every} == {5}


def test_ids_increase_across_a_restart(start):
    before = _ids(start(), 10, 10)
    after = _ids(start(), 10, 10)
    assert max(before) < min(after)
    assert len(set(before + after)) == 200


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_an_insert_goes_to_the_shard_of_its_id(start, shard_clusters, protocol):
    proxy = start()
    with proxy.connect(**PROTOCOLS[protocol]) as conn:
        for n in range(30):
            conn.execute("INSERT INTO orders (customer_id, amount) "
                         "VALUES (pgdog.unique_id(), %s)", (n,))
        if protocol == "simple":  # (split by shard in the simple protocol only, for now)
            conn.execute("INSERT INTO orders (customer_id, amount) VALUES "
                         + ", ".join(["(pgdog.unique_id(), 100)"] * 30))
        ids = [r[0] for r in conn.execute("SELECT customer_id FROM orders").fetchall()]
    total = 60 if protocol == "simple" else 30
    assert len(set(ids)) == total
    counts = placed_right(shard_clusters)  # each row on the shard of its id
    assert sum(counts.values()) == total and all(counts.values()), counts
    assert rows(shard_clusters, "orders") == list(counts.values())


def test_a_prepared_statement_gets_new_ids_at_every_execution(start, shard_clusters):
    """psycopg prepares a statement after its 5th execution by default (here, at once): the
    ids become parameters of the proxy's own, new at every Bind, and route the row."""
    proxy = start()
    with proxy.connect(**PROTOCOLS["prepared"]) as conn:
        for n in range(30):
            conn.execute("INSERT INTO orders (customer_id, amount) "
                         "VALUES (pgdog.unique_id(), %s)", (n,))
        made = [conn.execute("SELECT pgdog.unique_id(), %s::int, pgdog.unique_id()",
                             (n,)).fetchone() for n in range(5)]
        assert [row[1] for row in made] == list(range(5))
        ids = [i for row in made for i in (row[0], row[2])]
        assert len(set(ids)) == 10 and ids == sorted(ids)
        prepared = conn.execute("SELECT customer_id FROM orders").fetchall()
    assert len({row[0] for row in prepared}) == 30
    counts = placed_right(shard_clusters)
    assert sum(counts.values()) == 30 and all(counts.values()), counts


def test_what_would_repeat_or_show_an_id_parameter_is_refused(start):
    proxy = start()
    with proxy.connect() as conn:
        pgconn = conn.pgconn
        assert pgconn.prepare(b"s1", b"SELECT pgdog.unique_id()").status == pq.ExecStatus.COMMAND_OK
        described = pgconn.describe_prepared(b"s1")  # it would list the proxy's parameter
        assert described.status == pq.ExecStatus.FATAL_ERROR
        assert described.error_field(pq.DiagnosticField.SQLSTATE) == b"0A000"
        assert b"its description would show" in described.error_message
        first = pgconn.exec_prepared(b"s1", [])
        assert first.status == pq.ExecStatus.TUPLES_OK and int(first.get_value(0, 0)) > 0
        # An unnamed statement carries its ids as constants: one Bind per Parse (in a
        # transaction: between transactions it does not outlive its server connection).
        conn.execute("BEGIN")
        assert pgconn.prepare(b"", b"SELECT pgdog.unique_id()").status == pq.ExecStatus.COMMAND_OK
        r = pgconn.exec_prepared(b"", [])
        assert r.status == pq.ExecStatus.TUPLES_OK, r.error_message
        again = pgconn.exec_prepared(b"", [])
        assert again.error_field(pq.DiagnosticField.SQLSTATE) == b"0A000"
        assert b"bound once per Parse" in again.error_message
        conn.execute("ROLLBACK")
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_an_unsharded_database_gets_ids_in_simple_queries(proxy):
    """Simple-protocol Queries only: a Parse reaches PostgreSQL as it was sent."""
    with proxy.connect(**PROTOCOLS["simple"]) as conn:
        made = [conn.execute("SELECT pgdog.unique_id(), pgdog.unique_id()").fetchone()
                for _ in range(20)]
        ids = [i for row in made for i in row]
        assert len(set(ids)) == 40 and ids == sorted(ids) and ids[0] > 0
        assert conn.execute("SELECT 'pgdog.unique_id()'").fetchone() == ("pgdog.unique_id()",)
    with proxy.connect(**PROTOCOLS["extended"]) as conn, \
            pytest.raises(psycopg.errors.InvalidSchemaName, match='schema "pgdog"'):
        conn.execute("SELECT pgdog.unique_id()")
