"""Two-phase commit across shards (`two_phase_commit = true`), against three real shards.

A transaction that wrote on several shards commits everywhere or nowhere: a shard refusing at
PREPARE (a deferred constraint) rolls every shard back and the client gets that shard's error;
a proxy killed (SIGKILL) between the phases finishes the transaction at its next start from
its journal (commit if it had decided, roll back if not); no prepared transaction is left.
"""

from __future__ import annotations

import os
import signal

import psycopg
import pytest
from conftest import APP_DB, PROTOCOLS, users_toml, wait_for
from shards import SHARDS, sharded_toml

from trio_pgdog.router.sharding.hashing import shard_of_int

KEYS = [next(k for k in range(100) if shard_of_int(k, SHARDS) == s) for s in range(SHARDS)]
TABLE = """
CREATE TABLE IF NOT EXISTS tp_items (customer_id bigint, code int,
    UNIQUE (code) DEFERRABLE INITIALLY DEFERRED);
ALTER TABLE tp_items OWNER TO app;
"""
EXTRA = f"""
[[sharded_tables]]
database = "{APP_DB}"
name = "tp_items"
column = "customer_id"
"""


@pytest.fixture
def clusters(shard_clusters):
    for cluster in shard_clusters:
        cluster.sql(TABLE + "TRUNCATE tp_items, orders;", dbname=APP_DB)
        assert prepared(cluster) == []
    return shard_clusters


@pytest.fixture
def start(clusters, proxy_factory, tmp_path, monkeypatch):
    """start(crash=None | "after_prepare" | "after_journal") -> a proxy with two-phase commit
    and its journal in tmp_path (the same for each proxy started)."""
    journal = tmp_path / "journal"

    def start_one(crash: str | None = None, **general: object):
        if crash is None:
            monkeypatch.delenv("TRIO_PGDOG_TEST_TWO_PHASE_CRASH", raising=False)
        else:
            monkeypatch.setenv("TRIO_PGDOG_TEST_TWO_PHASE_CRASH", crash)
        settings = {"two_phase_commit": True, "two_phase_journal_dir": str(journal), **general}
        return proxy_factory(pgdog_text=lambda port: sharded_toml(
            clusters, port, **settings) + EXTRA, users=users_toml())

    start_one.journal = journal
    return start_one


def prepared(cluster) -> list[str]:
    out = cluster.sql("SELECT gid FROM pg_prepared_xacts ORDER BY gid", dbname=APP_DB)
    return out.split() if out else []


def rows(clusters, table: str = "tp_items") -> list[int]:
    return [int(c.sql(f"SELECT count(*) FROM {table}", dbname=APP_DB)) for c in clusters]


@pytest.mark.parametrize("mode", ["transaction", "session"])
@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_a_transaction_over_several_shards_commits_everywhere(start, clusters, protocol, mode):
    proxy = start(pooler_mode=mode)
    with proxy.connect(**PROTOCOLS[protocol]) as conn:
        with conn.transaction():
            for i, key in enumerate(KEYS):
                conn.execute("INSERT INTO tp_items (customer_id, code) VALUES (%s, %s)", (key, i))
            assert rows(clusters) == [0, 0, 0]
        assert rows(clusters) == [1, 1, 1]
        assert len(conn.execute("SELECT customer_id FROM tp_items").fetchall()) == 3
    assert all(prepared(c) == [] for c in clusters)
    assert not any(start.journal.glob("*.json")), "a finished commit leaves its journal record"


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_a_shard_refusing_to_prepare_rolls_every_shard_back(start, clusters, protocol):
    proxy = start()
    with proxy.connect(**PROTOCOLS[protocol]) as conn:
        conn.execute("BEGIN")
        for key in [*KEYS, KEYS[1]]:  # shard 1's second row breaks a deferred UNIQUE
            conn.execute("INSERT INTO tp_items (customer_id, code) VALUES (%s, %s)", (key, key))
        with pytest.raises(psycopg.errors.UniqueViolation) as failed:
            conn.execute("COMMIT")
        assert str(failed.value).startswith("shard 1: duplicate key value")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert len(conn.execute("SELECT customer_id FROM tp_items").fetchall()) == 0
    assert rows(clusters) == [0, 0, 0]
    assert all(prepared(c) == [] for c in clusters)


