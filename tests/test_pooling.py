"""The proxy as its users see it: real clients (psql, psycopg, pgbench) through it to real PostgreSQL.

Covers the data path (simple and extended protocol, pipelines, COPY, errors), transaction and
session pooling, and the pool's own housekeeping (min_pool_size, idle_timeout, server_lifetime,
checkout_timeout), each checked through what a client or pg_stat_activity shows.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import socket
import subprocess
import threading
import time
from decimal import Decimal

import psycopg
import pytest
from conftest import APP_DB, PG_USERS, proxy_backends, psql, wait_for
from psycopg import errors
from psycopg.pq import TransactionStatus


def backend_pid(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT pg_backend_pid()").fetchone()[0]


def backend_pids(pg, proxy) -> set[int]:
    return {int(row[0]) for row in proxy_backends(pg, proxy)}


def in_thread(fn, *args) -> concurrent.futures.Future:
    """Run `fn` in a fresh daemon-ish worker; the caller checks .done() / .result()."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    future = pool.submit(fn, *args)
    pool.shutdown(wait=False)
    return future


def still_running(future: concurrent.futures.Future, for_seconds: float = 0.5) -> bool:
    done, _ = concurrent.futures.wait([future], timeout=for_seconds)
    return not done


# --- the data path -------------------------------------------------------------------------------


def test_psql_queries_through_the_proxy(proxy):
    out = psql(proxy.port, "SELECT 6 * 7, current_user, current_database()")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "42|app|appdb"

    out = psql(proxy.port, "BEGIN; CREATE TEMP TABLE t ON COMMIT DROP AS "
                           "SELECT generate_series(1, 1000) AS n; SELECT count(*), sum(n) FROM t; COMMIT")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1000|500500"]

    out = psql(proxy.port, "SELECT 1 / 0")
    assert out.returncode == 1
    assert "division by zero" in out.stderr


def test_simple_queries_transactions_and_errors(pg, proxy):
    with proxy.connect() as conn, proxy.connect() as other:
        conn.execute("DROP TABLE IF EXISTS basic; CREATE TABLE basic (id int PRIMARY KEY, v text)")
        # Several statements in one string only work in the simple query protocol.
        cur = conn.execute("SELECT 1, 'two', NULL::int; SELECT 'second result'")
        assert cur.fetchall() == [(1, "two", None)]
        assert cur.nextset() and cur.fetchall() == [("second result",)]

        conn.execute("BEGIN")
        conn.execute("INSERT INTO basic VALUES (1, 'committed')")
        assert conn.info.transaction_status == TransactionStatus.INTRANS
        # Uncommitted: another client does not see the row yet.
        assert other.execute("SELECT count(*) FROM basic").fetchone() == (0,)
        conn.execute("COMMIT")
        assert conn.info.transaction_status == TransactionStatus.IDLE
        assert other.execute("SELECT v FROM basic").fetchall() == [("committed",)]

        conn.execute("BEGIN")
        conn.execute("INSERT INTO basic VALUES (2, 'rolled back')")
        assert conn.execute("SELECT count(*) FROM basic").fetchone() == (2,)
        conn.execute("ROLLBACK")
        assert conn.execute("SELECT id FROM basic ORDER BY id").fetchall() == [(1,)]
        assert pg.sql("SELECT string_agg(v, ',') FROM basic", dbname=APP_DB) == "committed"

        # An error outside a transaction: the right SQLSTATE, and the connection works on.
        with pytest.raises(errors.DivisionByZero) as exc:
            conn.execute("SELECT 1 / 0")
        assert exc.value.sqlstate == "22012"
        assert conn.execute("SELECT 'still here'").fetchone() == ("still here",)

        with pytest.raises(errors.UniqueViolation) as exc:
            conn.execute("INSERT INTO basic VALUES (1, 'duplicate')")
        assert exc.value.sqlstate == "23505"

        # An error inside a transaction aborts it until ROLLBACK, as on PostgreSQL itself.
        conn.execute("BEGIN")
        with pytest.raises(errors.DivisionByZero):
            conn.execute("SELECT 1 / 0")
        assert conn.info.transaction_status == TransactionStatus.INERROR
        with pytest.raises(errors.InFailedSqlTransaction) as exc:
            conn.execute("SELECT 1")
        assert exc.value.sqlstate == "25P02"
        conn.execute("ROLLBACK")
        assert conn.execute("SELECT 2").fetchone() == (2,)


