"""The admin console: psql and psycopg log in to the `admin` database and see and steer the
running proxy (SHOW ..., PAUSE/RESUME, RECONNECT, BAN/UNBAN, KILL_CLIENT, SET, RELOAD,
SHUTDOWN), with figures matching the traffic the test sent."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from conftest import (
    APP_DB,
    login_error,
    pgdog_toml,
    psql,
    query_in_thread,
    replica_pgdog_toml,
    restart_replicas,
    wait_for,
)

ADMIN_PASSWORD = "admin-secret"
ADMIN_TOML = f'\n[admin]\nname = "admin"\nuser = "admin"\npassword = "{ADMIN_PASSWORD}"\n'

POOLS_COLUMNS = ["database", "user", "cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_used",
                 "sv_login", "maxwait", "maxwait_us", "pool_mode", "host", "port", "role",
                 "shard", "banned", "paused"]
STATS_COLUMNS = ["database", "total_xact_count", "total_query_count", "total_received",
                 "total_sent", "total_xact_time", "total_query_time", "total_wait_time",
                 "avg_xact_count", "avg_query_count", "avg_recv", "avg_sent", "avg_xact_time",
                 "avg_query_time", "avg_wait_time"]


def admin_connect(proxy, password: str = ADMIN_PASSWORD) -> psycopg.Connection:
    return psycopg.connect(host="127.0.0.1", port=proxy.port, user="admin", password=password,
                           dbname="admin", autocommit=True, connect_timeout=10)


def show(proxy, what: str) -> list[dict[str, object]]:
    """SHOW `what` on the admin console, as dicts by column name."""
    with admin_connect(proxy) as conn:
        cur = conn.execute(f"SHOW {what}")
        names = [c.name for c in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def admin(proxy, command: str) -> str | None:
    """Run an admin command; its CommandComplete tag."""
    with admin_connect(proxy) as conn:
        return conn.execute(command).statusmessage


@pytest.fixture
def admin_proxy(proxy_factory, pg):
    def start(**general: object):
        return proxy_factory(pgdog_text=lambda port: pgdog_toml(pg, port, **general) + ADMIN_TOML)
    return start


def test_show_pools_and_stats_match_traffic(admin_proxy, pg):
    proxy = admin_proxy()
    with proxy.connect() as conn:
        for _ in range(5):
            conn.execute("SELECT 1")
        with conn.transaction():
            conn.execute("SELECT 2")
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1/0")
        cur = conn.cursor()
        names = [c.name for c in admin_connect(proxy).execute("SHOW POOLS").description]
        assert names == POOLS_COLUMNS
        (pool,) = show(proxy, "POOLS")
        assert pool["database"] == APP_DB and pool["user"] == "app"
        assert pool["pool_mode"] == "transaction" and pool["role"] == "primary"
        assert (pool["host"], pool["port"], pool["shard"]) == ("127.0.0.1", pg.port, 0)
        assert (pool["cl_active"], pool["cl_waiting"], pool["sv_active"]) == (1, 0, 0)
        assert pool["sv_idle"] + pool["sv_used"] == 1
        assert (pool["banned"], pool["paused"]) == (0, 0)
        cur.close()
    (stats,) = show(proxy, "STATS")
    assert list(stats)[:len(STATS_COLUMNS)] == STATS_COLUMNS
    # 5 SELECTs, BEGIN + SELECT + COMMIT, and the failed SELECT: 9 queries, 7 transactions.
    assert stats["total_query_count"] == 9
    assert stats["total_xact_count"] == 7
    assert stats["total_errors"] == 1
    sent_sql = 5 * len("SELECT 1") + len("BEGIN") + len("SELECT 2") + len("COMMIT") + len("SELECT 1/0")
    # A Query message is 5 header bytes + the text + NUL.
    assert stats["total_received"] == sent_sql + 9 * 6
    assert stats["total_sent"] > 9 * 6  # at least a CommandComplete and ReadyForQuery each
    assert stats["total_query_time"] > 0 and stats["total_xact_time"] >= stats["total_query_time"] / 2


def test_show_stats_averages_per_period(admin_proxy):
    proxy = admin_proxy(stats_period=1000)
    with proxy.connect(prepare_threshold=None) as conn:  # no Parse + Sync of psycopg's own
        for _ in range(10):
            conn.execute("SELECT 1")
    # The averages are those of the last whole period: they show the burst once a period
    # that holds (part of) it has ended.
    row = wait_for(lambda: next((r for r in show(proxy, "STATS") if r["avg_query_count"] > 0), None),
                   what="avg_query_count in SHOW STATS")
    assert 0 < row["avg_query_count"] <= 10 and row["avg_xact_count"] == row["avg_query_count"]
    assert row["avg_query_time"] > 0 and row["avg_recv"] > 0 and row["avg_sent"] > 0
    assert row["total_query_count"] == 10


def test_show_pools_counts_waiting_clients(admin_proxy):
    proxy = admin_proxy(default_pool_size=1)
    holder = proxy.connect()
    holder.execute("BEGIN")
    holder.execute("SELECT 1")
    thread, done = query_in_thread(proxy, "SELECT 1")
    try:
        pool = wait_for(lambda: next((p for p in show(proxy, "POOLS") if p["cl_waiting"] == 1), None),
                        what="a waiting client in SHOW POOLS")
        assert pool["sv_active"] == 1 and pool["cl_active"] >= 1
        time.sleep(1.1)
        (pool,) = show(proxy, "POOLS")
        assert pool["maxwait"] >= 1
        (row,) = [r for r in show(proxy, "LISTS") if r["list"] == "waiting_clients"]
        assert row["items"] == 1
    finally:
        holder.execute("COMMIT")
        thread.join(10)
        holder.close()
    assert done.is_set()
    (stats,) = show(proxy, "STATS")
    assert stats["total_wait_time"] >= 1_000_000  # the waiter waited more than a second
    assert stats["max_wait_time"] >= 1_000_000


def test_show_clients_servers_databases_users(admin_proxy, pg):
    proxy = admin_proxy()
    with proxy.connect(application_name="reporting") as conn:
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        clients = show(proxy, "CLIENTS")
        (client,) = [c for c in clients if c["application_name"] == "reporting"]
        assert (client["user"], client["database"], client["state"]) == ("app", APP_DB, "idle")
        assert client["addr"] == "127.0.0.1" and client["port"] > 0
        assert client["connect_time"] and client["request_time"]
        servers = show(proxy, "SERVERS")
        (server,) = [s for s in servers if s["remote_pid"] == backend]
        assert (server["state"], server["user"], server["database"]) == ("idle", "app", APP_DB)
        assert (server["addr"], server["port"]) == ("127.0.0.1", pg.port)
        # A client inside a transaction is linked to its server, and the server to it.
        conn.execute("BEGIN")
        conn.execute("SELECT 1")
        (client,) = [c for c in show(proxy, "CLIENTS") if c["application_name"] == "reporting"]
        (server,) = [s for s in show(proxy, "SERVERS") if s["remote_pid"] == backend]
        assert client["state"] == "active" and client["remote_pid"] == backend
        assert server["state"] == "active" and server["link"] == client["id"]
        assert client["link"] == server["id"]
        conn.execute("COMMIT")
    (db,) = show(proxy, "DATABASES")
    assert {k: db[k] for k in ("name", "host", "port", "database", "pool_size", "pool_mode",
                               "shard", "role")} == {
        "name": APP_DB, "host": "127.0.0.1", "port": pg.port, "database": APP_DB,
        "pool_size": 10, "pool_mode": "transaction", "shard": 0, "role": "primary"}
    (user,) = show(proxy, "USERS")
    assert (user["name"], user["database"], user["pool_size"]) == ("app", APP_DB, 10)


def test_show_config_version_lists_prepared(admin_proxy):
    proxy = admin_proxy(default_pool_size=4)
    config = {row["key"]: row for row in show(proxy, "CONFIG")}
    assert config["default_pool_size"]["value"] == "4"
    assert config["default_pool_size"]["default"] == "10"
    assert config["default_pool_size"]["changeable"] == "yes"
    assert config["port"]["changeable"] == "no"
    (version,) = show(proxy, "VERSION")
    assert version["version"].startswith("trio_pgdog ")
    with proxy.connect() as conn:
        conn.execute("SELECT %s::int + 1", (41,), prepare=True)
        lists = {r["list"]: r["items"] for r in show(proxy, "LISTS")}
        assert lists["used_clients"] == 1 and lists["pools"] == 1 and lists["users"] == 1
    prepared = show(proxy, "PREPARED")
    assert any("$1::int + 1" in p["statement"] and p["parameters"] == 1 for p in prepared)
    assert [c for c in admin_connect(proxy).execute("SHOW QUERY_CACHE").description] != []


def test_psql_reads_the_console(admin_proxy):
    proxy = admin_proxy()
    out = psql(proxy.port, "SHOW VERSION; SHOW LISTS", user="admin", password=ADMIN_PASSWORD,
               dbname="admin")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("trio_pgdog ")
    assert "pools|1" in out.stdout.splitlines()


def test_logins_refused(admin_proxy):
    proxy = admin_proxy()
    wrong = login_error(proxy.port, "admin", dbname="admin", password="nope")
    assert wrong is not None and wrong["C"] == "28P01"
    other = login_error(proxy.port, "app", dbname="admin", password="app-secret")
    assert other is not None and other["C"] == "28000"
    assert "admin console" in other["M"]
    assert login_error(proxy.port, "admin", dbname="admin", password=ADMIN_PASSWORD) is None


def test_bad_commands_get_clear_errors(admin_proxy):
    proxy = admin_proxy()
    with admin_connect(proxy) as conn:
        with pytest.raises(psycopg.errors.SyntaxError, match="unknown admin command"):
            conn.execute("SELECT 1")
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="SHOW NOPE"):
            conn.execute("SHOW NOPE")
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="simple query protocol"):
            conn.execute("SHOW POOLS", prepare=True)
        with pytest.raises(psycopg.errors.InvalidCatalogName):
            conn.execute("PAUSE nosuchdb")
        assert conn.execute("SHOW VERSION").fetchone()[0].startswith("trio_pgdog")


def test_set_changes_live_settings(admin_proxy):
    proxy = admin_proxy()
    with admin_connect(proxy) as conn:
        assert conn.execute("SET default_pool_size = 3").statusmessage == "SET"
        with pytest.raises(psycopg.errors.CantChangeRuntimeParam):
            conn.execute("SET port = 7000")
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="at least 1"):
            conn.execute("SET default_pool_size = 0")
        with pytest.raises(psycopg.errors.UndefinedObject):
            conn.execute("SET no_such_key = 1")
    config = {row["key"]: row["value"] for row in show(proxy, "CONFIG")}
    assert config["default_pool_size"] == "3"
    (user,) = show(proxy, "USERS")
    assert user["pool_size"] == 3
    with proxy.connect() as conn:  # the pools were rebuilt with the new size and still serve
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_pause_holds_queries_until_resume(admin_proxy):
    proxy = admin_proxy()
    busy = proxy.connect()
    busy.execute("BEGIN")
    paused = threading.Event()
    pauser = threading.Thread(target=lambda: (admin(proxy, "PAUSE"), paused.set()))
    pauser.start()
    try:
        # PAUSE waits for the transaction under way to end.
        wait_for(lambda: show(proxy, "POOLS")[0]["paused"] == 1, what="the pool to be paused")
        assert not paused.wait(0.5)
        busy.execute("COMMIT")
        assert paused.wait(10), "PAUSE did not return once the transaction ended"
        answered = threading.Event()

        def query() -> None:
            busy.execute("SELECT 1")
            answered.set()

        held = threading.Thread(target=query)
        held.start()
        assert not answered.wait(1.0), "a query ran while the pool was paused"
        assert admin(proxy, "RESUME") == "RESUME"
        assert answered.wait(10), "the held query did not run after RESUME"
        held.join(10)
    finally:
        admin(proxy, "RESUME")
        pauser.join(10)
        busy.close()
    assert show(proxy, "POOLS")[0]["paused"] == 0


def test_reconnect_replaces_servers(admin_proxy):
    proxy = admin_proxy(default_pool_size=1)
    with proxy.connect() as conn:
        first = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        assert conn.execute("SELECT pg_backend_pid()").fetchone()[0] == first  # pooled
        assert admin(proxy, "RECONNECT") == "RECONNECT"
        second = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        assert second != first
        # A connection in use when RECONNECT came is replaced when it comes back.
        conn.execute("BEGIN")
        assert conn.execute("SELECT pg_backend_pid()").fetchone()[0] == second
        admin(proxy, f"RECONNECT {APP_DB}")
        conn.execute("COMMIT")
        assert conn.execute("SELECT pg_backend_pid()").fetchone()[0] not in (first, second)


def test_kill_client_closes_it(admin_proxy):
    proxy = admin_proxy()
    victim = proxy.connect(application_name="victim")
    bystander = proxy.connect()
    try:
        (row,) = [c for c in show(proxy, "CLIENTS") if c["application_name"] == "victim"]
        assert admin(proxy, f"KILL_CLIENT {row['id']}") == "KILL_CLIENT"
        with pytest.raises(psycopg.OperationalError):
            victim.execute("SELECT 1")
        assert bystander.execute("SELECT 1").fetchone() == (1,)
        wait_for(lambda: len(show(proxy, "CLIENTS")) == 1, what="the killed client to be gone")
        with admin_connect(proxy) as conn, pytest.raises(psycopg.errors.UndefinedObject):
            conn.execute("KILL_CLIENT 12345")
        assert admin(proxy, f"KILL {APP_DB}") == "KILL"
        with pytest.raises(psycopg.OperationalError):
            bystander.execute("SELECT 1")
    finally:
        victim.close()
        bystander.close()
    with proxy.connect() as conn:  # new clients are served
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_reload_and_shutdown(admin_proxy):
    proxy = admin_proxy()
    assert admin(proxy, "RELOAD") == "RELOAD"
    assert "configuration reloaded" in proxy.log
    with admin_connect(proxy) as conn:
        conn.execute("SHUTDOWN")
    assert proxy.proc.wait(30) == 0


# --- BAN / UNBAN with replicas -------------------------------------------------------------------


def test_ban_takes_a_replica_out_of_rotation(proxy_factory, pg_replicas):
    primary, replicas = pg_replicas
    restart_replicas(primary, replicas)
    proxy = proxy_factory(pgdog_text=lambda port: replica_pgdog_toml(primary, replicas, port)
                          + ADMIN_TOML)

    read = "WITH t AS (SELECT 1) SELECT inet_server_port() FROM t"  # parsed to be routed

    def ports_read(n: int = 12) -> set[int]:
        with proxy.connect() as conn:
            return {conn.execute(read).fetchone()[0] for _ in range(n)}

    banned, other = replicas[0].port, replicas[1].port
    assert ports_read() == {banned, other}
    assert admin(proxy, f"BAN 127.0.0.1:{banned}") == "BAN"
    assert ports_read() == {other}
    pools = {p["port"]: p for p in show(proxy, "POOLS")}
    assert pools[banned]["banned"] == -1 and pools[other]["banned"] == 0  # -1: until UNBAN
    with admin_connect(proxy) as conn, pytest.raises(psycopg.errors.FeatureNotSupported,
                                                     match="primary"):
        conn.execute(f"BAN 127.0.0.1:{primary.port}")
    assert admin(proxy, f"UNBAN 127.0.0.1:{banned}") == "UNBAN"
    assert ports_read() == {banned, other}
    # The reads were routed through the parse cache, which the console shows.
    assert any(q["query"] == read and (q["kind"], q["writes"]) == ("select", "false")
               for q in show(proxy, "QUERY_CACHE"))


# --- a sharded database: each shard's pool counts what its server answered ------------------


async def _simple_queries(port: int, queries: list[str]) -> None:
    import pgwire
    from shards import PASSWORD

    async with await pgwire.Wire.connect(port) as wire:
        await wire.login("app", APP_DB, PASSWORD)
        for sql in queries:
            assert (await wire.query(sql)).error is None


@pytest.mark.parametrize("protocol", ["extended", "simple"])
def test_sharded_pools_count_per_shard(proxy_factory, shard_clusters, protocol):
    import trio
    from shards import sharded_toml

    proxy = proxy_factory(pgdog_text=lambda port: sharded_toml(shard_clusters, port) + ADMIN_TOML)
    queries = ["SELECT count(*) FROM orders WHERE customer_id = 1"] * 3 + [
        "SELECT count(*) FROM orders"]
    if protocol == "simple":  # (a keyed Query takes the sharded relay's cheapest path)
        trio.run(_simple_queries, proxy.port, queries)
    else:
        with proxy.connect() as conn:
            for sql in queries:
                conn.execute(sql)
    stats = {row["shard"]: row for row in show(proxy, "STATS")}
    assert sorted(stats) == [0, 1, 2]
    queries = {shard: row["total_query_count"] for shard, row in stats.items()}
    # Customer 1's shard answered the three single-shard SELECTs; every shard the count(*).
    assert sorted(queries.values()) == [1, 1, 4]
    keyed = next(row for row in stats.values() if row["total_query_count"] == 4)
    # Its keyed statements (one shard, outside a transaction) were timed.
    assert keyed["total_query_time"] > 0 and keyed["total_xact_time"] > 0
    assert all(row["total_xact_count"] == row["total_query_count"] for row in stats.values())
    assert all(row["total_received"] > 0 and row["total_sent"] > 0 for row in stats.values())
    pools = show(proxy, "POOLS")
    assert sorted(p["shard"] for p in pools) == [0, 1, 2]
    assert all(p["database"] == APP_DB for p in pools)
