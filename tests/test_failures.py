"""Failure handling: lost server connections, a server going away and coming back, clients
that vanish while queued, slow logins, and what the server says on the side (notices,
notifications).

Real PostgreSQL and psycopg throughout; the raw protocol client only where psycopg cannot
provoke the case (a client that leaves while queued, a socket that never logs in).
"""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pgwire
import psycopg
import pytest
import trio
from conftest import APP_DB, PG_USERS, pgdog_toml, proxy_backends, wait_for

from trio_pgdog.embedded import Cluster

LOST = "server connection lost"


def _active_backend(pg, proxy, query_prefix: str) -> int:
    """The pid of the proxy's server connection now running a query starting with `query_prefix`."""
    def find():
        for pid, state, query in proxy_backends(pg, proxy, "pid, state, query"):
            if state == "active" and query.startswith(query_prefix):
                return int(pid)
        return None
    return wait_for(find, timeout=10, what=f"a server connection running {query_prefix!r}")


def _terminate(pg, pid: int) -> None:
    assert pg.sql(f"SELECT pg_terminate_backend({pid})") == "t"
    wait_for(lambda: pg.sql(f"SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}") == "0",
             what=f"backend {pid} to exit")


# --- a server connection killed under a client --------------------------------------------


def test_server_connection_killed_mid_query_gives_08006_and_the_client_goes_on(pg, proxy_factory):
    proxy = proxy_factory(default_pool_size=2)
    with proxy.connect() as conn, ThreadPoolExecutor(1) as ex:
        future = ex.submit(conn.execute, "select pg_sleep(5)")
        pid = _active_backend(pg, proxy, "select pg_sleep(5)")
        started = time.monotonic()
        _terminate(pg, pid)
        with pytest.raises(psycopg.OperationalError) as info:
            future.result(timeout=10)
        assert time.monotonic() - started < 3, "the client waited out the whole pg_sleep"
        err = info.value
        assert err.sqlstate == "08006", err
        assert LOST in str(err), str(err)
        assert "terminating connection due to administrator command" in str(err), str(err)

        # Same client connection, new queries, on a new server connection.
        assert not conn.closed
        assert conn.execute("select 41 + 1").fetchone() == (42,)
        new_pid = conn.execute("select pg_backend_pid()").fetchone()[0]
        assert new_pid != pid
        pids = {int(row[0]) for row in proxy_backends(pg, proxy)}
        assert pid not in pids and new_pid in pids
    assert "Traceback" not in proxy.log


def test_server_connection_killed_while_client_idle_in_transaction(pg, proxy_factory):
    proxy = proxy_factory(default_pool_size=2)
    with proxy.connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS failures_idle_tx (id int)")
        conn.execute("TRUNCATE failures_idle_tx")
        conn.execute("BEGIN")
        conn.execute("INSERT INTO failures_idle_tx VALUES (1)")
        pid = conn.execute("select pg_backend_pid()").fetchone()[0]
        _terminate(pg, pid)

        with pytest.raises(psycopg.OperationalError) as info:
            conn.execute("select 1")
        assert info.value.sqlstate == "08006", info.value
        assert LOST in str(info.value) and "rolled back" in str(info.value), str(info.value)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE

        # The client goes on; the uncommitted insert is gone with the dead connection.
        assert conn.execute("select count(*) from failures_idle_tx").fetchone() == (0,)
        conn.execute("BEGIN")
        conn.execute("INSERT INTO failures_idle_tx VALUES (2)")
        conn.execute("COMMIT")
        assert conn.execute("select array_agg(id) from failures_idle_tx").fetchone() == ([2],)
        assert conn.execute("select pg_backend_pid()").fetchone()[0] != pid
        conn.execute("DROP TABLE failures_idle_tx")


