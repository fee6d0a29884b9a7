"""Sharding through the proxy: three real PostgreSQL clusters as shards of one database.

Every row must land on the shard PostgreSQL's own hash partitioning chooses for its key (the
oracle: `satisfies_hash_partition` on a hash-partitioned parent table with MODULUS 3, created
on each shard), whichever way it was written: psql, psycopg in each protocol, COPY in each
format, pgbench. Reads by key find their rows; reads without a key, IN lists over several
shards and writes without a key reach every shard; omnisharded tables stay the same
everywhere; hints and plugins route by hand; a transaction over several shards commits or
rolls back on all of them.
"""

from __future__ import annotations

import subprocess

import psycopg
import pytest
from conftest import APP_DB, PROTOCOLS, psql, users_toml
from shards import PASSWORD, SHARDS, rss_growth, sharded_toml

from trio_pgdog.embedded import Cluster
from trio_pgdog.router.sharding.hashing import shard_of_int


@pytest.fixture(params=["transaction", "session"])
def sharded(request, shard_clusters, proxy_factory):
    """A proxy in front of the three shards (in each pool mode); tables emptied first."""
    for cluster in shard_clusters:
        cluster.sql("TRUNCATE orders, countries, copied", dbname=APP_DB)
    return proxy_factory(pgdog_text=lambda port: sharded_toml(
        shard_clusters, port, pooler_mode=request.param, default_pool_size=4),
        users=users_toml())


def placed_right(clusters: list[Cluster], table: str = "orders") -> dict[int, int]:
    """Rows per shard, after checking with PostgreSQL that each is where it belongs."""
    counts = {}
    for shard, cluster in enumerate(clusters):
        wrong = cluster.sql(f"SELECT count(*) FROM {table} WHERE customer_id IS NOT NULL AND NOT "
                            f"satisfies_hash_partition('shard_check'::regclass, {SHARDS}, {shard}, "
                            "customer_id)", dbname=APP_DB)
        assert wrong == "0", f"{wrong} rows of {table} on shard {shard} belong elsewhere"
        counts[shard] = int(cluster.sql(f"SELECT count(*) FROM {table}", dbname=APP_DB))
    return counts


# --- rows go where their key belongs ---------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_rows_inserted_by_psycopg_land_on_their_shard(sharded, shard_clusters, protocol):
    with sharded.connect(**PROTOCOLS[protocol]) as conn:
        for key in range(60):
            conn.execute("INSERT INTO orders (customer_id, amount) VALUES (%s, %s)",
                         (key, key * 10))
        counts = placed_right(shard_clusters)
        assert sum(counts.values()) == 60 and all(counts.values()), counts
        for key in (0, 7, 59):  # a read by key finds its row, on its shard only
            assert conn.execute("SELECT amount FROM orders WHERE customer_id = %s",
                                (key,)).fetchall() == [(key * 10,)]
    expected = {s: sum(1 for k in range(60) if shard_of_int(k, SHARDS) == s) for s in range(3)}
    assert counts == expected