def test_a_write_outside_a_transaction_is_all_or_nothing_at_prepare(start, clusters):
    proxy = start()
    with proxy.connect() as conn:
        keys = ", ".join(f"({key}, 7)" for key in KEYS) + f", ({KEYS[2]}, 7)"
        with pytest.raises(psycopg.errors.UniqueViolation, match=r"^shard 2: duplicate key"):
            conn.execute(f"INSERT INTO tp_items (customer_id, code) VALUES {keys}")
        assert len(conn.execute("SELECT customer_id FROM tp_items").fetchall()) == 0
        conn.execute("INSERT INTO tp_items (customer_id, code) VALUES "
                     + ", ".join(f"({k}, {k})" for k in KEYS))
    assert rows(clusters) == [1, 1, 1]
    assert all(prepared(c) == [] for c in clusters)


def test_a_transaction_on_one_shard_commits_plainly(start, clusters):
    """Without PREPARE: the proxy killed at PREPARE time would show it."""
    proxy = start(crash="after_prepare")
    with proxy.connect() as conn, conn.transaction():
        conn.execute("INSERT INTO tp_items (customer_id, code) VALUES (%s, 1), (%s, 2)", (KEYS[0], KEYS[0]))
        conn.execute("SELECT customer_id FROM tp_items").fetchall()  # reads every shard
    assert rows(clusters) == [2, 0, 0]
    assert proxy.proc.poll() is None


@pytest.mark.parametrize("crash, expected", [("after_journal", [1, 1, 1]),
                                             ("after_prepare", [0, 0, 0])])
def test_a_proxy_killed_between_the_phases_finishes_at_restart(start, clusters, crash, expected):
    proxy = start(crash=crash)
    conn = proxy.connect()
    conn.execute("BEGIN")
    for i, key in enumerate(KEYS):
        conn.execute("INSERT INTO orders (customer_id, amount) VALUES (%s, %s)", (key, i))
    with pytest.raises(psycopg.OperationalError):
        conn.execute("COMMIT")
    assert proxy.proc.wait(10) == -signal.SIGKILL
    left = [prepared(c) for c in clusters]
    assert all(len(gids) == 1 and gids[0].startswith("pgdog_0_") for gids in left), left
    assert rows(clusters, "orders") == [0, 0, 0]  # prepared, not committed yet
    journaled = list(start.journal.glob("*.json"))
    assert len(journaled) == (crash == "after_journal")

    restarted = start()
    wait_for(lambda: all(prepared(c) == [] for c in clusters), what="recovery at start-up")
    assert rows(clusters, "orders") == expected
    wait_for(lambda: not any(start.journal.glob("*.json")), what="the journal emptied")
    with restarted.connect() as conn:
        assert len(conn.execute("SELECT customer_id FROM orders").fetchall()) == sum(expected)
    assert "PREPARED" in restarted.log


def test_an_unwritable_journal_rolls_back_and_says_why(start, clusters, tmp_path):
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    proxy = start(two_phase_journal_dir=str(blocked / "journal"))
    with proxy.connect() as conn:
        conn.execute("BEGIN")
        for key in KEYS:
            conn.execute("INSERT INTO tp_items (customer_id, code) VALUES (%s, %s)", (key, key))
        with pytest.raises(psycopg.Error, match=r"journal .* cannot be written") as failed:
            conn.execute("COMMIT")
        assert failed.value.sqlstate == "58030"
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert rows(clusters) == [0, 0, 0]
    assert all(prepared(c) == [] for c in clusters)
    assert os.path.isfile(blocked)
    assert "not-a-directory/journal: [Errno 20] Not a directory" in proxy.log  # at start-up


