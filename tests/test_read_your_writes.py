"""read_your_writes and replica_lag_limit, against a real primary with two streaming replicas.

The replicas are made to apply each commit late (`recovery_min_apply_delay`), so a read sent to
a replica right after a write is certain to miss it: the feature's absence always shows, and its
presence is proven by reads that never miss.
"""

from __future__ import annotations

import itertools
import logging
import signal
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest
from conftest import (
    APP_DB,
    PG_USERS,
    PROTOCOLS,
    ProxyProcess,
    replica_pgdog_toml,
    restart_replicas,
    users_toml,
    wait_for,
    wait_replicated,
)

from trio_pgdog.config import ConfigError, load_config_text
from trio_pgdog.embedded import Cluster
from trio_pgdog.pool.lag import LagMonitor, ReplicaLag, past_headers
from trio_pgdog.pool.settings import PoolSettings

# Long enough that a read right after a commit always beats the replica to it, even on a
# busy machine; short enough that catching up does not slow the tests down.
APPLY_DELAY_MS = 300
_runs = itertools.count(1)


@pytest.fixture
def topology(pg_replicas) -> Iterator[tuple[Cluster, list[Cluster]]]:
    """The primary and both replicas, running and caught up, with table ryw_t; any apply
    delay a test set is removed afterwards."""
    primary, replicas = pg_replicas
    if not all(r.is_running() for r in replicas):
        restart_replicas(primary, replicas)
    primary.sql("CREATE TABLE IF NOT EXISTS ryw_t (run int, n int, pad text); "
                "ALTER TABLE ryw_t OWNER TO app", dbname=APP_DB)
    wait_replicated(primary, replicas)
    yield primary, replicas
    apply_delay(replicas, 0)
    wait_replicated(primary, replicas)


def apply_delay(replicas: list[Cluster], ms: int) -> None:
    """Make `replicas` apply each commit `ms` late (0: at once)."""
    for replica in replicas:
        if ms:
            replica.sql(f"ALTER SYSTEM SET recovery_min_apply_delay = '{ms}ms'")
        else:
            replica.sql("ALTER SYSTEM RESET recovery_min_apply_delay")
        replica.sql("SELECT pg_reload_conf()")
    for replica in replicas:
        wait_for(lambda r=replica: r.sql("SELECT setting FROM pg_settings "
                                         "WHERE name = 'recovery_min_apply_delay'") == str(ms),
                 timeout=10, what=f"recovery_min_apply_delay = {ms} on {replica.port}")


@pytest.fixture
def start(topology, proxy_factory) -> Callable[..., ProxyProcess]:
    """start(users=..., **general) -> a proxy in front of the primary and both replicas."""
    primary, replicas = topology

    def _start(users: str | None = None, **general: object) -> ProxyProcess:
        general.setdefault("lag_poll_interval", 100)
        return proxy_factory(
            users=users,
            pgdog_text=lambda port: replica_pgdog_toml(primary, replicas, port, **general))

    return _start


def write_then_read(conn: psycopg.Connection, rounds: int,
                    pause: Callable[[int], float] = lambda _i: 0.0) -> list[tuple[int, int, bool]]:
    """Insert a row and count the rows of this run at once (or after `pause(i)` seconds):
    (rows expected, rows seen, seen on a replica) per round."""
    run = next(_runs) * 1000 + int(time.time()) % 1000
    seen = []
    for i in range(rounds):
        conn.execute("INSERT INTO ryw_t (run, n) VALUES (%s, %s)", (run, i))
        time.sleep(pause(i))
        count, on_replica = conn.execute(
            "SELECT count(*), pg_is_in_recovery() FROM ryw_t WHERE run = %s", (run,)).fetchone()
        seen.append((i + 1, count, on_replica))
    return seen


def stale(seen: list[tuple[int, int, bool]]) -> list[tuple[int, int, bool]]:
    return [s for s in seen if s[1] != s[0]]


# --- configuration --------------------------------------------------------------------------

BASE = ('[general]\n{general}\n[[databases]]\nname = "appdb"\nhost = "127.0.0.1"\n'
        'role = "primary"\n\n[[databases]]\nname = "appdb"\nhost = "127.0.0.1"\nport = 5433\n'
        'role = "replica"\n')


def test_config_defaults():
    general = load_config_text(BASE.format(general=""), users_toml()).general
    assert general.read_your_writes is True
    assert general.replica_lag_limit == 0
    assert general.lag_poll_interval == 200