def test_session_mode_client_is_disconnected_with_a_clear_error(pg, proxy_factory):
    proxy = proxy_factory(pooler_mode="session", default_pool_size=2)
    with proxy.connect() as conn, ThreadPoolExecutor(1) as ex:
        future = ex.submit(conn.execute, "select pg_sleep(5)")
        pid = _active_backend(pg, proxy, "select pg_sleep(5)")
        _terminate(pg, pid)
        with pytest.raises(psycopg.OperationalError) as info:
            future.result(timeout=10)
        assert info.value.sqlstate == "08006", info.value
        assert LOST in str(info.value) and "session state is gone" in str(info.value)
        assert "administrator command" in str(info.value)
        # The proxy closed this client: the next use fails without a new error from the proxy.
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")
    # A new client works (the pool replaced the connection).
    with proxy.connect() as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        assert conn.execute("select pg_backend_pid()").fetchone()[0] != pid


# --- a whole server going away and coming back --------------------------------------------


@pytest.fixture
def own_cluster():
    """A throw-away cluster this test may stop and start."""
    with Cluster.create() as cluster:
        cluster.start()
        cluster.add_user("app", PG_USERS["app"][0])
        cluster.add_database(APP_DB, owner="app")
        yield cluster


def test_server_down_gives_quick_08006_and_clients_recover_when_it_is_back(own_cluster,
                                                                           proxy_factory):
    connect_timeout = 1.0
    proxy = proxy_factory(pgdog_text=lambda port: pgdog_toml(own_cluster, port, connect_timeout=1000,
                                                             default_pool_size=4))
    idle = proxy.connect()
    busy = proxy.connect()
    try:
        assert idle.execute("select 1").fetchone() == (1,)
        assert busy.execute("select 2").fetchone() == (2,)

        with ThreadPoolExecutor(1) as ex:
            future = ex.submit(busy.execute, "select pg_sleep(10)")
            wait_for(lambda: own_cluster.sql(
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'select pg_sleep(10)'") == "1",
                what="the sleep to start")
            own_cluster.stop("immediate")
            started = time.monotonic()
            # The client in the middle of a query: told at once.
            with pytest.raises(psycopg.OperationalError) as info:
                future.result(timeout=connect_timeout + 5)
            assert time.monotonic() - started < connect_timeout + 2
            assert info.value.sqlstate == "08006", info.value

        # While the server is down, every query fails fast with 08006, never hangs.
        for conn in (idle, busy, idle):
            started = time.monotonic()
            with pytest.raises(psycopg.OperationalError) as info:
                conn.execute("select 1")
            assert time.monotonic() - started < connect_timeout + 2, "a query hung on a dead server"
            assert info.value.sqlstate == "08006", info.value
            assert not conn.closed, "the proxy hung up on a transaction-mode client"

        own_cluster.start()
        # The same client connections work again, and new ones too.
        assert idle.execute("select 'back'").fetchone() == ("back",)
        assert busy.execute("select 'again'").fetchone() == ("again",)
        with proxy.connect() as fresh:
            assert fresh.execute("select 3").fetchone() == (3,)
    finally:
        idle.close()
        busy.close()
    assert "Traceback" not in proxy.log


# --- the checkout queue -------------------------------------------------------------------


async def _queue_a_query_then_vanish(port: int, sql: str) -> None:
    async with await pgwire.Wire.connect(port) as wire:
        await wire.login("app", APP_DB, PG_USERS["app"][0])
        await wire.send(pgwire.query(sql))
        await trio.sleep(0.3)  # long enough to be queued behind the busy pool


def test_client_vanishing_while_queued_is_dropped_from_the_queue(pg, proxy_factory):
    proxy = proxy_factory(default_pool_size=1, checkout_timeout=5000)
    with proxy.connect() as holder:
        holder.execute("BEGIN")
        holder.execute("select 1")
        # A second client asks for a connection, waits in line, and leaves.
        trio.run(_queue_a_query_then_vanish, proxy.port, "select pg_sleep(3)")
        holder.execute("COMMIT")
        # The next client gets the connection at once: the vanished client's query never runs.
        started = time.monotonic()
        with proxy.connect() as third:
            assert third.execute("select 'mine'").fetchone() == ("mine",)
        assert time.monotonic() - started < 1.5, "a vanished client's queued query ran first"
        assert holder.execute("select 2").fetchone() == (2,)
    assert not any("pg_sleep(3)" in row[0] for row in proxy_backends(pg, proxy, "query"))
    assert "Traceback" not in proxy.log


# --- client_login_timeout -----------------------------------------------------------------


async def _silent_client(port: int) -> pgwire.Message:
    async with await pgwire.Wire.connect(port) as wire:
        return await wire.expect_fatal("08P01", timeout=3)


async def _client_stuck_at_the_password(port: int) -> pgwire.Message:
    async with await pgwire.Wire.connect(port) as wire:
        await wire.send(pgwire.startup_packet({"user": "app", "database": APP_DB}))
        first = await wire.read_message()
        assert first is not None and first.kind == b"R", first  # asked for a password
        return await wire.expect_fatal("08P01", timeout=3)


@pytest.mark.parametrize("client", [_silent_client, _client_stuck_at_the_password],
                         ids=["sends-nothing", "never-answers-the-password"])
def test_client_login_timeout_drops_clients_that_never_log_in(proxy_factory, client):
    proxy = proxy_factory(client_login_timeout=300)
    started = time.monotonic()
    error = trio.run(client, proxy.port)
    assert 0.25 < time.monotonic() - started < 2.5
    assert "client_login_timeout" in error.fields["M"], error
    wait_for(lambda: "08P01" in proxy.log and "client_login_timeout" in proxy.log,
             what="the login timeout in the log")
    # A normal login is quick enough and works.
    with proxy.connect() as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    assert "Traceback" not in proxy.log


def test_a_socket_sending_nothing_does_not_hold_a_server_connection(pg, proxy_factory):
    proxy = proxy_factory(client_login_timeout=300, default_pool_size=1)
    socks = [socket.create_connection(("127.0.0.1", proxy.port)) for _ in range(20)]
    try:
        with proxy.connect() as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        for sock in socks:
            sock.settimeout(3)
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
            assert data[:1] == b"E" and b"08P01" in data, data
    finally:
        for sock in socks:
            sock.close()


# --- notices and notifications ------------------------------------------------------------


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_notices_reach_the_client(proxy_factory, mode):
    proxy = proxy_factory(pooler_mode=mode)
    with proxy.connect() as conn:
        notices = []
        conn.add_notice_handler(lambda diag: notices.append((diag.severity, diag.message_primary)))
        conn.execute("DO $$ BEGIN RAISE NOTICE 'hello'; END $$")
        assert notices == [("NOTICE", "hello")]
        # Inside a transaction and with a warning, several in one statement.
        conn.execute("BEGIN")
        conn.execute("DO $$ BEGIN RAISE NOTICE 'one'; RAISE WARNING 'two'; END $$")
        conn.execute("COMMIT")
        assert notices[1:] == [("NOTICE", "one"), ("WARNING", "two")]
        assert conn.execute("select 1").fetchone() == (1,)


def test_notifications_reach_an_idle_listener_in_session_mode(pg, proxy_factory):
    proxy = proxy_factory(pooler_mode="session", default_pool_size=3)
    with proxy.connect() as listener:
        listener.execute("LISTEN failures_channel")
        time.sleep(0.2)  # the listener is idle: no query of its own is running
        # Sent straight to PostgreSQL, not through the proxy.
        pg.sql("NOTIFY failures_channel, 'first'; NOTIFY failures_channel, 'second'", dbname=APP_DB)
        notes = list(listener.notifies(timeout=5, stop_after=2))
        assert [(n.channel, n.payload) for n in notes] == [("failures_channel", "first"),
                                                            ("failures_channel", "second")]
        # And the listener's connection still runs queries.
        assert listener.execute("select 1").fetchone() == (1,)