def test_rows_inserted_by_psql_land_on_their_shard(sharded, shard_clusters):
    values = ", ".join(f"({k}, {k})" for k in range(100, 130))
    done = psql(sharded.port, f"INSERT INTO orders (customer_id, amount) VALUES {values}")
    assert done.returncode == 0, done.stderr
    assert sum(placed_right(shard_clusters).values()) == 30
    done = psql(sharded.port, "SELECT customer_id FROM orders WHERE customer_id = 117")
    assert done.stdout.split() == ["117"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_reads_without_a_key_and_in_lists_reach_every_shard(sharded, shard_clusters, protocol):
    with sharded.connect(**PROTOCOLS[protocol]) as conn:
        for key in range(12):
            conn.execute("INSERT INTO orders (customer_id, amount) VALUES (%s, 1)", (key,))
        rows = conn.execute("SELECT customer_id FROM orders").fetchall()
        assert sorted(r[0] for r in rows) == list(range(12))
        rows = conn.execute("SELECT customer_id FROM orders WHERE customer_id IN (1, 2, 3, 4, 5)"
                            ).fetchall()
        assert sorted(r[0] for r in rows) == [1, 2, 3, 4, 5]
        rows = conn.execute("SELECT customer_id FROM orders WHERE customer_id = ANY(%s)",
                            ([6, 7, 8],)).fetchall()
        assert sorted(r[0] for r in rows) == [6, 7, 8]
        # A write without a key: every shard, the counts added up.
        cur = conn.execute("UPDATE orders SET amount = 2 WHERE amount = 1")
        assert cur.rowcount == 12
        assert cur.statusmessage == "UPDATE 12"


def test_a_multi_row_insert_is_split_by_shard(sharded, shard_clusters):
    with sharded.connect() as conn:
        cur = conn.execute("INSERT INTO orders (customer_id, amount) VALUES "
                           "(1, 10), (2, 20), (3, 30), (4, 40), (5, 50) RETURNING customer_id")
        assert sorted(r[0] for r in cur.fetchall()) == [1, 2, 3, 4, 5]
        assert cur.statusmessage == "INSERT 0 5"
    assert sum(placed_right(shard_clusters).values()) == 5


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_multi_row_insert_with_parameters_is_split_by_shard(sharded, shard_clusters, protocol):
    """The rows' keys come from Bind values (text and binary): each row lands once, on its
    shard, however many times the statement runs."""
    rows = 10
    sql = ("INSERT INTO orders (customer_id, amount, note) VALUES "
           + ", ".join("(%s, %s, %s)" for _ in range(rows)) + " RETURNING customer_id, note")
    with sharded.connect(**PROTOCOLS[protocol]) as conn:
        for run in range(3):
            params = [v for k in range(rows) for v in (run * 100 + k, k, f"row {k}")]
            cur = conn.execute(sql, params, binary=run == 1 and protocol != "simple")
            assert sorted(cur.fetchall()) == [(run * 100 + k, f"row {k}") for k in range(rows)]
            assert cur.statusmessage == f"INSERT 0 {rows}"
        counts = placed_right(shard_clusters)
        assert sum(counts.values()) == 3 * rows and len([c for c in counts.values() if c]) > 1
        assert conn.execute("SELECT note FROM orders WHERE customer_id = 207").fetchall() == \
            [("row 7",)]


def test_refused_statements_say_why_and_the_connection_goes_on(sharded):
    with sharded.connect() as conn:
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="customer_id"):
            conn.execute("INSERT INTO orders (amount) VALUES (1)")
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            conn.execute("UPDATE orders SET customer_id = 5 WHERE customer_id = 4")
        assert conn.execute("SELECT 1").fetchone() == (1,)


# --- omnisharded tables ------------------------------------------------------------------------


def test_omnisharded_writes_go_everywhere_and_reads_anywhere(sharded, shard_clusters):
    with sharded.connect() as conn:
        cur = conn.execute("INSERT INTO countries VALUES ('fr', 'France'), ('jp', 'Japan')")
        assert cur.statusmessage == "INSERT 0 2"  # one shard's count, not the sum
        for _ in range(6):
            assert conn.execute("SELECT name FROM countries WHERE code = 'jp'").fetchone() == \
                ("Japan",)
        assert conn.execute("SELECT count(*) FROM countries").fetchone() == (2,)
    for cluster in shard_clusters:
        assert cluster.sql("SELECT string_agg(code, ',' ORDER BY code) FROM countries",
                           dbname=APP_DB) == "fr,jp"