def test_extended_protocol_parameters_binary_executemany_pipeline(proxy):
    with proxy.connect() as conn:
        row = conn.execute("SELECT %s::int + %s::int, %s::text, %s::bytea, %s::numeric, %s::int",
                           (40, 2, "héllo wörld", b"\x00\x01\xff", Decimal("1.50"), None)).fetchone()
        assert row == (42, "héllo wörld", b"\x00\x01\xff", Decimal("1.50"), None)

        # Binary results: PostgreSQL sends binary values, psycopg decodes them the same.
        cur = conn.cursor(binary=True)
        row = cur.execute("SELECT %s::int8, %s::float8, ARRAY[1, 2, 3], 'x'::text, now() > %s",
                          (2**40, 0.5, "2000-01-01")).fetchone()
        assert row == (2**40, 0.5, [1, 2, 3], "x", True)
        assert cur.pgresult.fformat(0) == 1  # really binary on the wire

        conn.execute("DROP TABLE IF EXISTS many; CREATE TABLE many (id int, label text)")
        cur = conn.cursor()
        cur.executemany("INSERT INTO many VALUES (%s, %s)", [(i, f"row {i}") for i in range(200)])
        assert conn.execute("SELECT count(*), sum(id) FROM many").fetchone() == (200, 19900)
        cur.executemany("INSERT INTO many VALUES (%s, %s) RETURNING id * 10",
                        [(1000, "a"), (1001, "b")], returning=True)
        returned = []
        while True:
            returned += cur.fetchall()
            if not cur.nextset():
                break
        assert returned == [(10000,), (10010,)]

        # A pipeline: many statements sent before any result is read.
        with conn.pipeline():
            curs = [conn.execute("SELECT %s::int * 2, pg_backend_pid()", (i,)) for i in range(50)]
        results = [c.fetchone() for c in curs]
        assert [r[0] for r in results] == [i * 2 for i in range(50)]

        # A pipelined transaction is atomic and runs on one server connection.
        with conn.pipeline(), conn.transaction():
            curs = [conn.execute("INSERT INTO many VALUES (%s, 'piped') RETURNING pg_backend_pid()",
                                 (i,)) for i in range(20)]
        assert len({c.fetchone()[0] for c in curs}) == 1
        assert conn.execute("SELECT count(*) FROM many WHERE label = 'piped'").fetchone() == (20,)

        # An error in the middle of a pipeline surfaces and, as on PostgreSQL itself, undoes
        # the whole batch (one Sync: one implicit transaction); the connection stays usable.
        with pytest.raises(errors.DivisionByZero), conn.pipeline():
            conn.execute("INSERT INTO many VALUES (-1, 'before error')")
            conn.execute("SELECT 1 / 0")
            conn.execute("INSERT INTO many VALUES (-2, 'after error')")
        assert conn.execute("SELECT count(*) FROM many WHERE id < 0").fetchone() == (0,)
        assert conn.execute("SELECT %s::text", ("fine",)).fetchone() == ("fine",)


def test_prepared_statements_named_and_unnamed_in_session_mode(proxy_factory):
    proxy = proxy_factory(pooler_mode="session")
    with proxy.connect(prepare_threshold=0) as conn:
        for i in range(5):
            assert conn.execute("SELECT %s::int + 1", (i,)).fetchone() == (i + 1,)
        names = [r[0] for r in conn.execute("SELECT name FROM pg_prepared_statements")]
        assert names and all(name.startswith("_pg3_") for name in names)
        # The statement was prepared once and reused by name.
        assert len(conn.execute("SELECT 1 FROM pg_prepared_statements "
                                "WHERE statement LIKE 'SELECT $1::int + 1'").fetchall()) == 1

        def count() -> int:
            return conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()[0]

        before = count()
        for i in range(5):
            assert conn.execute("SELECT %s::int * 3", (i,), prepare=False).fetchone() == (3 * i,)
        assert count() == before  # unnamed statements leave nothing behind on the server


