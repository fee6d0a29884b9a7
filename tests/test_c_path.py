"""The C path of plain transactions (trio_pgdog/_reactor.c, session/parking.py) under faults:
servers that die, clients that vanish, reloads and shutdowns while sessions are parked, and
far more clients than server connections. Each test also checks, from the proxy's own log
line at shutdown, that the C path carried the traffic (with the C path off, as in
`TRIO_PGDOG_SPEEDUPS=0` runs, the same behaviour is required of the Python path)."""

from __future__ import annotations

import re
import signal
import threading
import time

import psycopg
import pytest
import trio
from conftest import APP_DB, PG_USERS, proxy_backends, wait_for
from pgwire import Wire, query

from trio_pgdog.reactor import c as reactor_c

_RELAYED = re.compile(r"C path: (\d+) answers relayed whole in C, (\d+) hand-backs")


def relayed_in_c(proxy) -> int:
    """Stop the proxy; how many answers its C path relayed whole (0 with the C path off)."""
    proxy.stop(timeout=20)
    found = _RELAYED.search(proxy.log)
    if reactor_c is None:
        assert found is None
        return 0
    assert found is not None, proxy.log[-2000:]
    return int(found.group(1))


def at_least(n: int) -> int:
    """What relayed_in_c must reach: `n` with the C path on, 0 with it off."""
    return n if reactor_c is not None else 0


def test_the_first_log_line_says_which_path(proxy_factory):
    proxy = proxy_factory()
    first = proxy.log.splitlines()[0]
    assert ("C path of plain transactions on" in first) == (reactor_c is not None), first


def test_plain_transactions_are_relayed_in_c(proxy_factory):
    proxy = proxy_factory(default_pool_size=2)
    # (prepare_threshold=None: psycopg would otherwise prepare named statements, which take
    # the Python path)
    with proxy.connect(prepare_threshold=None) as conn, \
            proxy.connect(prepare_threshold=None) as other:
        for i in range(50):
            assert conn.execute("select %s::int", (i,)).fetchone() == (i,)  # extended, unnamed
            assert conn.execute(f"select {i}").fetchone() == (i,)  # simple protocol
        with other.transaction():  # a transaction over several round trips
            other.execute("create temp table t (v int) on commit drop")
            other.execute("insert into t values (1), (2)")
            assert other.execute("select sum(v) from t").fetchone() == (3,)
        conn.execute("set application_name = 'not plain'")  # goes through Python...
        assert conn.execute("select current_setting('application_name')").fetchone() == (
            "not plain",)  # ...and the setting follows the client back into C
    assert relayed_in_c(proxy) >= at_least(100)


def test_served_by_a_task_as_when_trios_epoll_is_out_of_reach(proxy_factory, monkeypatch):
    # Normally Trio's loop runs the Reactor while it waits for I/O (reactor.Serving); with
    # Trio's epoll out of reach a task serves it: TRIO_PGDOG_REACTOR=task takes that way.
    monkeypatch.setenv("TRIO_PGDOG_REACTOR", "task")
    proxy = proxy_factory(default_pool_size=1)
    with proxy.connect(prepare_threshold=None) as conn, \
            proxy.connect(prepare_threshold=None) as other:
        for i in range(30):
            assert conn.execute("select %s::int", (i,)).fetchone() == (i,)
            assert other.execute(f"select {i}").fetchone() == (i,)
    first = proxy.log.splitlines()[0]
    assert ("served by a task" in first) == (reactor_c is not None), first
    assert relayed_in_c(proxy) >= at_least(60)


def test_prepared_statements_are_relayed_in_c_under_their_shared_names(proxy_factory):
    # psycopg prepares at once (prepare_threshold=0): after the first Parse of a statement a
    # transaction is Bind/Execute/Sync of its name, which C renames to the statement's shared
    # name -- or hands to Python when the server it took has not prepared it yet.
    proxy = proxy_factory(default_pool_size=2)
    conns = [proxy.connect(prepare_threshold=0) for _ in range(3)]
    for i in range(40):
        for k, conn in enumerate(conns):
            assert conn.execute("select %s::int * 10 + %s::int", (i, k)).fetchone() == (i * 10 + k,)
            if i % 10 == k:
                assert conn.execute("select %s::text || 'x'", (str(i),)).fetchone() == (f"{i}x",)
    for conn in conns:
        conn.close()
    assert relayed_in_c(proxy) >= at_least(60)


def test_a_prepared_set_is_followed_even_when_only_its_name_is_sent(proxy_factory):
    # Binding a prepared SET again sends only its name: the C path must leave it to the Python
    # path, which follows the setting (and gives it back on whichever server the client gets).
    proxy = proxy_factory(default_pool_size=1)
    with proxy.connect(prepare_threshold=0) as a, proxy.connect(prepare_threshold=0) as b:
        a.execute("set application_name = 'one'")
        a.execute("set application_name = 'two'")
        a.execute("set application_name = 'one'")  # prepared already: Bind, Execute, Sync
        assert b.execute("select current_setting('application_name')").fetchone() != ("one",)
        assert a.execute("select current_setting('application_name')").fetchone() == ("one",)
    assert "Traceback" not in proxy.log