# --- transactions over several shards ------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_transaction_over_several_shards_commits_everywhere(sharded, shard_clusters, protocol):
    with sharded.connect(**PROTOCOLS[protocol]) as conn:
        conn.autocommit = False
        for key in range(9):
            conn.execute("INSERT INTO orders (customer_id, amount) VALUES (%s, 5)", (key,))
        assert sum(placed_right(shard_clusters).values()) == 0  # not committed yet
        conn.commit()
    assert sum(placed_right(shard_clusters).values()) == 9


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_rollback_over_several_shards_leaves_nothing(sharded, shard_clusters, protocol):
    with sharded.connect(**PROTOCOLS[protocol]) as conn:
        conn.autocommit = False
        for key in range(9):
            conn.execute("INSERT INTO orders (customer_id, amount) VALUES (%s, 5)", (key,))
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM orders WHERE customer_id = 3").fetchone() == (0,)
        conn.rollback()
    assert sum(placed_right(shard_clusters).values()) == 0


def test_an_error_on_one_shard_aborts_the_transaction_everywhere(sharded, shard_clusters):
    with sharded.connect() as conn:
        conn.autocommit = False
        conn.execute("INSERT INTO orders (customer_id, amount) VALUES (1, 1), (2, 2), (3, 3)")
        with pytest.raises(psycopg.errors.DivisionByZero, match="shard"):
            conn.execute("UPDATE orders SET amount = amount / (customer_id - 2)")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1 FROM orders WHERE customer_id = 1")
        conn.rollback()
    assert sum(placed_right(shard_clusters).values()) == 0


def test_a_write_without_a_key_is_all_or_nothing_outside_a_transaction(sharded, shard_clusters):
    with sharded.connect() as conn:
        conn.execute("INSERT INTO orders (customer_id, amount) VALUES (1, 1), (2, 2), (3, 3)")
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("UPDATE orders SET amount = 100 / (customer_id - 2)")
        # No shard kept its part of the failed statement.
        assert sorted(conn.execute("SELECT amount FROM orders").fetchall()) == [(1,), (2,), (3,)]


# --- choosing the shard by hand ------------------------------------------------------------


def test_hints_route_by_hand_and_bad_hints_are_errors(sharded, shard_clusters):
    with sharded.connect() as conn:
        conn.execute("/* pgdog_shard: 2 */ CREATE TEMP TABLE IF NOT EXISTS x (a int)")
        conn.execute("SET pgdog.shard TO 1")
        conn.execute("INSERT INTO countries VALUES ('only', 'on shard 1')")
        conn.execute("RESET pgdog.shard")
        assert shard_clusters[1].sql("SELECT count(*) FROM countries WHERE code = 'only'",
                                     dbname=APP_DB) == "1"
        assert shard_clusters[0].sql("SELECT count(*) FROM countries WHERE code = 'only'",
                                     dbname=APP_DB) == "0"
        conn.execute("SET pgdog.sharding_key TO '42'")
        assert conn.execute("SELECT code FROM countries WHERE code = 'only'").fetchall() == (
            [("only",)] if shard_of_int(42, SHARDS) == 1 else [])
        conn.execute("RESET pgdog.sharding_key")
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="shard"):
            conn.execute("SET pgdog.shard TO 7")
        with pytest.raises(psycopg.Error, match="shard"):
            conn.execute("/* pgdog_shard: 9 */ SELECT 1")
        assert conn.execute("SELECT 2").fetchone() == (2,)


# --- COPY ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["text", "csv", "binary"])
def test_copy_rows_land_on_their_shard(sharded, shard_clusters, fmt):
    rows = [(k, f"note {k}") for k in range(200)]
    with sharded.connect() as conn:
        with conn.cursor() as cur:
            options = "" if fmt == "text" else f"(FORMAT {fmt}{', HEADER' if fmt == 'csv' else ''})"
            with cur.copy(f"COPY copied (customer_id, note) FROM STDIN {options}") as copy:
                if fmt == "csv":  # psycopg writes rows in text format: CSV goes as bytes
                    copy.write("customer_id,note\n")
                    copy.write("".join(f'{k},"note, {k}"\n' for k, _note in rows))
                else:
                    if fmt == "binary":
                        copy.set_types(["int8", "text"])
                    for row in rows:
                        copy.write_row(row)
            assert cur.statusmessage == "COPY 200"
        out = conn.execute("SELECT count(*) FROM copied WHERE customer_id = 5").fetchone()
        assert out == (1,)
    counts = placed_right(shard_clusters, "copied")
    assert sum(counts.values()) == 200 and all(counts.values())