def test_config_values_and_per_user_override():
    text = BASE.format(general="read_your_writes = false\nreplica_lag_limit = 1048576\n"
                               "lag_poll_interval = 150\n")
    users = users_toml({"name": "app", "database": "appdb", "password": "x",
                        "read_your_writes": True}, {"name": "b", "database": "appdb", "password": "y"})
    config = load_config_text(text, users)
    g = config.general
    assert (g.read_your_writes, g.replica_lag_limit, g.lag_poll_interval) == (False, 1048576, 150)
    assert config.find_user("app", "appdb").effective_read_your_writes(g) is True
    assert config.find_user("b", "appdb").effective_read_your_writes(g) is False


@pytest.mark.parametrize(("line", "words"), [
    ("replica_lag_limit = -1", ["replica_lag_limit", "at least 0"]),
    ("lag_poll_interval = 5", ["lag_poll_interval", "at least 10"]),
    ('replica_lag_limit = "5MB"', ["replica_lag_limit", "integer"]),
    ('read_your_writes = "yes"', ["read_your_writes", "boolean"]),
])
def test_config_rejects_bad_values(line, words):
    with pytest.raises(ConfigError) as exc:
        load_config_text(BASE.format(general=line + "\n"), users_toml())
    for word in words:
        assert word in str(exc.value)


# --- read-your-writes -----------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["simple", "extended", "prepared"])
def test_a_client_always_reads_its_own_writes(topology, start, protocol):
    _primary, replicas = topology
    apply_delay(replicas, APPLY_DELAY_MS)
    proxy = start()
    with proxy.connect(**PROTOCOLS[protocol]) as conn:
        at_once = write_then_read(conn, 40)
        # Reads a little later: some before the replicas have the row, some after.
        later = write_then_read(conn, 12, pause=lambda i: i * 0.07)
    assert stale(at_once) == [] and stale(later) == []
    assert not any(on_replica for *_, on_replica in at_once)
    # Once a replica has caught up with the write, reads go back to the replicas.
    assert any(on_replica for *_, on_replica in later), later
    assert "Traceback" not in proxy.log


@pytest.mark.parametrize("how", ["general", "user"])
def test_without_read_your_writes_reads_miss_the_clients_writes(topology, start, how):
    _primary, replicas = topology
    apply_delay(replicas, APPLY_DELAY_MS)
    if how == "general":
        proxy = start(read_your_writes=False)
    else:  # off for this user only
        proxy = start(users=users_toml({"name": "app", "database": APP_DB,
                                        "password": PG_USERS["app"][0],
                                        "read_your_writes": False}))
    with proxy.connect() as conn:
        seen = write_then_read(conn, 20)
    assert all(on_replica for *_, on_replica in seen)
    assert len(stale(seen)) >= 15, seen


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_a_table_just_created_can_be_used_at_once(topology, start, protocol):
    _primary, replicas = topology
    apply_delay(replicas, APPLY_DELAY_MS)
    proxy = start()
    table = f"ryw_ddl_{protocol}"
    with proxy.connect(**PROTOCOLS[protocol]) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"CREATE TABLE {table} (v int)")
        assert conn.execute(f"SELECT * FROM {table}").fetchall() == []
        conn.execute(f"INSERT INTO {table} VALUES (1)")
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (1,)
        conn.execute(f"DROP TABLE {table}")


def test_clients_that_did_not_write_still_read_from_the_replicas(topology, start):
    _primary, replicas = topology
    apply_delay(replicas, APPLY_DELAY_MS)
    proxy = start()
    with proxy.connect() as writer, proxy.connect() as reader:
        for _ in range(10):
            writer.execute("INSERT INTO ryw_t (run, n) VALUES (0, 0)")
            assert writer.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
            assert reader.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        # The writer's explicit read-only choice is obeyed.
        writer.execute("INSERT INTO ryw_t (run, n) VALUES (0, 0)")
        assert writer.execute("/* pgdog_role: replica */ SELECT pg_is_in_recovery()"
                              ).fetchone() == (True,)
    with proxy.connect() as fresh:  # a new connection has written nothing
        ports = {fresh.execute("SELECT inet_server_port()").fetchone()[0] for _ in range(4)}
    assert ports == {r.port for r in replicas}


# --- replica_lag_limit ----------------------------------------------------------------------