def test_requests_wait_in_line_in_c_for_the_pools_connections(pg, proxy_factory):
    # Six clients on a pool of two: most requests find no connection free and wait in line
    # in C; each still gets its own answers, and the pool never opens more than two.
    proxy = proxy_factory(default_pool_size=2, checkout_timeout=30000)
    errors: list[str] = []

    def client(k: int) -> None:
        try:
            with proxy.connect(prepare_threshold=None) as conn:
                for i in range(150):
                    assert conn.execute(f"select {i} * 10 + {k}").fetchone() == (i * 10 + k,)
        except Exception as exc:  # reported below, not lost in the thread
            errors.append(repr(exc))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert len(proxy_backends(pg, proxy)) <= 2
    assert relayed_in_c(proxy) >= at_least(600)


async def test_a_client_leaving_while_in_line_costs_no_slot(pg, proxy_factory):
    proxy = proxy_factory(default_pool_size=1, checkout_timeout=20000)
    password = PG_USERS["app"][0]
    async with await Wire.connect(proxy.port) as holder:
        await holder.login("app", APP_DB, password)
        assert (await holder.query("begin")).status == b"T"  # holds the only connection
        assert await holder.scalar("select 1") == "1"
        leaver = await Wire.connect(proxy.port)
        await leaver.login("app", APP_DB, password)
        await leaver.send(query("select 'never answered'"))
        await trio.sleep(0.3)  # in line for the connection
        await leaver.aclose()
        await trio.sleep(0.3)
        assert (await holder.query("commit")).status == b"I"
    with trio.fail_after(10):  # the connection serves the next client: no slot was lost
        async with await Wire.connect(proxy.port) as after:
            await after.login("app", APP_DB, password)
            assert await after.scalar("select 'served'") == "served"
    assert len(proxy_backends(pg, proxy)) <= 1
    assert "Traceback" not in proxy.log


def test_a_reload_sends_requests_in_line_to_the_new_pool(proxy_factory):
    proxy = proxy_factory(default_pool_size=1, checkout_timeout=30000)
    holder, waiter = proxy.connect(), proxy.connect()
    holder.execute("begin")
    holder.execute("select 1")  # the pool's only connection, held in a transaction
    answer: list[object] = []
    waiting = threading.Thread(target=lambda: answer.append(
        waiter.execute("select 'from the new pool'").fetchone()))
    waiting.start()
    time.sleep(0.5)  # in line in C for the held connection
    text = (proxy.workdir / "pgdog.toml").read_text()
    (proxy.workdir / "pgdog.toml").write_text(
        text.replace("default_pool_size = 1", "default_pool_size = 2"))
    proxy.proc.send_signal(signal.SIGHUP)
    waiting.join(15)  # served by the new pool while the old connection is still held
    assert answer == [("from the new pool",)]
    holder.execute("commit")
    holder.close()
    waiter.close()
    assert "Traceback" not in proxy.log


def test_whoever_waits_longest_is_served_first_on_either_path(proxy_factory):
    # One connection, held. A plain request waits in line in C; then a request the Python
    # path must handle (a SET) waits in the pool. When the connection comes back the
    # request that came first runs first, whichever path it waits on.
    proxy = proxy_factory(default_pool_size=1, checkout_timeout=30000)
    holder, plain, python = proxy.connect(), proxy.connect(), proxy.connect()
    holder.execute("begin")
    holder.execute("select 1")
    done: list[str] = []

    def run(conn, sql: str, name: str) -> None:
        conn.execute(sql)
        done.append(name)

    first = threading.Thread(target=run, args=(plain, "select pg_sleep(0.3)", "plain"))
    first.start()
    time.sleep(0.5)
    second = threading.Thread(
        target=run, args=(python, "set application_name = 'x'; select pg_sleep(0.3)", "python"))
    second.start()
    time.sleep(0.5)
    holder.execute("commit")
    first.join(15)
    second.join(15)
    assert done == ["plain", "python"]
    for conn in (holder, plain, python):
        conn.close()
    assert "Traceback" not in proxy.log


def test_server_dying_mid_transaction_tells_only_its_client(pg, proxy_factory):
    proxy = proxy_factory(default_pool_size=4)
    victim = proxy.connect()
    bystander = proxy.connect()
    victim.execute("begin")
    victim.execute("select 1")  # parked inside a transaction, its server with it
    pid = victim.execute("select pg_backend_pid()").fetchone()[0]
    pg.sql(f"select pg_terminate_backend({pid})")
    with pytest.raises(psycopg.OperationalError) as info:
        victim.execute("select 2")
    assert info.value.sqlstate == "08006", info.value
    for i in range(20):  # the others never noticed
        assert bystander.execute(f"select {i}").fetchone() == (i,)
    victim.close()
    with proxy.connect() as again:  # and the pool recovered
        assert again.execute("select 42").fetchone() == (42,)
    bystander.close()
    assert relayed_in_c(proxy) >= at_least(20)


