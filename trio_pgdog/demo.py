"""`python -m trio_pgdog demo`: the proxy in front of a throw-away primary and streaming replica."""

from __future__ import annotations

import contextlib
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


def _database_entry(port: int, role: str) -> str:
    return f"""
[[databases]]
name = "{DEMO_DATABASE}"
host = "127.0.0.1"
port = {port}
role = "{role}"
"""


def demo_configs(proxy_port: int, pg_port: int, replica_ports: Iterable[int] = (),
                 proxy_host: str = "127.0.0.1") -> tuple[str, str]:
    """pgdog.toml and users.toml for a proxy on `proxy_host`:`proxy_port` in front of
    127.0.0.1:`pg_port`.

    Each port in `replica_ports` adds a `role = "replica"` entry of the same logical database.
    """
    pgdog = f"""[general]
host = "{proxy_host}"
port = {proxy_port}
pooler_mode = "transaction"
default_pool_size = 10
"""
    replica_ports = list(replica_ports)
    if replica_ports:
        pgdog += ("# A client's reads after its own writes go to the primary until the replicas "
                  "have replayed them.\nread_your_writes = true\n")
    pgdog += _database_entry(pg_port, "primary")
    for replica_port in replica_ports:
        pgdog += _database_entry(replica_port, "replica")
    users = f"""[[users]]
name = "{DEMO_USER}"
database = "{DEMO_DATABASE}"
password = "{DEMO_PASSWORD}"
"""
    return pgdog, users


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


def run_demo(port: int, host: str = "127.0.0.1") -> int:
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
            # Entered one by one, so whatever was created is destroyed on any way out.
            cluster = clusters.enter_context(Cluster.create())
            log.info("starting a throw-away PostgreSQL in %s", cluster.base_dir)
            cluster.start()
            cluster.add_user(DEMO_USER, DEMO_PASSWORD)
            cluster.add_database(DEMO_DATABASE, owner=DEMO_USER)
            replica = clusters.enter_context(cluster.create_replica())
            log.info("starting a streaming replica of it in %s", replica.base_dir)
            replica.start()
            wait_replica_ready(replica)
            pgdog_text, users_text = demo_configs(port, cluster.port, [replica.port], host)
            paths = []
            for name, text in (("pgdog.toml", pgdog_text), ("users.toml", users_text)):
                path = os.path.join(cluster.base_dir, name)
                with open(path, "w") as f:
                    f.write(text)
                paths.append(path)
            config = load_config(*paths)

            def announce() -> None:
                print(_banner(host, port, cluster, replica, paths), file=sys.stderr, flush=True)

            return serve(config, sock=sock, on_listening=announce)
    except EmbeddedError as exc:
        log.error("demo: %s", exc)
        return 1
    except KeyboardInterrupt:
        log.info("demo interrupted")
        return 0
    finally:
        log.info("demo stopped; temporary PostgreSQL primary and replica removed")
