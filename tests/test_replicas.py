"""Replicas: load balancing, read/write splitting, overrides, and re-routing around dead hosts.

Against a real primary with two streaming replicas (the `pg_replicas` fixture). Every query asks
the server that ran it for `inet_server_port(), pg_is_in_recovery()`, so each test sees where the
proxy sent it, as a user would.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from conftest import (
    APP_DB,
    PG_USERS,
    ProxyProcess,
    replica_pgdog_toml,
    restart_replicas,
    users_toml,
    wait_for,
    wait_replicated,
)
from psycopg import errors

from trio_pgdog.config import ConfigError, load_config_text
from trio_pgdog.embedded import Cluster, free_port

WHERE = "SELECT inet_server_port(), pg_is_in_recovery()"


@pytest.fixture
def topology(pg_replicas) -> tuple[Cluster, list[Cluster]]:
    """The primary and replicas, all running and caught up (a failed earlier test may have left
    one stopped)."""
    primary, replicas = pg_replicas
    if not all(r.is_running() for r in replicas):
        restart_replicas(primary, replicas)
    return primary, replicas


@pytest.fixture
def start(topology, proxy_factory) -> Callable[..., ProxyProcess]:
    """start(**general) -> a proxy in front of the primary and both replicas."""
    primary, replicas = topology

    def _start(**general: object) -> ProxyProcess:
        return proxy_factory(
            pgdog_text=lambda port: replica_pgdog_toml(primary, replicas, port, **general))

    return _start


def where(conn: psycopg.Connection, sql: str = WHERE, params: tuple | None = None) -> tuple[int, bool]:
    """(port, in_recovery) of the server that ran `sql` (its first two columns)."""
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return int(row[0]), bool(row[1])


def ports_of(clusters: list[Cluster]) -> set[int]:
    return {c.port for c in clusters}


# --- configuration --------------------------------------------------------------------------

BASE = '[general]\n{general}\n[[databases]]\nname = "appdb"\nhost = "127.0.0.1"\nrole = "primary"\n' \
       '\n[[databases]]\nname = "appdb"\nhost = "127.0.0.1"\nport = 5433\nrole = "replica"\n'


def test_config_defaults_and_one_logical_database():
    config = load_config_text(BASE.format(general=""), users_toml())
    assert config.general.load_balancing_strategy == "round_robin"
    assert config.general.ban_timeout == 300_000
    assert config.general.read_write_split is True
    assert {(db.name, db.role) for db in config.databases} == {("appdb", "primary"), ("appdb", "replica")}


@pytest.mark.parametrize("strategy", ["round_robin", "random", "least_active_connections"])
def test_config_accepts_every_strategy(strategy):
    general = f'load_balancing_strategy = "{strategy}"\nban_timeout = 1000\nread_write_split = false\n'
    config = load_config_text(BASE.format(general=general), users_toml())
    assert config.general.load_balancing_strategy == strategy
    assert config.general.ban_timeout == 1000
    assert config.general.read_write_split is False


def test_config_rejects_an_unknown_strategy():
    with pytest.raises(ConfigError) as exc:
        load_config_text(BASE.format(general='load_balancing_strategy = "fastest"\n'), users_toml())
    assert "load_balancing_strategy" in str(exc.value)
    assert "round_robin" in str(exc.value)


# --- load balancing -------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", [None, "round_robin"])
def test_round_robin_spreads_reads_evenly_over_the_replicas(topology, start, strategy):
    _primary, replicas = topology
    proxy = start() if strategy is None else start(load_balancing_strategy=strategy)
    with proxy.connect() as conn:
        seen = [where(conn) for _ in range(40)]
    assert {in_recovery for _, in_recovery in seen} == {True}
    counts = Counter(port for port, _ in seen)
    assert set(counts) == ports_of(replicas), counts
    for replica in replicas:
        assert 16 <= counts[replica.port] <= 24, counts


def test_random_uses_both_replicas_and_only_them(topology, start):
    _primary, replicas = topology
    proxy = start(load_balancing_strategy="random")
    with proxy.connect() as conn:
        seen = [where(conn) for _ in range(40)]
    assert {in_recovery for _, in_recovery in seen} == {True}
    assert set(Counter(port for port, _ in seen)) == ports_of(replicas)


def test_least_active_connections_avoids_a_busy_replica(topology, start):
    _primary, replicas = topology
    proxy = start(load_balancing_strategy="least_active_connections")
    with proxy.connect() as conn:
        seen = [where(conn) for _ in range(10)]
    assert {in_recovery for _, in_recovery in seen} == {True}
    assert {port for port, _ in seen} <= ports_of(replicas)

    # One client keeps a replica busy with a long read; meanwhile the others' reads go to
    # the other replica, the one with fewer active connections.
    sleeper_result: list[tuple[int, bool]] = []
    sleep_sql = "SELECT inet_server_port(), pg_is_in_recovery(), pg_sleep(2) /* busy */"

    def sleeper() -> None:
        with proxy.connect() as conn:
            sleeper_result.append(where(conn, sleep_sql))

    thread = threading.Thread(target=sleeper)
    thread.start()
    try:
        def busy_replica() -> Cluster | None:
            for replica in replicas:
                if replica.sql("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                               "AND query LIKE '%pg_sleep(2) /* busy */%' "
                               "AND pid <> pg_backend_pid()") != "0":
                    return replica
            return None

        busy = wait_for(busy_replica, timeout=5, what="the long read to start on a replica")
        with proxy.connect() as conn:
            others = [where(conn) for _ in range(10)]
        assert thread.is_alive(), "the long read finished too soon for this test to mean anything"
    finally:
        thread.join(10)
    idle = (ports_of(replicas) - {busy.port}).pop()
    assert others == [(idle, True)] * 10
    assert sleeper_result == [(busy.port, True)]


# --- read/write splitting -------------------------------------------------------------------


def test_writes_go_to_the_primary(topology, start):
    primary, _replicas = topology
    proxy = start()
    on_primary = (primary.port, False)
    with proxy.connect() as conn:
        conn.execute("DELETE FROM rw_t WHERE id BETWEEN 100 AND 199")
        assert where(conn, "INSERT INTO rw_t VALUES (100, 'a') "
                           "RETURNING inet_server_port(), pg_is_in_recovery()") == on_primary
        assert where(conn, "UPDATE rw_t SET v = 'b' WHERE id = 100 "
                           "RETURNING inet_server_port(), pg_is_in_recovery()") == on_primary
        assert where(conn, "SELECT inet_server_port(), pg_is_in_recovery() FROM rw_t "
                           "WHERE id = 100 FOR UPDATE") == on_primary
        assert where(conn, "SELECT inet_server_port(), pg_is_in_recovery() FROM rw_t "
                           "WHERE id = 100 FOR SHARE") == on_primary
        assert where(conn, "WITH moved AS (UPDATE rw_t SET v = 'c' WHERE id = 100 RETURNING id) "
                           "SELECT inet_server_port(), pg_is_in_recovery() FROM moved") == on_primary
        assert where(conn, "DELETE FROM rw_t WHERE id = 100 "
                           "RETURNING inet_server_port(), pg_is_in_recovery()") == on_primary

        # DDL: on a replica it would fail (read-only); the table appears on the primary.
        conn.execute("DROP TABLE IF EXISTS rw_ddl; CREATE TABLE rw_ddl (id int)")
        conn.execute("DROP SEQUENCE IF EXISTS rw_seq")
        conn.execute("CREATE SEQUENCE rw_seq")
        assert primary.sql("SELECT count(*) FROM pg_class WHERE relname IN ('rw_ddl', 'rw_seq')",
                           dbname=APP_DB) == "2"
        # nextval writes (a plain SELECT to look at): it must reach the primary.
        for expected in (1, 2, 3):
            row = conn.execute("SELECT nextval('rw_seq'), inet_server_port(), "
                               "pg_is_in_recovery()").fetchone()
            assert row == (expected, primary.port, False)


def test_a_row_written_through_the_proxy_is_read_back_from_the_replicas(topology, start):
    primary, replicas = topology
    proxy = start()
    with proxy.connect() as conn:
        conn.execute("DELETE FROM rw_t WHERE id = 200")
        conn.execute("INSERT INTO rw_t VALUES (200, 'replicated')")
        # read_your_writes: the writer sees its row at once, wherever the read runs.
        assert conn.execute("SELECT v FROM rw_t WHERE id = 200").fetchone() == ("replicated",)

        def from_a_replica() -> bool:
            row = conn.execute("SELECT v, pg_is_in_recovery() FROM rw_t WHERE id = 200").fetchone()
            assert row is not None and row[0] == "replicated"
            return row[1] is True

        wait_for(from_a_replica, timeout=10, what="reads to go to the replicas again")
        # Both replicas have it once they have caught up.
        wait_replicated(primary, replicas)
        seen = {conn.execute("SELECT v, inet_server_port() FROM rw_t WHERE id = 200").fetchone()
                for _ in range(6)}
    assert seen == {("replicated", r.port) for r in replicas}


@pytest.mark.parametrize("begin", ["BEGIN", "START TRANSACTION", "BEGIN ISOLATION LEVEL REPEATABLE READ"])
def test_an_explicit_transaction_runs_on_the_primary(topology, start, begin):
    primary, _replicas = topology
    proxy = start()
    with proxy.connect() as conn:
        conn.execute(begin)
        inside = [where(conn) for _ in range(4)]
        conn.execute("COMMIT")
        # A transaction that is not READ ONLY may have written: the client's reads stay on
        # the primary until the replicas have caught up with it (read_your_writes).
        wait_for(lambda: where(conn)[1] is True, timeout=10, what="reads on a replica again")
    assert inside == [(primary.port, False)] * 4


@pytest.mark.parametrize("begin", ["BEGIN READ ONLY", "START TRANSACTION READ ONLY"])
def test_a_read_only_transaction_may_run_on_a_replica(topology, start, begin):
    _primary, replicas = topology
    proxy = start()
    with proxy.connect() as conn:
        conn.execute(begin)
        inside = [where(conn) for _ in range(3)]
        conn.execute("COMMIT")
    assert len(set(inside)) == 1, "one transaction, one server"
    port, in_recovery = inside[0]
    assert in_recovery is True and port in ports_of(replicas)


# --- overrides ------------------------------------------------------------------------------


def test_role_comment_overrides_the_route(topology, start):
    primary, _replicas = topology
    proxy = start()
    with proxy.connect() as conn:
        assert where(conn, f"/* pgdog_role: primary */ {WHERE}") == (primary.port, False)
        assert conn.execute("/* pgdog_role: primary */ SELECT pg_is_in_recovery()").fetchone() == (False,)
        assert where(conn, f"/* pgdog_role: replica */ {WHERE}")[1] is True
        # Without the comment the next read is split as usual.
        assert where(conn)[1] is True


def test_set_pgdog_role_pins_the_session(topology, start):
    primary, replicas = topology
    proxy = start()
    with proxy.connect() as conn:
        conn.execute("SET pgdog.role TO 'primary'")
        assert [where(conn) for _ in range(5)] == [(primary.port, False)] * 5

        conn.execute("SET pgdog.role TO 'replica'")
        seen = [where(conn) for _ in range(6)]
        assert {r for _, r in seen} == {True}
        assert {p for p, _ in seen} <= ports_of(replicas)

        conn.execute("SET pgdog.role TO 'auto'")
        assert where(conn)[1] is True
        assert where(conn, "INSERT INTO rw_t VALUES (300, 'auto') ON CONFLICT (id) DO UPDATE "
                           "SET v = excluded.v RETURNING inet_server_port(), "
                           "pg_is_in_recovery()") == (primary.port, False)

        with pytest.raises(errors.InvalidParameterValue) as exc:
            conn.execute("SET pgdog.role TO 'bogus'")
        assert exc.value.sqlstate == "22023"
        # The session goes on, still splitting (once the replicas have its INSERT).
        wait_for(lambda: where(conn)[1] is True, timeout=10, what="reads on a replica again")
        assert conn.execute("SELECT 40 + 2").fetchone() == (42,)


def test_set_pgdog_role_is_per_client(topology, start):
    primary, _replicas = topology
    proxy = start()
    with proxy.connect() as pinned, proxy.connect() as other:
        pinned.execute("SET pgdog.role TO 'primary'")
        for _ in range(3):
            assert where(pinned) == (primary.port, False)
            assert where(other)[1] is True


# --- extended protocol ----------------------------------------------------------------------


@pytest.mark.parametrize("prepare_threshold", [0, None], ids=["named", "unnamed"])
def test_extended_protocol_reads_spread_and_writes_go_to_the_primary(topology, start,
                                                                     prepare_threshold):
    primary, replicas = topology
    proxy = start()
    with proxy.connect(prepare_threshold=prepare_threshold) as conn:
        reads = [where(conn, "SELECT inet_server_port(), pg_is_in_recovery(), %s::int", (i,))
                 for i in range(20)]
        assert {r for _, r in reads} == {True}
        counts = Counter(p for p, _ in reads)
        assert set(counts) == ports_of(replicas), counts

        conn.execute("DELETE FROM rw_t WHERE id BETWEEN 400 AND 499")
        writes = [where(conn, "INSERT INTO rw_t VALUES (%s, %s) "
                              "RETURNING inet_server_port(), pg_is_in_recovery()", (400 + i, "x"))
                  for i in range(5)]
        assert writes == [(primary.port, False)] * 5
        # The same prepared read goes to the replicas again once they have the writes.
        read = "SELECT inet_server_port(), pg_is_in_recovery(), %s::int"
        wait_for(lambda: where(conn, read, (0,))[1] is True, timeout=10,
                 what="reads on a replica again")
        again = [where(conn, read, (i,)) for i in range(4)]
        assert {r for _, r in again} == {True}
        assert set(Counter(p for p, _ in again)) == ports_of(replicas)


def test_read_write_split_off_sends_everything_to_the_primary(topology, start):
    primary, _replicas = topology
    proxy = start(read_write_split=False)
    with proxy.connect() as conn:
        assert [where(conn) for _ in range(10)] == [(primary.port, False)] * 10
    with proxy.connect(prepare_threshold=0) as conn:
        assert where(conn, "SELECT inet_server_port(), pg_is_in_recovery(), %s::int", (1,)) == \
            (primary.port, False)


# --- hosts that die -------------------------------------------------------------------------


def _reads(proxy: ProxyProcess, n: int) -> tuple[list[tuple[int, bool]], int]:
    """`n` reads, reconnecting after a failure: (where each one ran, how many failed)."""
    seen, failures = [], 0
    conn = proxy.connect()
    try:
        for _ in range(n):
            try:
                seen.append(where(conn))
            except psycopg.Error:
                failures += 1
                conn.close()
                conn = proxy.connect()
    finally:
        conn.close()
    return seen, failures


def _new_lines(proxy: ProxyProcess, since: int) -> list[str]:
    return proxy.log.splitlines()[since:]


def test_dead_replicas_are_banned_and_reads_move_on(topology, start):
    primary, replicas = topology
    first, second = replicas
    proxy = start(ban_timeout=2000, healthcheck_interval=500, healthcheck_timeout=1000)
    seen, failures = _reads(proxy, 10)
    assert failures == 0
    assert {p for p, _ in seen} == ports_of(replicas)
    try:
        # One replica dies: its pooled connections are dead and it refuses new ones.
        mark = len(proxy.log.splitlines())
        first.stop("immediate")
        seen, failures = _reads(proxy, 20)
        assert failures <= 1, proxy.log
        assert seen[-10:] == [(second.port, True)] * 10, proxy.log
        banned = [line for line in _new_lines(proxy, mark)
                  if "ban" in line.lower() and str(first.port) in line]
        assert banned, f"no ban of {first.port} in the log:\n{proxy.log}"

        # Both replicas down: reads fall back to the primary, and the log says so.
        mark = len(proxy.log.splitlines())
        second.stop("immediate")
        seen, failures = _reads(proxy, 20)
        assert failures <= 1, proxy.log
        assert seen[-10:] == [(primary.port, False)] * 10, proxy.log
        fallback = [line for line in _new_lines(proxy, mark) if "primary" in line.lower()]
        assert fallback, f"no word of reads going to the primary in the log:\n{proxy.log}"
        # Writes are unaffected.
        with proxy.connect() as conn:
            assert where(conn, "INSERT INTO rw_t VALUES (500, 'x') ON CONFLICT (id) DO UPDATE "
                               "SET v = excluded.v RETURNING inet_server_port(), "
                               "pg_is_in_recovery()") == (primary.port, False)
    finally:
        restart_replicas(primary, replicas)

    # Restarted replicas rejoin once their ban (2 s here) is over and a health check passes.
    def both_back() -> bool:
        seen, _ = _reads(proxy, 6)
        return {p for p, _ in seen[-4:]} == ports_of(replicas)

    wait_for(both_back, timeout=20, what="the restarted replicas to get reads again", interval=0.5)
    assert "Traceback" not in proxy.log


# --- the demo -------------------------------------------------------------------------------


def test_demo_sends_reads_to_its_replica_and_writes_to_its_primary(tmp_path):
    port = free_port()
    log_path = tmp_path / "demo.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "trio_pgdog", "demo", "--port", str(port)],
                                stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        def banner() -> re.Match[str] | None:
            assert proc.poll() is None, log_path.read_text()
            return re.search(r"PostgreSQL (\d+) behind the proxy on port \d+, "
                             r"with a streaming replica on port (\d+)", log_path.read_text())

        found = wait_for(banner, timeout=90, what="the demo banner")
        primary_port, replica_port = int(found.group(1)), int(found.group(2))
        dsn = f"postgresql://pgdog:pgdog@127.0.0.1:{port}/pgdog"
        wait_for(lambda: _accepts(dsn), timeout=30, what="the demo to accept clients")
        text = log_path.read_text()
        assert 'select inet_server_port(), pg_is_in_recovery()' in text
        # The banner says where writes and reads go, and about a client's own writes.
        flat = " ".join(text.split())
        assert f"go to the primary on port {primary_port};" in flat, text
        assert f"reads go to the replica on port {replica_port}, except a client's reads right " \
               "after its own writes, which go to the primary until the replica has caught up " \
               "(read_your_writes)" in flat, text
        base_dirs = [Path(m) for m in re.findall(r"(?:PostgreSQL|replica of it) in (\S+)", text)]
        assert len(base_dirs) == 2 and all(d.is_dir() for d in base_dirs), text

        with psycopg.connect(dsn, autocommit=True) as conn:
            assert where(conn) == (replica_port, True)
            conn.execute("CREATE TABLE demo_t (v int)")
            # A first impression: the table just created is there, and so is a row.
            assert conn.execute("SELECT * FROM demo_t").fetchall() == []
            assert where(conn, "INSERT INTO demo_t VALUES (1) "
                               "RETURNING inet_server_port(), pg_is_in_recovery()") == \
                (primary_port, False)
            assert conn.execute("SELECT count(*) FROM demo_t").fetchone() == (1,)
            wait_for(lambda: where(conn) == (replica_port, True), timeout=10,
                     what="reads to go to the replica again")

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not any(d.exists() for d in base_dirs)
    assert "Traceback" not in log_path.read_text()


def _accepts(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        time.sleep(0.1)
        return False


def test_background_health_check_bans_an_idle_dead_replica(topology, start):
    primary, replicas = topology
    first, second = replicas
    # min_pool_size keeps an idle connection to every host: what the checker tests.
    proxy = start(ban_timeout=60000, healthcheck_interval=300, healthcheck_timeout=1000,
                  min_pool_size=1)
    seen, failures = _reads(proxy, 4)
    assert failures == 0
    mark = len(proxy.log.splitlines())
    try:
        first.stop("immediate")

        def banned_by_check() -> bool:
            return any("health check" in line and str(first.port) in line
                       for line in _new_lines(proxy, mark))

        # No client sends anything: the background check alone finds the dead host.
        wait_for(banned_by_check, timeout=10, what="a health-check ban", interval=0.1)
        seen, failures = _reads(proxy, 6)
        assert failures == 0, proxy.log
        assert {p for p, _ in seen} == {second.port}
    finally:
        restart_replicas(primary, replicas)
    assert "Traceback" not in proxy.log


# --- pgbench through the replicas ---------------------------------------------------------------

def _pgbench(proxy: ProxyProcess, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {"PGPASSWORD": PG_USERS["app"][0], "PATH": "/usr/bin:/bin"}
    return subprocess.run(["pgbench", "-h", "127.0.0.1", "-p", str(proxy.port), "-U", "app",
                           *args, APP_DB], env=env, capture_output=True, text=True, timeout=timeout)


def _commits(cluster: Cluster) -> int:
    return int(cluster.sql(f"SELECT xact_commit FROM pg_stat_database WHERE datname = '{APP_DB}'"))


@pytest.fixture
def pgbench_tables(topology) -> None:
    primary, replicas = topology
    init = subprocess.run(["pgbench", "-h", "127.0.0.1", "-p", str(primary.port), "-U", "app",
                           "-i", "-q", "-s", "1", APP_DB],
                          env={"PGPASSWORD": PG_USERS["app"][0], "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stderr
    wait_replicated(primary, replicas)


def test_pgbench_reads_spread_evenly_over_the_replicas(topology, start, pgbench_tables):
    _primary, replicas = topology
    proxy = start()
    before = [_commits(r) for r in replicas]
    run = _pgbench(proxy, "-n", "-S", "-c", "8", "-j", "2", "-t", "250")
    assert run.returncode == 0, run.stderr
    assert "number of failed transactions: 0" in run.stdout
    def done() -> list[int]:
        return [_commits(r) - b for r, b in zip(replicas, before, strict=True)]

    # Idle backends flush their statistics up to 10 s late (PostgreSQL 15).
    wait_for(lambda: sum(done()) >= 2000, timeout=20, what="replica statistics", interval=0.5)
    done = done()
    assert all(0.4 <= d / sum(done) <= 0.6 for d in done), done


def test_a_replica_dying_under_pgbench_costs_no_transaction(topology, start, pgbench_tables):
    primary, replicas = topology
    proxy = start(ban_timeout=60000, healthcheck_interval=500, healthcheck_timeout=1000)
    env = {"PGPASSWORD": PG_USERS["app"][0], "PATH": "/usr/bin:/bin"}
    bench = subprocess.Popen(["pgbench", "-h", "127.0.0.1", "-p", str(proxy.port), "-U", "app",
                              "-n", "-S", "-c", "8", "-j", "2", "-T", "6", APP_DB],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2)
        replicas[0].stop("immediate")
        out, err = bench.communicate(timeout=60)
    finally:
        if bench.poll() is None:
            bench.kill()
        restart_replicas(primary, replicas)
    # Reads a dying replica had not answered yet are retried on the other one; a query it
    # was half-way through answering may fail (pgbench then stops that one client), no more.
    aborted = err.count("aborted in command")
    assert aborted <= 1, err
    processed = int(re.search(r"actually processed: (\d+)", out).group(1))
    assert processed > 1000, out
    assert f"banning 127.0.0.1:{replicas[0].port}" in proxy.log
    assert "Traceback" not in proxy.log


def test_writes_fail_fast_while_the_primary_is_down_and_reads_go_on(topology, start):
    primary, _replicas = topology
    proxy = start(connect_timeout=1000)
    with proxy.connect() as conn:
        assert where(conn)[1] is True
        primary.stop("fast")
        try:
            began = time.monotonic()
            with pytest.raises(psycopg.OperationalError) as info:
                conn.execute("INSERT INTO rw_t VALUES (900, 'x')")
            assert time.monotonic() - began < 3
            assert info.value.sqlstate == "08006"
            assert where(conn)[1] is True  # reads still served by the replicas
        finally:
            primary.start()
    wait_for(lambda: _accepts(primary.dsn("app", PG_USERS["app"][0], APP_DB)), timeout=30,
             what="the primary to accept connections again")
    with proxy.connect() as conn:
        assert where(conn, "INSERT INTO rw_t VALUES (901, 'y') ON CONFLICT (id) DO UPDATE SET v = 'y' "
                           "RETURNING inet_server_port(), pg_is_in_recovery()") == (primary.port, False)
