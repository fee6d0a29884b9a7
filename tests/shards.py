"""Three real PostgreSQL clusters as the shards of one database, for the sharding tests
(tests/test_sharding.py, tests/test_cross_shard.py; the `shard_clusters` fixture is in
conftest.py so that every test file shares the same three clusters)."""

from __future__ import annotations

import contextlib
import pathlib
import threading
from collections.abc import Iterator

from conftest import APP_DB, PG_USERS, _toml

from trio_pgdog.embedded import Cluster

SHARDS = 3
PASSWORD = PG_USERS["app"][0]
SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (id bigserial, customer_id bigint, amount int, note text);
CREATE TABLE IF NOT EXISTS countries (code text PRIMARY KEY, name text);
CREATE TABLE IF NOT EXISTS shard_check (k bigint) PARTITION BY HASH (k);
CREATE TABLE IF NOT EXISTS copied (customer_id bigint, note text, ts timestamptz);
ALTER TABLE orders OWNER TO app; ALTER TABLE countries OWNER TO app;
ALTER TABLE copied OWNER TO app; ALTER TABLE shard_check OWNER TO app;
"""


@contextlib.contextmanager
def started_shards() -> Iterator[list[Cluster]]:
    with contextlib.ExitStack() as stack:
        clusters = []
        for _ in range(SHARDS):
            # Prepared transactions: two-phase commit (tests/test_two_phase.py).
            cluster = stack.enter_context(Cluster.create(
                settings={"max_prepared_transactions": "20"}))
            cluster.start()
            cluster.add_user("app", PASSWORD, auth="scram-sha-256")
            cluster.add_database(APP_DB, owner="app")
            cluster.sql(SCHEMA, dbname=APP_DB)
            clusters.append(cluster)
        yield clusters


def sharded_toml(clusters: list[Cluster], port: int, **general: object) -> str:
    lines = ["[general]", 'host = "127.0.0.1"', f"port = {port}"]
    lines += [f"{k} = {_toml(v)}" for k, v in general.items()]
    for shard, cluster in enumerate(clusters):
        lines += ["", "[[databases]]", f'name = "{APP_DB}"', 'host = "127.0.0.1"',
                  f"port = {cluster.port}", f"shard = {shard}"]
    lines += ["", "[[sharded_tables]]", f'database = "{APP_DB}"', 'name = "orders"',
              'column = "customer_id"', "",
              "[[sharded_tables]]", f'database = "{APP_DB}"', 'name = "copied"',
              'column = "customer_id"', ""]
    return "\n".join(lines)


def sharded_table(name: str, column: str) -> str:
    """One more [[sharded_tables]] entry, to append to sharded_toml's text."""
    return f'\n[[sharded_tables]]\ndatabase = "{APP_DB}"\nname = "{name}"\ncolumn = "{column}"\n'


def rss_kb(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@contextlib.contextmanager
def rss_growth(pid: int) -> Iterator[list[int]]:
    """How much process `pid`'s RSS grows (KB) above its size at entry while the block runs,
    sampled every 50 ms: the yielded list's one item, set on exit."""
    before = rss_kb(pid)
    peak = [before]
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], rss_kb(pid))

    watcher = threading.Thread(target=watch)
    watcher.start()
    growth = [0]
    try:
        yield growth
    finally:
        done.set()
        watcher.join()
        growth[0] = peak[0] - before
