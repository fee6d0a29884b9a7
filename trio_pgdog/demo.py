"""`python -m trio_pgdog demo`: the proxy in front of a throw-away primary and streaming replica;
`demo --shards N`: in front of N throw-away primaries, the shards of one sharded database."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterable

from . import listener
from .config import load_config
from .embedded import Cluster, EmbeddedError

log = logging.getLogger(__name__)

DEMO_USER = DEMO_PASSWORD = DEMO_DATABASE = "pgdog"
# How long a fresh replica may take to accept connections and replay up to the base backup.
REPLICA_READY_TIMEOUT = 60.0
# `demo --shards N`: how many shards it accepts.
MIN_SHARDS, MAX_SHARDS = 2, 8
# The sharded demo's tables, created on every shard (as the demo user, so that it owns them):
# orders is sharded on customer_id; products, not listed in [[sharded_tables]], is omnisharded
# (every shard holds the same rows).
SHARDED_TABLE, SHARDING_KEY = "orders", "customer_id"
SHARD_SCHEMA = f"""
SET ROLE {DEMO_USER};
CREATE TABLE {SHARDED_TABLE} ({SHARDING_KEY} bigint NOT NULL, item text, amount numeric);
CREATE TABLE products (id int PRIMARY KEY, name text, price numeric);
INSERT INTO products VALUES (1, 'tea', 3.50), (2, 'coffee', 4.20), (3, 'cake', 5.00);
"""
# The banner's example INSERT: six customers, so that every shard of a 2-shard demo gets some.
EXAMPLE_ORDERS = ((1, "tea", "3.50"), (2, "coffee", "4.20"), (3, "cake", "5.00"),
                  (4, "tea", "3.50"), (5, "coffee", "8.40"), (6, "cake", "10.00"))


def _database_entry(port: int, role: str, shard: int | None = None) -> str:
    shard_line = "" if shard is None else f"shard = {shard}\n"
    return f"""
[[databases]]
name = "{DEMO_DATABASE}"
host = "127.0.0.1"
port = {port}
role = "{role}"
{shard_line}"""


def _general(proxy_host: str, proxy_port: int) -> str:
    return f"""[general]
host = "{proxy_host}"
port = {proxy_port}
pooler_mode = "transaction"
default_pool_size = 10
"""


def _users() -> str:
    return f"""[[users]]
name = "{DEMO_USER}"
database = "{DEMO_DATABASE}"
password = "{DEMO_PASSWORD}"
"""


def demo_configs(proxy_port: int, pg_port: int, replica_ports: Iterable[int] = (),
                 proxy_host: str = "127.0.0.1") -> tuple[str, str]:
    """pgdog.toml and users.toml for a proxy on `proxy_host`:`proxy_port` in front of
    127.0.0.1:`pg_port`.

    Each port in `replica_ports` adds a `role = "replica"` entry of the same logical database.
    """
    pgdog = _general(proxy_host, proxy_port)
    replica_ports = list(replica_ports)
    if replica_ports:
        pgdog += ("# A client's reads after its own writes go to the primary until the replicas "
                  "have replayed them.\nread_your_writes = true\n")
    pgdog += _database_entry(pg_port, "primary")
    for replica_port in replica_ports:
        pgdog += _database_entry(replica_port, "replica")
    return pgdog, _users()


def sharded_demo_configs(proxy_port: int, shard_ports: Iterable[int],
                         proxy_host: str = "127.0.0.1",
                         journal_dir: str | None = None) -> tuple[str, str]:
    """pgdog.toml and users.toml for a proxy in front of one primary per shard: the servers
    on 127.0.0.1:`shard_ports`, in shard order, with `orders` sharded on `customer_id`;
    two-phase commit on, journaled in `journal_dir`, if one is given."""
    pgdog = _general(proxy_host, proxy_port)
    if journal_dir is not None:
        pgdog += ("# Transactions that write on several shards commit in two phases.\n"
                  f"two_phase_commit = true\ntwo_phase_journal_dir = {json.dumps(journal_dir)}\n")
    for shard, shard_port in enumerate(shard_ports):
        pgdog += _database_entry(shard_port, "primary", shard)
    pgdog += f"""