async def test_client_vanishing_mid_query_is_cancelled_and_frees_its_server(pg, proxy_factory):
    proxy = proxy_factory(default_pool_size=1)
    password = PG_USERS["app"][0]

    def sleeping() -> bool:
        return any(row[0] == "active" and "pg_sleep" in row[1]
                   for row in proxy_backends(pg, proxy, "state, query"))

    wire = await Wire.connect(proxy.port)
    await wire.login("app", APP_DB, password)
    assert await wire.scalar("select 1") == "1"
    await wire.send(query("select pg_sleep(60)"))
    await trio.to_thread.run_sync(lambda: wait_for(sleeping, what="the sleep to start"))
    await wire.aclose()  # the client vanishes mid-query
    started = time.monotonic()
    # The query is cancelled, and the pool's only connection serves the next client.
    await trio.to_thread.run_sync(lambda: wait_for(
        lambda: not sleeping(), what="the vanished client's query to be cancelled"))
    async with await Wire.connect(proxy.port) as after:
        await after.login("app", APP_DB, password)
        assert await after.scalar("select 'free'") == "free"
    assert time.monotonic() - started < 10
    assert await trio.to_thread.run_sync(relayed_in_c, proxy) >= at_least(1)


def test_reload_and_shutdown_while_sessions_are_parked(proxy_factory):
    proxy = proxy_factory(default_pool_size=3)
    idle = [proxy.connect() for _ in range(4)]
    in_transaction = proxy.connect()
    for conn in idle:
        assert conn.execute("select 1").fetchone() == (1,)
    in_transaction.execute("begin")
    in_transaction.execute("select 1")  # its transaction stays open: parked with its server
    # A reload that replaces the pool (its size changed) while they are parked.
    text = (proxy.workdir / "pgdog.toml").read_text()
    (proxy.workdir / "pgdog.toml").write_text(
        text.replace("default_pool_size = 3", "default_pool_size = 5"))
    proxy.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "configuration reloaded" in proxy.log, what="the reload")
    for i, conn in enumerate(idle):  # they carry on, on the new pool
        assert conn.execute(f"select {i}").fetchone() == (i,)
    assert in_transaction.execute("select 'still in it'").fetchone() == ("still in it",)
    in_transaction.execute("commit")
    # Shutdown: parked idle clients are told at once and the proxy exits without waiting.
    started = time.monotonic()
    relayed = relayed_in_c(proxy)
    assert time.monotonic() - started < 10
    assert proxy.proc.returncode == 0
    for conn in idle:
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")
    assert relayed >= at_least(8)
    assert "Traceback" not in proxy.log


CLIENTS, POOL = 1000, 10


async def test_a_thousand_clients_on_a_pool_of_ten(pg, proxy_factory):
    proxy = proxy_factory(default_pool_size=POOL, checkout_timeout=60000)
    password = PG_USERS["app"][0]
    answered = 0

    logins = trio.CapacityLimiter(100)  # SCRAM logins 100 at a time
    logged_in, everyone_in = 0, trio.Event()

    async def client(i: int) -> None:
        nonlocal answered, logged_in
        async with await Wire.connect(proxy.port) as wire:
            async with logins:
                await wire.login("app", APP_DB, password)
            logged_in += 1
            if logged_in == CLIENTS:
                everyone_in.set()
            await everyone_in.wait()  # all 1,000 connected at once, then all of them query
            for round_ in range(3):
                assert await wire.scalar(f"select {i * 10 + round_}") == str(i * 10 + round_)
                answered += 1

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for i in range(CLIENTS):
                nursery.start_soon(client, i)
    assert answered == 3 * CLIENTS
    assert len(proxy_backends(pg, proxy)) <= POOL  # never more server connections than the pool
    # No slot was lost: all ten connections can be held at once, each by its own transaction.
    with trio.fail_after(10):
        wires = []
        for _ in range(POOL):
            wire = await Wire.connect(proxy.port)
            wires.append(wire)
            await wire.login("app", APP_DB, password)
            assert (await wire.query("begin")).status == b"T"
            assert await wire.scalar("select 1") == "1"
        for wire in wires:
            await wire.query("commit")
            await wire.aclose()
    # (Requests wait in line for a connection in C: most of the 3,000 answers were relayed
    # there; logins and the first query after each come through Python.)
    assert await trio.to_thread.run_sync(relayed_in_c, proxy) >= at_least(CLIENTS)
    assert "Traceback" not in proxy.log
