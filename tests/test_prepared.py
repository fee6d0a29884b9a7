"""Prepared statements in transaction mode: named statements follow the client across servers."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from conftest import APP_DB, PG_USERS


def test_psycopg_prepared_statements_across_server_connections(proxy_factory):
    proxy = proxy_factory(default_pool_size=2)
    conns = [proxy.connect(prepare_threshold=0) for _ in range(4)]
    try:
        for round_ in range(5):
            for i, conn in enumerate(conns):
                # Same statement name (psycopg's _pg3_0) for different SQL in different clients.
                sql = f"select %s::int + {i}" if i % 2 else f"select %s::int * {i + 1}"
                value = conn.execute(sql, (round_,)).fetchone()[0]
                assert value == (round_ + i if i % 2 else round_ * (i + 1))
    finally:
        for conn in conns:
            conn.close()


def test_prepared_statements_survive_transactions_and_deallocate(proxy_factory):
    proxy = proxy_factory(default_pool_size=1)
    with proxy.connect(prepare_threshold=0) as a, proxy.connect(prepare_threshold=0) as b:
        for n in range(20):
            assert a.execute("select %s::int", (n,)).fetchone() == (n,)
            with b.transaction():
                assert b.execute("select %s::text || 'x'", (str(n),)).fetchone() == (f"{n}x",)
        b.execute("DEALLOCATE ALL")
        assert a.execute("select %s::int", (99,)).fetchone() == (99,)
        b.execute("DISCARD ALL")
        assert b.execute("select %s::text || 'x'", ("y",)).fetchone() == ("yx",)


def test_lru_limit_reprepares_evicted_statements(proxy_factory):
    proxy = proxy_factory(default_pool_size=1, prepared_statements_limit=2)
    with proxy.connect(prepare_threshold=0) as conn:
        for _ in range(3):
            for k in range(4):  # four distinct statements through a cache of two
                assert conn.execute(f"select %s::int + {k}", (1,)).fetchone() == (1 + k,)
    count = int(proxy_pg_prepared_count(proxy))
    assert count <= 2


def proxy_pg_prepared_count(proxy) -> str:
    with proxy.connect() as conn:
        return conn.execute("select count(*) from pg_prepared_statements").fetchone()[0]


def test_sql_level_prepare_is_refused_clearly(proxy):
    with proxy.connect() as conn:
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="PREPARE is not supported"):
            conn.execute("PREPARE p AS select 1")
        assert conn.execute("select 2").fetchone() == (2,)
        with conn.transaction():
            with pytest.raises(psycopg.errors.FeatureNotSupported) as refused, conn.transaction():
                conn.execute("/* hi */ prepare p2 as select 1")
            assert refused.value.diag.context is None  # no PL/pgSQL detail of how it was raised
            assert refused.value.diag.datatype_name is None
            assert conn.execute("select 3").fetchone() == (3,)


def test_prepared_statement_errors_keep_the_session_usable(proxy):
    with proxy.connect(prepare_threshold=0) as conn:
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("select * from no_such_table where x = %s", (1,))
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("select 1 / %s::int", (0,))
        assert conn.execute("select %s::int", (5,)).fetchone() == (5,)


def test_pgbench_prepared_50_clients_pool_of_5(pg, proxy_factory):
    proxy = proxy_factory(default_pool_size=5)
    env = {"PGPASSWORD": PG_USERS["app"][0], "PATH": "/usr/bin:/bin"}
    base = ["pgbench", "-h", "127.0.0.1", "-p", str(proxy.port), "-U", "app"]
    subprocess.run([*base, "-i", "-q", APP_DB], env=env, check=True, capture_output=True)
    run = subprocess.run([*base, "-M", "prepared", "-c", "50", "-j", "2", "-t", "20", APP_DB],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "number of failed transactions: 0" in run.stdout
    assert "number of transactions actually processed: 1000/1000" in run.stdout


def test_pipeline_and_threads_with_prepared_statements(proxy):
    with proxy.connect(prepare_threshold=0) as conn:
        with conn.pipeline():
            cursors = [conn.execute("select %s::int * 2", (i,)) for i in range(20)]
        assert [c.fetchone()[0] for c in cursors] == [i * 2 for i in range(20)]

    def work(k: int) -> int:
        with psycopg.connect(proxy.dsn(), prepare_threshold=0, autocommit=True) as c:
            return sum(c.execute("select %s::int", (k + j,)).fetchone()[0] for j in range(10))

    with ThreadPoolExecutor(4) as ex:
        assert list(ex.map(work, range(8))) == [sum(k + j for j in range(10)) for k in range(8)]


def test_listen_is_refused_in_transaction_mode_but_works_in_session_mode(proxy_factory):
    tx = proxy_factory()
    with tx.connect() as conn:
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="LISTEN is not supported"):
            conn.execute("LISTEN channel")
        assert conn.execute("select 1").fetchone() == (1,)
    session = proxy_factory(pooler_mode="session")
    with session.connect() as listener, session.connect() as sender:
        listener.execute("LISTEN channel")
        sender.execute("NOTIFY channel, 'hello'")
        note = next(listener.notifies(timeout=5, stop_after=1))
        assert note.payload == "hello"