# Each row of {SHARDED_TABLE} lives on the shard of its {SHARDING_KEY}; every other table
# (products) is omnisharded: each shard holds all its rows.
[[sharded_tables]]
database = "{DEMO_DATABASE}"
name = "{SHARDED_TABLE}"
column = "{SHARDING_KEY}"
data_type = "bigint"
"""
    return pgdog, _users()


def _replica_ready(replica: Cluster) -> bool:
    """True once `replica` is in recovery and the demo user can log in to the demo database."""
    try:
        if replica.sql("SELECT pg_is_in_recovery()") != "t":
            return False
    except EmbeddedError:
        return False
    # A real password login over TCP, as the proxy will do it: proves the role, its password
    # and the database have been replayed, and that pg_hba lets the user in.
    done = replica.runner.run(
        "psql", "-X", "-A", "-t", "-q", "-c", "SELECT 1",
        "-d", replica.dsn(DEMO_USER, DEMO_PASSWORD, DEMO_DATABASE),
        cwd=replica.base_dir, timeout=30,
    )  # fmt: skip
    return done.returncode == 0 and done.stdout.strip() == "1"


def wait_replica_ready(replica: Cluster, timeout: float = REPLICA_READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not _replica_ready(replica):
        if time.monotonic() > deadline:
            raise EmbeddedError(
                f"replica on port {replica.port} was not ready after {timeout:g}s\n"
                f"--- last lines of {replica.log_file} ---\n{replica.log_tail()}"
            )
        time.sleep(0.1)


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _client_host(host: str) -> str:
    """Where a client on this machine reaches a proxy listening on `host`."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _banner(host: str, port: int, primary: Cluster, replica: Cluster, paths: list[str]) -> str:
    url = f"postgres://{DEMO_USER}:{DEMO_PASSWORD}@{_client_host(host)}:{port}/{DEMO_DATABASE}"
    return (
        f"\ntrio_pgdog demo: PostgreSQL {primary.port} behind the proxy on port {port}, "
        f"with a streaming replica on port {replica.port}.\n"
        f"Connect with:\n\n    psql {url}\n\n"
        f"Writes, explicit transactions and SELECT ... FOR UPDATE go to the primary on port "
        f"{primary.port};\nreads go to the replica on port {replica.port}, except a client's "
        "reads right after its own writes,\nwhich go to the primary until the replica has "
        "caught up (read_your_writes).\nSee which server answered:\n\n"
        f'    psql {url} -c "select inet_server_port(), pg_is_in_recovery()"\n'
        f'    psql {url} -c "/* pgdog_role: primary */ select inet_server_port(), '
        'pg_is_in_recovery()"\n\n'
        f"Config files: {paths[0]}, {paths[1]}\n"
        "Press Ctrl-C to stop (the temporary clusters are removed).\n"
    )


def _sharded_banner(host: str, port: int, shards: list[Cluster], paths: list[str]) -> str:
    url = f"postgres://{DEMO_USER}:{DEMO_PASSWORD}@{_client_host(host)}:{port}/{DEMO_DATABASE}"
    n = len(shards)
    rows = ", ".join(f"({key}, '{item}', {amount})" for key, item, amount in EXAMPLE_ORDERS)
    lines = [
        "",
        f"trio_pgdog demo: database {DEMO_DATABASE} in {n} shards behind the proxy on port {port}:",
        *(f"    shard {shard}: PostgreSQL on port {cluster.port}" for shard, cluster in enumerate(shards)),
        "",
        f"Table {SHARDED_TABLE} is sharded on {SHARDING_KEY}: a row goes to shard "
        f"hash({SHARDING_KEY}) mod {n},",
        f"the partition PostgreSQL's PARTITION BY HASH ({SHARDING_KEY}) with MODULUS {n} would "
        "choose for it.",
        "Table products is omnisharded: every shard holds all its rows, reads need one shard.",
        "",
        "Connect with:",
        "",
        f"    psql {url}",
        "",
        "Insert a few orders through the proxy (each row goes to its customer's shard):",
        "",
        f'    psql {url} -c "INSERT INTO {SHARDED_TABLE} ({SHARDING_KEY}, item, amount) VALUES '
        f'{rows}"',
        "",
        "See where they landed, straight from each shard:",
        "",
        *(f'    psql postgres://{DEMO_USER}:{DEMO_PASSWORD}@127.0.0.1:{cluster.port}/{DEMO_DATABASE} '
          f'-c "SELECT * FROM {SHARDED_TABLE}"' for cluster in shards),
        "",
        "Through the proxy, a read by key goes to its shard only, a read without one to every shard:",
        "",
        f'    psql {url} -c "SELECT inet_server_port(), * FROM {SHARDED_TABLE} WHERE '
        f'{SHARDING_KEY} = 3"',
        f'    psql {url} -c "SELECT inet_server_port(), * FROM {SHARDED_TABLE}"',
        "",
        "and the shards' answers are merged as one database would give them:",
        "",
        f'    psql {url} -c "SELECT count(*), sum(amount) FROM {SHARDED_TABLE}"',
        f'    psql {url} -c "SELECT * FROM {SHARDED_TABLE} ORDER BY amount DESC LIMIT 3"',
        "",
        f"Config files: {paths[0]}, {paths[1]}",
        "Press Ctrl-C to stop (the temporary clusters are removed).",
        "",
    ]
    return "\n".join(lines)