def test_copy_to_stdout_gathers_every_shard(sharded, shard_clusters):
    with sharded.connect() as conn:
        conn.execute("INSERT INTO orders (customer_id, amount) VALUES (1, 1), (2, 2), (3, 3), (4, 4)")
        with conn.cursor() as cur, cur.copy("COPY orders (customer_id) TO STDOUT") as copy:
            got = sorted(int(row[0]) for row in copy.rows())
        assert got == [1, 2, 3, 4]


# --- pgbench, all three protocols -----------------------------------------------------------


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_by_key_in_every_protocol(sharded, shard_clusters, tmp_path, mode):
    script = tmp_path / "bykey.sql"
    script.write_text("\\set k random(1, 500)\n"
                      "INSERT INTO orders (customer_id, amount) VALUES (:k, 1);\n"
                      "SELECT amount FROM orders WHERE customer_id = :k;\n"
                      "UPDATE orders SET amount = amount + 1 WHERE customer_id = :k;\n")
    from trio_pgdog.embedded import find_pg_binary

    done = subprocess.run(
        [find_pg_binary("pgbench"), "-n", "-h", "127.0.0.1", "-p", str(sharded.port), "-U", "app",
         "-M", mode, "-c", "4", "-j", "2", "-t", "50", "-f", str(script), APP_DB],
        env={"PGPASSWORD": PASSWORD}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "number of failed transactions: 0" in done.stdout or "failed" not in done.stdout
    assert sum(placed_right(shard_clusters).values()) == 200


# --- hooks and plugins choose the shard ------------------------------------------------------


@pytest.fixture(scope="module")
def shard_comment_plugins(tmp_path_factory) -> dict[str, str]:
    """The example plugins that route `/* shard: N */` statements: C, and Rust if cargo is here."""
    from plugin_build import CARGO, CC, build_c_plugins, build_rust_example

    if CC is None:
        pytest.skip("no C compiler")
    found = {"c": str(build_c_plugins(tmp_path_factory.mktemp("c")) / "libshard_comment.so")}
    if CARGO is not None:
        found["rust"] = str(build_rust_example(tmp_path_factory.mktemp("rust")))
    return found


@pytest.mark.parametrize("language", ["c", "rust"])
def test_a_plugin_shard_answer_is_honoured(shard_clusters, proxy_factory, shard_comment_plugins,
                                           language):
    if language not in shard_comment_plugins:
        pytest.skip("no cargo")
    for cluster in shard_clusters:
        cluster.sql("TRUNCATE countries", dbname=APP_DB)
    plugin = f'\n[[plugins]]\nname = "{shard_comment_plugins[language]}"\n'
    proxy = proxy_factory(pgdog_text=lambda port: sharded_toml(shard_clusters, port) + plugin,
                          users=users_toml())
    with proxy.connect() as conn:
        conn.execute("/* shard: 2 */ INSERT INTO countries VALUES ('p2', 'by the plugin')")
        with pytest.raises(psycopg.Error, match="shard 5 does not exist"):
            conn.execute("/* shard: 5 */ SELECT 1")
        # No comment: the plugin has no answer and the router decides (every shard).
        conn.execute("INSERT INTO countries VALUES ('all', 'everywhere')")
    assert [c.sql("SELECT string_agg(code, ',' ORDER BY code) FROM countries", dbname=APP_DB)
            for c in shard_clusters] == ["all", "all", "all,p2"]


def test_a_python_hook_routes_to_every_shard_or_one(shard_clusters, proxy_factory):
    """A Python hook's route answer (shard n, or ALL_SHARDS) wins over the keys."""
    for cluster in shard_clusters:
        cluster.sql("TRUNCATE countries", dbname=APP_DB)
    hook = '\n[[hooks.python]]\nobject = "hookmods.shard_route:Route"\n'
    proxy = proxy_factory(pgdog_text=lambda port: sharded_toml(shard_clusters, port) + hook,
                          users=users_toml())
    with proxy.connect() as conn:
        conn.execute("INSERT INTO countries VALUES ('one', 'to_one')")
        cur = conn.execute("SELECT code FROM countries WHERE name = 'to_all'")
        assert cur.fetchall() == []
    assert [c.sql("SELECT count(*) FROM countries", dbname=APP_DB) for c in shard_clusters] == \
        ["0", "1", "0"]


def test_a_million_row_copy_streams_in_flat_memory(sharded, shard_clusters):
    """1,000,000 rows through the COPY splitter: each row reaches its shard as it arrives, and
    the proxy holds no more than a chunk of them at a time."""
    with sharded.connect() as conn:
        conn.execute("SELECT 1")
        with rss_growth(sharded.proc.pid) as growth, conn.cursor() as cur:
            with cur.copy("COPY copied (customer_id, note) FROM STDIN") as copy:
                for start in range(0, 1_000_000, 10_000):
                    copy.write("".join(f"{k}\tx\n" for k in range(start, start + 10_000)))
            assert cur.statusmessage == "COPY 1000000"
    counts = placed_right(shard_clusters, "copied")
    assert sum(counts.values()) == 1_000_000
    assert growth[0] < 40_000, f"proxy RSS grew by {growth[0]} KB during the COPY"


@pytest.mark.parametrize("sql", [
    "SELECT pg_sleep(3) WHERE EXISTS (SELECT 1 FROM orders)",   # every shard
    "SELECT pg_sleep(3) FROM orders WHERE customer_id = 1",     # one shard
], ids=["every-shard", "one-shard"])
def test_a_client_leaving_mid_query_frees_every_shard(shard_clusters, proxy_factory, sql):
    import time

    import pgwire
    import trio

    for cluster in shard_clusters:
        cluster.sql("TRUNCATE orders", dbname=APP_DB)
    proxy = proxy_factory(pgdog_text=lambda port: sharded_toml(
        shard_clusters, port, default_pool_size=1, checkout_timeout=5000), users=users_toml())
    with proxy.connect() as conn:
        conn.execute("INSERT INTO orders (customer_id, amount) VALUES (1, 1), (2, 2), (3, 3)")

    async def leave() -> None:
        async with await pgwire.Wire.connect(proxy.port) as wire:
            await wire.login("app", APP_DB, PASSWORD)
            await wire.send(pgwire.query(sql))
            await trio.sleep(0.3)

    trio.run(leave)
    started = time.monotonic()
    with proxy.connect() as conn:  # every shard's only connection is free again
        assert conn.execute("SELECT customer_id FROM orders WHERE customer_id IN (1, 2, 3) "
                            "AND amount > 0").fetchall() != []
    assert time.monotonic() - started < 1.5
    assert "cancelling the query" in proxy.log


def test_a_shard_connection_lost_mid_query_gives_08006_naming_the_shard(shard_clusters,
                                                                       proxy_factory):
    """A keyed simple-protocol Query (the relay's cheapest path) whose server dies under it:
    the client gets 08006 naming the shard and goes on; the pool's only slot is not lost."""
    import pgwire
    import trio
    from conftest import proxy_backends, wait_for

    for cluster in shard_clusters:
        cluster.sql("TRUNCATE orders", dbname=APP_DB)
    proxy = proxy_factory(pgdog_text=lambda port: sharded_toml(
        shard_clusters, port, default_pool_size=1, checkout_timeout=3000), users=users_toml())
    key = next(k for k in range(100) if shard_of_int(k, SHARDS) == 2)
    shard = shard_clusters[2]

    def running() -> int | None:
        for pid, query in proxy_backends(shard, proxy, "pid, query"):
            if query.startswith("SELECT pg_sleep(5)"):
                return int(pid)
        return None

    async def lose() -> None:
        async with await pgwire.Wire.connect(proxy.port) as wire:
            await wire.login("app", APP_DB, PASSWORD)
            await wire.query(f"INSERT INTO orders (customer_id, amount) VALUES ({key}, 5)")
            await wire.send(pgwire.query(
                f"SELECT pg_sleep(5), amount FROM orders WHERE customer_id = {key}"))
            pid = await trio.to_thread.run_sync(lambda: wait_for(running, what="the query"))
            shard.sql(f"SELECT pg_terminate_backend({pid})")
            result = await wire.read_result(timeout=4)
            assert result.error is not None and result.error.sqlstate == "08006", result
            assert "shard 2: server connection lost" in result.error.fields["M"]
            # The same client, the same shard, a new connection: the slot came back.
            assert await wire.scalar(
                f"SELECT amount FROM orders WHERE customer_id = {key}") == "5"

    trio.run(lose)
    assert "Traceback" not in proxy.log


def test_a_keyed_query_runs_with_the_clients_settings(sharded):
    """The cheap path declines a server that lacks the client's settings: they are put on it
    first (in each pool mode), and every keyed query sees them."""
    import pgwire
    import trio

    async def with_settings() -> None:
        async with await pgwire.Wire.connect(sharded.port) as wire:
            await wire.login("app", APP_DB, PASSWORD)
            await wire.query("INSERT INTO orders (customer_id, amount) VALUES "
                             + ", ".join(f"({k}, {k})" for k in range(1, 7)))
            await wire.query("SET application_name = 'keyed-reader'")
            for key in range(1, 7):
                assert await wire.scalar(
                    "SELECT current_setting('application_name') || amount FROM orders "
                    f"WHERE customer_id = {key}") == f"keyed-reader{key}"

    trio.run(with_settings)


def test_reads_inside_a_shard_go_to_its_replica(shard_clusters, proxy_factory):
    """Replicas belong to a shard: read/write splitting works inside it."""
    from conftest import wait_replicated

    for cluster in shard_clusters:
        cluster.sql("TRUNCATE orders", dbname=APP_DB)
    primary = shard_clusters[1]
    with primary.create_replica() as replica:
        replica.start()
        wait_replicated(primary, [replica])
        extra = ("\n[[databases]]\n" f'name = "{APP_DB}"\nhost = "127.0.0.1"\n'
                 f'port = {replica.port}\nshard = 1\nrole = "replica"\n')
        proxy = proxy_factory(pgdog_text=lambda port: sharded_toml(
            shard_clusters, port, read_your_writes=False) + extra, users=users_toml())
        key = next(k for k in range(100) if shard_of_int(k, SHARDS) == 1)
        with proxy.connect() as conn:
            conn.execute("INSERT INTO orders (customer_id, amount) VALUES (%s, 7)", (key,))
            wait_replicated(primary, [replica])
            row = conn.execute("SELECT pg_is_in_recovery(), amount FROM orders "
                               "WHERE customer_id = %s", (key,)).fetchone()
            assert row == (True, 7)  # read on shard 1's replica
            assert conn.execute("UPDATE orders SET amount = 8 WHERE customer_id = %s RETURNING "
                                "pg_is_in_recovery()", (key,)).fetchone() == (False,)


def test_savepoints_span_the_shards_a_transaction_touches(sharded, shard_clusters):
    keys = [next(k for k in range(100) if shard_of_int(k, SHARDS) == s) for s in range(SHARDS)]
    with sharded.connect() as conn:
        conn.autocommit = False
        conn.execute("INSERT INTO orders (customer_id, amount) VALUES (%s, 1)", (keys[0],))
        conn.execute("SAVEPOINT a")
        conn.execute("INSERT INTO orders (customer_id, amount) VALUES (%s, 2)", (keys[1],))
        conn.execute("ROLLBACK TO SAVEPOINT a")  # undoes shard 1's row, and shard 1 joined late
        conn.execute("INSERT INTO orders (customer_id, amount) VALUES (%s, 3)", (keys[2],))
        conn.execute("RELEASE a")
        conn.commit()
    assert placed_right(shard_clusters) == {0: 1, 1: 0, 2: 1}


def test_cursors_follow_their_shards_and_a_cross_shard_fetch_is_refused(sharded):
    with sharded.connect() as conn:
        conn.execute("INSERT INTO orders (customer_id, amount) VALUES (1, 1), (2, 2), (3, 3)")
        conn.autocommit = False
        conn.execute("DECLARE one CURSOR FOR SELECT amount FROM orders WHERE customer_id = 2")
        assert conn.execute("FETCH 10 FROM one").fetchall() == [(2,)]
        conn.execute("CLOSE one")
        conn.execute("DECLARE every CURSOR FOR SELECT amount FROM orders")
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="3 shards"):
            conn.execute("FETCH 2 FROM every")
        conn.rollback()