def _lagging_writes(primary: Cluster) -> None:
    """A small commit the delayed replicas wait on, then ~2 MB of WAL queued behind it."""
    primary.sql("INSERT INTO ryw_t (run, n) VALUES (-1, 0)", dbname=APP_DB)
    primary.sql("INSERT INTO ryw_t (run, n, pad) SELECT -1, g, repeat('x', 1000) "
                "FROM generate_series(1, 2000) g", dbname=APP_DB)


def _ports_read(proxy: ProxyProcess, n: int = 6) -> list[int]:
    with proxy.connect() as conn:
        return [conn.execute("SELECT inet_server_port()").fetchone()[0] for _ in range(n)]


def test_a_replica_past_the_lag_limit_leaves_the_rotation_until_it_catches_up(topology, start):
    primary, replicas = topology
    slow, quick = replicas
    proxy = start(replica_lag_limit=65536, read_your_writes=False)
    assert set(_ports_read(proxy)) == {slow.port, quick.port}

    apply_delay([slow], 3000)
    _lagging_writes(primary)
    out = f"replica 127.0.0.1:{slow.port} is "
    wait_for(lambda: out in proxy.log, timeout=5, what="the lagging replica to leave the rotation")
    assert "replica_lag_limit 65536" in proxy.log
    # (The other replica may be past the limit too for a moment, while it replays the 2 MB.)
    wait_for(lambda: _ports_read(proxy) == [quick.port] * 6, timeout=2,
             what="reads to go to the replica that keeps up")

    back = f"replica 127.0.0.1:{slow.port} caught up"
    wait_for(lambda: back in proxy.log, timeout=15, what="the replica to come back")
    assert set(_ports_read(proxy)) == {slow.port, quick.port}
    assert proxy.log.count(out) == 1 and proxy.log.count(back) == 1  # said once each way

    # Both replicas too far behind: reads go to the primary, and the log says so.
    mark = len(proxy.log)
    apply_delay(replicas, 3000)
    _lagging_writes(primary)
    outs = [f"replica 127.0.0.1:{r.port} is " for r in replicas]
    wait_for(lambda: all(o in proxy.log[mark:] for o in outs), timeout=5,
             what="both replicas to leave the rotation")
    assert _ports_read(proxy) == [primary.port] * 6
    assert "reads go to the primary" in proxy.log[mark:]
    apply_delay(replicas, 0)
    backs = [f"replica 127.0.0.1:{r.port} caught up" for r in replicas]
    wait_for(lambda: all(b in proxy.log[mark:] for b in backs), timeout=15,
             what="both replicas to come back")
    assert set(_ports_read(proxy)) == {slow.port, quick.port}
    assert "Traceback" not in proxy.log


# --- the lag monitor's connections ----------------------------------------------------------

MONITOR_SQL = ("SELECT string_agg(pid::text, ',') FROM pg_stat_activity "
               "WHERE application_name = 'trio_pgdog lag monitor'")


def _monitor_pids(clusters: list[Cluster]) -> list[str]:
    return [c.sql(MONITOR_SQL) for c in clusters]


def test_the_lag_monitor_holds_one_connection_per_host_and_a_reload_replaces_it(topology, start):
    primary, replicas = topology
    hosts = [primary, *replicas]
    proxy = start(lag_poll_interval=100)
    wait_for(lambda: all(p and "," not in p for p in _monitor_pids(hosts)), timeout=5,
             what="one monitor connection on each host")
    before = _monitor_pids(hosts)

    # A reload that changes the poll interval: a new monitor, the old one's connections closed.
    (proxy.workdir / "pgdog.toml").write_text(
        replica_pgdog_toml(primary, replicas, proxy.port, lag_poll_interval=150))
    done = proxy.log.count("configuration reloaded")
    proxy.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: proxy.log.count("configuration reloaded") > done, what="the reload")

    def replaced() -> bool:
        now = _monitor_pids(hosts)
        return all(p and "," not in p for p in now) and not set(now) & set(before)

    wait_for(replaced, timeout=5, what="the monitor connections to be replaced")
    # The client pools are not touched by it: a fresh client reads from a replica at once.
    with proxy.connect() as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
    proxy.stop()
    wait_for(lambda: _monitor_pids(hosts) == [""] * 3, timeout=5,
             what="the monitor connections to close with the proxy")


def test_no_lag_monitor_without_replicas_to_watch(topology, start):
    primary, replicas = topology
    proxy = start(read_write_split=False)
    with proxy.connect() as conn:
        conn.execute("SELECT 1")
    time.sleep(0.3)
    assert _monitor_pids([primary, *replicas]) == [""] * 3