def _write_configs(directory: str, pgdog_text: str, users_text: str) -> list[str]:
    paths = []
    for name, text in (("pgdog.toml", pgdog_text), ("users.toml", users_text)):
        path = os.path.join(directory, name)
        with open(path, "w") as f:
            f.write(text)
        paths.append(path)
    return paths


def _start_primary(clusters: contextlib.ExitStack, what: str,
                   settings: dict[str, str] | None = None) -> Cluster:
    # Entered one by one, so whatever was created is destroyed on any way out.
    cluster = clusters.enter_context(Cluster.create(settings=settings))
    log.info("starting a throw-away PostgreSQL%s in %s", what, cluster.base_dir)
    cluster.start()
    cluster.add_user(DEMO_USER, DEMO_PASSWORD)
    cluster.add_database(DEMO_DATABASE, owner=DEMO_USER)
    return cluster


def _replicated(clusters: contextlib.ExitStack, host: str, port: int) -> tuple[list[str], str]:
    """The default demo's servers: a primary and a streaming replica of it."""
    cluster = _start_primary(clusters, "")
    replica = clusters.enter_context(cluster.create_replica())
    log.info("starting a streaming replica of it in %s", replica.base_dir)
    replica.start()
    wait_replica_ready(replica)
    paths = _write_configs(cluster.base_dir,
                           *demo_configs(port, cluster.port, [replica.port], host))
    return paths, _banner(host, port, cluster, replica, paths)


def _sharded(clusters: contextlib.ExitStack, host: str, port: int,
             shards: int) -> tuple[list[str], str]:
    """`demo --shards N`: one primary per shard, each with the demo's tables."""
    primaries = []
    for shard in range(shards):
        cluster = _start_primary(clusters, f" for shard {shard}",
                                 {"max_prepared_transactions": "20"})  # two-phase commit
        cluster.sql(SHARD_SCHEMA, dbname=DEMO_DATABASE)
        primaries.append(cluster)
    paths = _write_configs(primaries[0].base_dir,
                           *sharded_demo_configs(port, [c.port for c in primaries], host,
                                                 os.path.join(primaries[0].base_dir, "two_phase")))
    return paths, _sharded_banner(host, port, primaries, paths)


def run_demo(port: int, host: str = "127.0.0.1", shards: int | None = None) -> int:
    """The demo until Ctrl-C or SIGTERM: a primary and a replica, or `shards` primaries."""
    from .serving import EXIT_FAILED, serve

    # The proxy's port first: if it is taken, say so before spending time on clusters. It
    # stays bound (clients are refused) until the proxy listens, then the banner is shown.
    try:
        sock = listener.bind(host, port)
    except listener.ListenError as exc:
        print(f"trio_pgdog: {exc}", file=sys.stderr)
        return EXIT_FAILED
    # Until trio.run takes over signals, SIGTERM must unwind too so the clusters are removed.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with sock, contextlib.ExitStack() as clusters:
            if shards is None:
                paths, banner = _replicated(clusters, host, port)
            else:
                paths, banner = _sharded(clusters, host, port, shards)
            config = load_config(*paths)

            def announce() -> None:
                print(banner, file=sys.stderr, flush=True)

            return serve(config, sock=sock, on_listening=announce)
    except EmbeddedError as exc:
        log.error("demo: %s", exc)
        return 1
    except KeyboardInterrupt:
        log.info("demo interrupted")
        return 0
    finally:
        what = "primary and replica" if shards is None else f"primaries of the {shards} shards"
        log.info("demo stopped; temporary PostgreSQL %s removed", what)