def test_cross_shard_disabled_refuses_what_would_run_on_several_shards(shard_clusters,
                                                                       proxy_factory):
    proxy = proxy_factory(pgdog_text=lambda port: sharded_toml(
        shard_clusters, port, cross_shard_disabled=True), users=users_toml())
    with proxy.connect() as conn:
        conn.execute("INSERT INTO orders (customer_id, amount) VALUES (4, 4)")
        assert conn.execute("SELECT amount FROM orders WHERE customer_id = 4").fetchone() == (4,)
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="cross_shard_disabled"):
            conn.execute("SELECT amount FROM orders")
        assert conn.execute("/* pgdog_shard: 0 */ SELECT count(*) FROM orders").fetchone()[0] >= 0


def test_a_failing_shard_cancels_the_others(sharded, shard_clusters):
    import time

    keys = [next(k for k in range(100) if shard_of_int(k, SHARDS) == s) for s in range(SHARDS)]
    with sharded.connect() as conn:
        for key in keys:
            conn.execute("INSERT INTO orders (customer_id, amount) VALUES (%s, 1)", (key,))
        started = time.monotonic()
        with pytest.raises(psycopg.errors.DivisionByZero, match="shard 0"):
            conn.execute("SELECT 1 / (customer_id - %s), pg_sleep(CASE WHEN customer_id = %s "
                         "THEN 0 ELSE 5 END) FROM orders", (keys[0], keys[0]))
        assert time.monotonic() - started < 3, "the other shards' statements ran on"
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize("keyed", [True, False], ids=["one shard", "every shard"])
def test_a_client_cancel_reaches_the_shards_running_its_statement(sharded, keyed):
    """psql's Ctrl-C (a CancelRequest with the client's key) cancels the statement on each
    shard it runs on, and the connection goes on."""
    import threading
    import time

    with sharded.connect() as conn:
        conn.execute("INSERT INTO orders (customer_id, amount) VALUES "
                     + ", ".join(f"({k}, 1)" for k in range(1, 13)))
        timer = threading.Timer(0.5, conn.cancel)
        timer.start()
        started = time.monotonic()
        where = " WHERE customer_id = 3" if keyed else ""
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute(f"SELECT pg_sleep(20) FROM orders{where}")
        assert time.monotonic() - started < 5
        timer.join()
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (12,)


