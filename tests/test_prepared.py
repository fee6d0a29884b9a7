"""Prepared statements in transaction mode: named statements follow the client across servers."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from conftest import APP_DB, PG_USERS, pgdog_toml
from pgwire import SYNC, Wire, bind, execute, parse, query


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


# --- each server's record of the statements prepared there stays true ---------------------
# The proxy prepares a client's statement on a server connection only where its record says
# the server lacks it. A record that lacks a statement the server has makes that Parse fail
# (42P05 "already exists"); one that names a statement the server dropped makes the Bind fail
# (26000 "does not exist"). Here another client, on the pool's one server connection, sends
# what looks as if it dropped the statements, whether PostgreSQL really drops them or not.

TABLE_ACCESS = '\n[hooks.table_access]\nenabled = true\ntables = ["secrets"]\n'
MINE = "select $1::int * 2"
DROPS = {
    # They do not drop anything: refused, skipped after an error, never executed, or
    # a DISCARD that keeps prepared statements.
    "discard-all-in-a-transaction": query("begin") + query("discard all"),
    "deallocate-in-a-failed-transaction": query("begin; select 1/0") + query("deallocate all"),
    "deallocate-of-an-unknown-name": query("deallocate nosuch"),
    "discard-all-parsed-never-executed": parse("discard all") + SYNC,
    "query-skipped-after-an-error": bind("nosuch") + query("deallocate all") + SYNC,
    "discard-plans": query("discard plans"),
    # They drop everything, though no Query starts with them.
    "deallocate-all-executed": parse("deallocate all") + bind() + execute() + SYNC,
    "deallocate-all-prepared-by-name": parse("deallocate all", "d") + bind("d") + execute() + SYNC,
    "deallocate-all-after-a-select": query("select 1; deallocate all"),
}


def _one_server_proxy(pg, proxy_factory, hooks: str = "", **general: object):
    return proxy_factory(pgdog_text=lambda port: pgdog_toml(
        pg, port, auth_type="trust", default_pool_size=1, **general) + hooks)


async def _runs_mine(wire: Wire, value: int, *, parse_first: bool = False) -> None:
    """Run statement `mine` (prepared by this client) with `value`; it must work."""
    data = parse(MINE, "mine") if parse_first else b""
    await wire.send(data + bind("mine", (str(value).encode(),)) + execute() + SYNC)
    result = await wire.read_result()
    assert result.error is None, result.error.fields
    assert result.rows == [[str(value * 2).encode()]], result


async def _other_client_sends(port: int, data: bytes) -> None:
    """Another client sends `data`, then ends its batch and any transaction."""
    async with await Wire.connect(port) as other:
        await other.login("app", APP_DB)
        await other.send(data + SYNC + query("rollback; select 'done'"))
        while True:
            result = await other.read_result()
            if result.rows == [[b"done"]]:
                break


@pytest.mark.parametrize("hooks", ["", TABLE_ACCESS], ids=["plain", "hooked"])
@pytest.mark.parametrize("drop", DROPS)
async def test_what_seems_to_drop_statements_leaves_the_record_true(pg, proxy_factory, drop, hooks):
    proxy = _one_server_proxy(pg, proxy_factory, hooks)
    async with await Wire.connect(proxy.port) as wire:
        await wire.login("app", APP_DB)
        await _runs_mine(wire, 1, parse_first=True)
        await _other_client_sends(proxy.port, DROPS[drop])
        await _runs_mine(wire, 2)  # prepared again only if it is gone: 42P05 or 26000 before
        await _runs_mine(wire, 3)
    async with await Wire.connect(proxy.port) as wire:  # a client new to it, too
        await wire.login("app", APP_DB)
        await _runs_mine(wire, 4, parse_first=True)


async def test_a_statement_used_behind_a_deallocate_in_one_batch(pg, proxy_factory):
    # Sent together, before the DEALLOCATE's answer: the Bind must not rely on the statement.
    proxy = _one_server_proxy(pg, proxy_factory)
    async with await Wire.connect(proxy.port) as wire:
        await wire.login("app", APP_DB)
        await _runs_mine(wire, 1, parse_first=True)
        await wire.send(query("deallocate all") + bind("mine", (b"5",)) + execute() + SYNC)
        assert (await wire.read_result()).error is None
        result = await wire.read_result()
        assert result.error is None and result.rows == [[b"10"]], result
        await _runs_mine(wire, 6)


async def test_an_evicted_statement_whose_close_was_skipped_is_not_prepared_twice(
        pg, proxy_factory):
    # With room for one statement per server, preparing a second one closes the first; an
    # error earlier in the batch makes PostgreSQL skip that Close: the first is still there.
    proxy = _one_server_proxy(pg, proxy_factory, prepared_statements_limit=1)
    async with await Wire.connect(proxy.port) as wire:
        await wire.login("app", APP_DB)
        await _runs_mine(wire, 1, parse_first=True)
        await wire.send(bind("nosuch") + parse("select 2", "two") + SYNC)
        result = await wire.read_result()
        assert result.error is not None and result.error.sqlstate == "26000", result
        await _runs_mine(wire, 2)