def test_recovery_finishes_what_the_journal_says_and_only_this_nodes(start, clusters):
    """Prepared transactions left on the shards: a decided one of this node is committed, an
    undecided one rolled back, another node's and the user's own left alone."""
    start.journal.mkdir(parents=True)
    decided, undecided, other = "pgdog_0_1001", "pgdog_0_1002", "pgdog_1_1003"
    for gid, key in ((decided, KEYS[0]), (undecided, KEYS[1]), (other, KEYS[2]),
                     ("mine", KEYS[2] + 3)):
        for cluster in clusters:
            cluster.sql(f"SET ROLE app; BEGIN; INSERT INTO orders (customer_id) VALUES ({key}); "
                        f"PREPARE TRANSACTION '{gid}';", dbname=APP_DB)
    (start.journal / f"{decided}.json").write_text(
        f'{{"gid": "{decided}", "user": "app", "database": "{APP_DB}", "shards": [0, 1, 2], '
        '"decision": "commit"}')
    proxy = start()
    wait_for(lambda: all(prepared(c) == ["mine", other] for c in clusters),
             what="recovery of this node's transactions")
    for cluster in clusters:
        keys = cluster.sql("SELECT customer_id FROM orders", dbname=APP_DB).split()
        assert keys == [str(KEYS[0])]
        cluster.sql(f"ROLLBACK PREPARED '{other}'; ROLLBACK PREPARED 'mine'", dbname=APP_DB)
    wait_for(lambda: not any(start.journal.glob("*.json")), what="the journal emptied")
    assert f"COMMIT PREPARED '{decided}'" in proxy.log
    assert f"ROLLBACK PREPARED '{undecided}'" in proxy.log


def test_a_server_without_prepared_transactions_is_named_at_start_and_commit(
        pg, clusters, proxy_factory, tmp_path):
    """Shard 0 on a server with max_prepared_transactions = 0 (PostgreSQL's default), shard 1
    on one with prepared transactions: shard 1's prepared write is rolled back."""
    shards = [pg, clusters[0]]
    for cluster in shards:
        cluster.sql("CREATE TABLE IF NOT EXISTS tp_disabled (n int); "
                    "ALTER TABLE tp_disabled OWNER TO app; TRUNCATE tp_disabled", dbname=APP_DB)
    proxy = proxy_factory(pgdog_text=lambda port: sharded_toml(
        shards, port, two_phase_commit=True, two_phase_journal_dir=str(tmp_path / "j")),
        users=users_toml())
    wait_for(lambda: "max_prepared_transactions = 0" in proxy.log, what="the start-up check")
    assert f":{pg.port}) has max_prepared_transactions = 0" in proxy.log
    with proxy.connect() as conn:  # an omnisharded write: on both shards, in two phases
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState,
                           match=r"^shard 0: prepared transactions are disabled"):
            conn.execute("INSERT INTO tp_disabled VALUES (1)")
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert [c.sql("SELECT count(*) FROM tp_disabled", dbname=APP_DB) for c in shards] == ["0", "0"]
    assert prepared(clusters[0]) == []


def test_a_copy_over_several_shards_commits_in_two_phases(start, clusters):
    proxy = start()
    with proxy.connect() as conn:
        sql = "COPY tp_items (customer_id, code) FROM STDIN"
        with pytest.raises(psycopg.errors.UniqueViolation, match=r"^shard 0: duplicate key"), \
                conn.cursor().copy(sql) as copy:
            for key in [*KEYS, KEYS[0]]:  # shard 0's second row breaks the deferred UNIQUE
                copy.write_row((key, 5))
        assert rows(clusters) == [0, 0, 0]
        with conn.cursor().copy(sql) as copy:
            for key in KEYS:
                copy.write_row((key, 5))
    assert rows(clusters) == [1, 1, 1]
    assert all(prepared(c) == [] for c in clusters)