def test_pgbench_initialises_and_runs_through_the_proxy(shard_clusters, proxy_factory):
    """pgbench -i (DDL, COPY of every account, VACUUM, primary keys) and its default script:
    pgbench_accounts sharded on aid, the other tables on every shard."""
    from trio_pgdog.embedded import find_pg_binary

    accounts = ('\n[[sharded_tables]]\ndatabase = "appdb"\nname = "pgbench_accounts"\n'
                'column = "aid"\n')
    proxy = proxy_factory(pgdog_text=lambda port: sharded_toml(shard_clusters, port) + accounts,
                          users=users_toml())
    pgbench = [find_pg_binary("pgbench"), "-h", "127.0.0.1", "-p", str(proxy.port), "-U", "app"]
    env = {"PGPASSWORD": PASSWORD}
    done = subprocess.run([*pgbench, "-i", "-s", "1", "-q", APP_DB], env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    counts = [int(c.sql("SELECT count(*) FROM pgbench_accounts", dbname=APP_DB))
              for c in shard_clusters]
    assert sum(counts) == 100_000 and all(counts)
    for shard, cluster in enumerate(shard_clusters):
        assert cluster.sql(f"SELECT count(*) FROM pgbench_accounts WHERE NOT satisfies_hash_partition("
                           f"'shard_check'::regclass, {SHARDS}, {shard}, aid::bigint)",
                           dbname=APP_DB) == "0"
        assert cluster.sql("SELECT count(*) FROM pgbench_branches", dbname=APP_DB) == "1"
    done = subprocess.run([*pgbench, "-c", "4", "-j", "2", "-t", "30", APP_DB], env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr + done.stdout


def test_session_mode_prepared_statements_after_the_reset(shard_clusters, proxy_factory):
    # A departing session-mode client's connections are reset with DISCARD ALL, which drops
    # the statements prepared there: the next client on them must get them prepared again.
    for cluster in shard_clusters:
        cluster.sql("TRUNCATE orders", dbname=APP_DB)
    proxy = proxy_factory(pgdog_text=lambda port: sharded_toml(
        shard_clusters, port, pooler_mode="session", default_pool_size=1), users=users_toml())
    for client in range(3):
        with proxy.connect(prepare_threshold=0) as conn:
            assert conn.execute("SELECT count(*) + %s FROM orders WHERE customer_id = 3",
                                (client,)).fetchone() == (client,)


def test_session_mode_keeps_primaries_for_writes_after_reads(shard_clusters, proxy_factory):
    from conftest import wait_replicated

    for cluster in shard_clusters:
        cluster.sql("TRUNCATE orders", dbname=APP_DB)
    primary = shard_clusters[0]
    with primary.create_replica() as replica:
        replica.start()
        wait_replicated(primary, [replica])
        extra = ("\n[[databases]]\n" f'name = "{APP_DB}"\nhost = "127.0.0.1"\n'
                 f'port = {replica.port}\nshard = 0\nrole = "replica"\n')
        proxy = proxy_factory(pgdog_text=lambda port: sharded_toml(
            shard_clusters, port, pooler_mode="session") + extra, users=users_toml())
        with proxy.connect() as conn:
            assert conn.execute("SELECT count(*) FROM orders WHERE customer_id = 3").fetchone()
            conn.execute("INSERT INTO orders (customer_id, amount) VALUES (3, 1)")
            assert conn.execute("SELECT count(*) FROM orders WHERE customer_id = 3"
                                ).fetchone() == (1,)


def test_two_shards_in_one_server_are_two_pools(pg, proxy_factory):
    """Shards that are two databases of one PostgreSQL server (same host and port) keep
    their rows apart."""
    for name in ("shard_a", "shard_b"):
        if pg.sql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'") != "1":
            pg.add_database(name, owner="app")
        pg.sql("DROP TABLE IF EXISTS orders; CREATE TABLE orders (customer_id bigint, "
               "amount int); ALTER TABLE orders OWNER TO app", dbname=name)
    text = lambda port: (  # noqa: E731
        f'[general]\nhost = "127.0.0.1"\nport = {port}\n'
        + "".join(f'\n[[databases]]\nname = "{APP_DB}"\nhost = "127.0.0.1"\nport = {pg.port}\n'
                  f'database_name = "{name}"\nshard = {shard}\n'
                  for shard, name in enumerate(("shard_a", "shard_b")))
        + f'\n[[sharded_tables]]\ndatabase = "{APP_DB}"\nname = "orders"\ncolumn = "customer_id"\n')
    proxy = proxy_factory(pgdog_text=text)
    with proxy.connect() as conn:
        conn.execute("INSERT INTO orders (customer_id, amount) VALUES "
                     + ", ".join(f"({k}, 1)" for k in range(20)))
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (20,)
    on = [int(pg.sql("SELECT count(*) FROM orders", dbname=name)) for name in ("shard_a", "shard_b")]
    assert on == [sum(1 for k in range(20) if shard_of_int(k, 2) == s) for s in (0, 1)]