# --- what the monitor concludes from its samples (no server needed) --------------------------


def _monitor(limit: int = 0) -> tuple[LagMonitor, ReplicaLag]:
    def settings(port: int) -> PoolSettings:
        return PoolSettings(host="127.0.0.1", port=port, database="appdb", user="app",
                            password="x", pool_size=1, min_pool_size=0, pooler_mode="transaction",
                            connect_timeout=1, checkout_timeout=1, idle_timeout=1,
                            server_lifetime=10)

    monitor = LagMonitor("appdb", settings(5432), [settings(5433)], interval=0.2, limit=limit,
                         timeout=1)
    return monitor, monitor.lag_for(settings(5433))


def _lsn(n: int) -> str:
    return f"{n >> 32:X}/{n & 0xFFFFFFFF:X}"


def _primary(monitor: LagMonitor, at: float, insert: int, written: int | None = None) -> None:
    monitor._round_started = at
    monitor._primary_sampled([_lsn(insert), _lsn(insert if written is None else written),
                              "8192", "200"])


def test_a_replica_serves_a_writer_only_after_a_round_that_started_after_the_write():
    monitor, lag = _monitor()
    _primary(monitor, 1.0, 0x5000)
    monitor._replica_sampled(lag, [_lsn(0x5000)])
    assert lag.caught_up_at == 1.0
    wrote_at = 1.5  # a client's write ends (its commit is at 0x5100)
    monitor._replica_sampled(lag, [_lsn(0x5100)])  # the replica has it, but nobody knows yet
    assert not lag.caught_up_at > wrote_at
    _primary(monitor, 2.0, 0x5100)  # the first round after the write
    assert lag.caught_up_at == 2.0 and lag.caught_up_at > wrote_at
    assert lag.lag_bytes == 0


def test_a_replica_behind_a_later_round_serves_writes_older_than_what_it_replayed():
    monitor, lag = _monitor()
    for i, at in enumerate((1.0, 1.2, 1.4)):
        _primary(monitor, at, 0x1000 * (i + 1))
    monitor._replica_sampled(lag, [_lsn(0x2800)])  # past the 1.2 round, short of the 1.4 one
    assert lag.caught_up_at == 1.2
    assert lag.lag_bytes == 0x3000 - 0x2800


def test_wal_inserted_but_not_written_holds_writers_back_only_until_it_must_be_written():
    monitor, lag = _monitor()
    # Insert position past what is written (a pruned page, an asynchronous commit), and it
    # stays there: the replica cannot get past what is written.
    _primary(monitor, 1.0, insert=0x9000, written=0x8000)
    monitor._replica_sampled(lag, [_lsn(0x8000)])
    assert lag.caught_up_at == float("-inf")
    _primary(monitor, 2.0, insert=0x9000, written=0x8000)
    assert lag.caught_up_at == float("-inf")
    # 3 x wal_writer_delay + slack after the 1.0 round, its commits are surely written.
    _primary(monitor, 1.0 + 3 * 0.2 + 1.0, insert=0x9000, written=0x8000)
    assert lag.caught_up_at == 1.0


def test_positions_just_past_a_page_header_count_as_the_page_boundary():
    assert past_headers(0x3000000 + 40, 8192) == 0x3000000  # a segment's long header
    assert past_headers(0x3002000 + 24, 8192) == 0x3002000  # a page's short header
    assert past_headers(0x3002000 + 48, 8192) == 0x3002030
    monitor, lag = _monitor()
    _primary(monitor, 1.0, 0x3002000 + 24)
    monitor._replica_sampled(lag, [_lsn(0x3002000)])  # the last record ended at the boundary
    assert lag.caught_up_at == 1.0


def test_the_lag_limit_takes_a_replica_out_and_back_once_each(caplog):
    monitor, lag = _monitor(limit=1000)
    _primary(monitor, 1.0, 0x10000)
    with caplog.at_level(logging.INFO, logger="trio_pgdog.pool.lag"):
        for _ in range(3):
            monitor._replica_sampled(lag, [_lsn(0x10000 - 5000)])
        assert lag.in_rotation is False and lag.lag_bytes == 5000
        for _ in range(3):
            monitor._replica_sampled(lag, [_lsn(0x10000 - 10)])
        assert lag.in_rotation is True
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "5000 bytes behind" in messages[0] and "out of rotation" in messages[0]
    assert caplog.records[0].levelname == "WARNING"
    assert "back in rotation" in messages[1] and caplog.records[1].levelname == "INFO"