def test_copy_from_stdin_and_to_stdout(proxy):
    rows = [(i, f"name {i}\twith a tab, a \\ and a\nnewline", bytes(range(i % 256)))
            for i in range(2000)]
    with proxy.connect() as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS copied; "
                    "CREATE TABLE copied (id int PRIMARY KEY, name text, payload bytea)")
        with cur.copy("COPY copied FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        assert cur.execute("SELECT count(*) FROM copied").fetchone() == (2000,)

        for fmt in ("text", "binary"):
            out = []
            with cur.copy(f"COPY (SELECT * FROM copied ORDER BY id) TO STDOUT (FORMAT {fmt})") as copy:
                copy.set_types(["int4", "text", "bytea"])
                out.extend(copy.rows())
            assert out == rows, fmt

        # COPY inside a transaction, rolled back.
        with pytest.raises(RuntimeError, match="abandon"), conn.transaction():
            with cur.copy("COPY copied (id) FROM STDIN") as copy:
                copy.write_row((5000,))
            raise RuntimeError("abandon")
        assert cur.execute("SELECT count(*) FROM copied").fetchone() == (2000,)

        # Bad data: the server's error reaches the client and the connection works on.
        with pytest.raises(errors.InvalidTextRepresentation), \
                cur.copy("COPY copied (id) FROM STDIN") as copy:
            copy.write("not a number\n")
        # The client gives up in the middle: CopyFail goes through.
        with pytest.raises(ZeroDivisionError), cur.copy("COPY copied (id) FROM STDIN") as copy:
            copy.write_row((6000,))
            1 / 0  # noqa: B018
        assert cur.execute("SELECT count(*), max(id) FROM copied").fetchone() == (2000, 1999)


def test_pgbench_select_only_simple_and_extended(proxy_factory):
    proxy = proxy_factory(default_pool_size=4)
    env = dict(os.environ, PGPASSWORD=PG_USERS["app"][0])
    where = ["-h", "127.0.0.1", "-p", str(proxy.port), "-U", "app"]
    init = subprocess.run(["pgbench", "-i", "-q", "-s", "1", *where, APP_DB],
                          env=env, capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stderr
    for mode in ("simple", "extended"):
        run = subprocess.run(["pgbench", "-n", "-S", "-M", mode, "-c", "8", "-j", "2", "-T", "2",
                              *where, APP_DB], env=env, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr
        processed = re.search(r"number of transactions actually processed: (\d+)", run.stdout)
        failed = re.search(r"number of failed transactions: (\d+)", run.stdout)
        assert processed and int(processed.group(1)) > 100, run.stdout
        assert failed and failed.group(1) == "0", run.stdout


# --- transaction pooling ---------------------------------------------------------------------------


def test_200_clients_through_a_pool_of_5(pg, proxy_factory):
    proxy = proxy_factory(default_pool_size=5)
    with proxy.connect() as conn:
        conn.execute("DROP TABLE IF EXISTS crowd; CREATE TABLE crowd (client int, n int)")
    n_clients, n_transactions = 200, 5
    all_connected = threading.Barrier(n_clients + 1)
    peak = 0

    def client(cid: int) -> set[int]:
        pids = set()
        try:
            conn = proxy.connect(prepare_threshold=None)
        except BaseException:
            all_connected.abort()  # fail now rather than at the barrier's timeout
            raise
        with conn:
            all_connected.wait(timeout=60)
            for n in range(n_transactions):
                with conn.transaction():
                    conn.execute("SELECT set_config('crowd.client', %s, true)", (str(cid),))
                    conn.execute("INSERT INTO crowd VALUES (%s, %s)", (cid, n))
                    row = conn.execute("SELECT current_setting('crowd.client')::int, count(*), "
                                       "pg_backend_pid() FROM crowd WHERE client = %s",
                                       (cid,)).fetchone()
                    assert row[:2] == (cid, n + 1), f"client {cid} got someone else's answer"
                    pids.add(row[2])
                # The transaction-local setting did not outlive the transaction.
                assert conn.execute("SELECT current_setting('crowd.client', true)").fetchone() \
                    in ((None,), ("",))
        return pids

    with concurrent.futures.ThreadPoolExecutor(n_clients) as executor:
        futures = [executor.submit(client, cid) for cid in range(n_clients)]
        all_connected.wait(timeout=60)  # 200 clients are logged in at once
        while not all(f.done() for f in futures):
            peak = max(peak, len(proxy_backends(pg, proxy)))
            time.sleep(0.02)
        pids = set().union(*(f.result() for f in futures))
    assert 1 <= len(pids) <= 5
    assert peak <= 5
    assert 1 <= len(proxy_backends(pg, proxy)) <= 5
    assert pg.sql("SELECT count(*), count(DISTINCT client) FROM crowd", dbname=APP_DB) == "1000|200"


def test_transaction_mode_shares_a_server_between_clients(proxy_factory):
    proxy = proxy_factory(default_pool_size=1)
    with proxy.connect() as first:
        pid = backend_pid(first)
    with proxy.connect() as a, proxy.connect() as b:
        assert backend_pid(a) == pid
        assert backend_pid(b) == pid  # both clients are connected; one server serves them
        # While `a` is inside a transaction the server is its own: `b` waits, then proceeds.
        a.execute("BEGIN")
        a.execute("SELECT 1")
        waiting = in_thread(backend_pid, b)
        assert still_running(waiting)
        a.execute("COMMIT")
        assert waiting.result(timeout=10) == pid


def test_checkout_timeout_gives_53300_and_the_client_can_retry(proxy_factory):
    # (With the C path on, `a` is parked in C with the server while `b` waits: Trio's loop then
    # waits inside the Reactor, up to Trio's next deadline -- which must still come on time.)
    proxy = proxy_factory(default_pool_size=1, checkout_timeout=300)
    with proxy.connect() as a, proxy.connect() as b:
        a.execute("BEGIN")
        a.execute("SELECT 1")
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as exc:
            b.execute("SELECT 1")
        assert exc.value.sqlstate == "53300"
        assert "checkout_timeout" in str(exc.value)
        assert 0.25 <= time.monotonic() - started < 3
        a.execute("COMMIT")
        assert b.execute("SELECT 'retried'").fetchone() == ("retried",)


def _leave_with_terminate(conn: psycopg.Connection) -> None:
    conn.close()  # libpq sends Terminate


def _leave_abruptly(conn: psycopg.Connection) -> None:
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    sock.shutdown(socket.SHUT_RDWR)  # the proxy sees EOF, no Terminate
    sock.close()
    conn.close()


@pytest.mark.parametrize("leave", [_leave_with_terminate, _leave_abruptly],
                         ids=["terminate", "abrupt"])
def test_client_leaving_mid_transaction_leaves_no_open_transaction(pg, proxy_factory, leave):
    proxy = proxy_factory(default_pool_size=1)
    with proxy.connect() as setup:
        setup.execute("CREATE TABLE IF NOT EXISTS orphans (v text)")
    conn = proxy.connect()
    conn.execute("BEGIN")
    conn.execute("INSERT INTO orphans VALUES ('left behind')")
    assert conn.execute("SELECT txid_current_if_assigned()").fetchone()[0] is not None
    leave(conn)

    def no_open_transaction() -> bool:
        states = [row[0] for row in proxy_backends(pg, proxy, "state")]
        return not any("transaction" in state for state in states)

    wait_for(no_open_transaction, what="the departed client's transaction to end")
    with proxy.connect() as after:  # the next client, on the pool's only server connection
        assert after.execute("SELECT txid_current_if_assigned(), "
                             "(SELECT count(*) FROM orphans)").fetchone() == (None, 0)
        # The locks the insert held are gone too.
        with after.transaction():
            after.execute("LOCK TABLE orphans IN ACCESS EXCLUSIVE MODE NOWAIT")


# --- the pool's housekeeping --------------------------------------------------------------------


def test_min_pool_size_is_prefilled_without_clients(pg, proxy_factory):
    proxy = proxy_factory(min_pool_size=3, default_pool_size=5)
    wait_for(lambda: len(proxy_backends(pg, proxy)) == 3, what="3 prefilled server connections")
    with proxy.connect() as conn:  # a client uses a prefilled connection, no new one
        assert backend_pid(conn) in backend_pids(pg, proxy)
    assert len(proxy_backends(pg, proxy)) == 3


def test_idle_timeout_closes_idle_connections_down_to_min_pool_size(pg, proxy_factory):
    proxy = proxy_factory(idle_timeout=500, min_pool_size=1, default_pool_size=5)
    clients = [proxy.connect() for _ in range(3)]
    try:
        for conn in clients:  # three transactions at once: three server connections
            conn.execute("BEGIN")
            conn.execute("SELECT 1")
        pids = {backend_pid(conn) for conn in clients}
        assert len(pids) == 3
        for conn in clients:
            conn.execute("COMMIT")
        assert backend_pids(pg, proxy) == pids  # pooled, not closed, right after use

        def down_to_one() -> set[int] | None:
            now = backend_pids(pg, proxy)
            return now if len(now) == 1 else None

        remaining = wait_for(down_to_one, timeout=5, what="idle connections to close down to min_pool_size")
        assert remaining <= pids
        assert backend_pid(clients[0]) in remaining  # the one kept open still serves
    finally:
        for conn in clients:
            conn.close()


def test_server_lifetime_retires_old_connections(pg, proxy_factory):
    proxy = proxy_factory(server_lifetime=500)
    with proxy.connect() as conn:
        old = backend_pid(conn)
        wait_for(lambda: old not in backend_pids(pg, proxy), timeout=5,
                 what="the idle connection to be closed after server_lifetime")
        new = backend_pid(conn)
        assert new != old


# --- session pooling ------------------------------------------------------------------------------


def test_session_mode_keeps_state_and_resets_it_for_the_next_client(proxy_factory):
    proxy = proxy_factory(pooler_mode="session", default_pool_size=1)
    with proxy.connect(prepare_threshold=0) as a:
        pid = backend_pid(a)
        a.execute("SET statement_timeout = '12345ms'")
        a.execute("CREATE TEMP TABLE scratch (v int)")
        a.execute("INSERT INTO scratch VALUES (%s)", (7,))
        a.execute("PREPARE add_two AS SELECT $1::int + 2")
        for _ in range(3):  # state persists across statements and transactions
            assert a.execute("SHOW statement_timeout").fetchone() == ("12345ms",)
            assert a.execute("SELECT v FROM scratch").fetchall() == [(7,)]
            assert a.execute("EXECUTE add_two(40)").fetchone() == (42,)
            assert backend_pid(a) == pid
    with proxy.connect(prepare_threshold=0) as b:
        assert backend_pid(b) == pid  # the same server connection, reused...
        # ...but reset: nothing of the previous session shows.
        assert b.execute("SHOW statement_timeout").fetchone() == ("0",)
        with pytest.raises(errors.UndefinedTable):
            b.execute("SELECT v FROM scratch")
        with pytest.raises(errors.InvalidSqlStatementName):
            b.execute("EXECUTE add_two(40)")
        # psycopg names its prepared statements the same way in every session: without the
        # reset this would fail with "prepared statement already exists".
        assert b.execute("SELECT %s::int + 1", (1,)).fetchone() == (2,)


def test_session_mode_clients_wait_for_a_free_server(pg, proxy_factory):
    proxy = proxy_factory(pooler_mode="session", default_pool_size=2)
    a, b = proxy.connect(), proxy.connect()
    try:
        pid_a, pid_b = backend_pid(a), backend_pid(b)
        assert pid_a != pid_b  # each session holds its own server connection

        def third_client() -> int:
            with proxy.connect() as c:
                return backend_pid(c)

        waiting = in_thread(third_client)
        assert still_running(waiting)  # both servers are taken for the length of a session
        a.execute("SELECT 1")  # the holders keep working meanwhile
        a.close()
        assert waiting.result(timeout=10) == pid_a
    finally:
        a.close()
        b.close()

    # More clients than connections: they take turns, each with its own session state.
    def session(cid: int) -> int:
        with proxy.connect() as conn:
            conn.execute(f"SET application_name = 'client{cid}'")
            conn.execute("SELECT pg_sleep(0.1)")
            assert conn.execute("SHOW application_name").fetchone() == (f"client{cid}",)
            return backend_pid(conn)

    with concurrent.futures.ThreadPoolExecutor(6) as executor:
        pids = set(executor.map(session, range(6)))
    assert pids <= {pid_a, pid_b}
    assert len(proxy_backends(pg, proxy)) <= 2
