"""`python -m trio_pgdog demo`: the proxy in front of a throw-away PostgreSQL."""

from __future__ import annotations

import logging
import os
import signal
import sys

from .config import load_config
from .embedded import Cluster, EmbeddedError

log = logging.getLogger(__name__)

DEMO_USER = DEMO_PASSWORD = DEMO_DATABASE = "pgdog"


def demo_configs(proxy_port: int, pg_port: int) -> tuple[str, str]:
    """pgdog.toml and users.toml for a proxy on `proxy_port` in front of 127.0.0.1:`pg_port`."""
    pgdog = f"""[general]
host = "127.0.0.1"
port = {proxy_port}
pooler_mode = "transaction"
default_pool_size = 10

[[databases]]
name = "{DEMO_DATABASE}"
host = "127.0.0.1"
port = {pg_port}
"""
    users = f"""[[users]]
name = "{DEMO_USER}"
database = "{DEMO_DATABASE}"
password = "{DEMO_PASSWORD}"
"""
    return pgdog, users


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def run_demo(port: int) -> int:
    from .cli import serve

    # Until trio.run takes over signals, SIGTERM must unwind too so the cluster is removed.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with Cluster.create() as cluster:
            log.info("starting a throw-away PostgreSQL in %s", cluster.base_dir)
            cluster.start()
            cluster.add_user(DEMO_USER, DEMO_PASSWORD)
            cluster.add_database(DEMO_DATABASE, owner=DEMO_USER)
            pgdog_text, users_text = demo_configs(port, cluster.port)
            paths = []
            for name, text in (("pgdog.toml", pgdog_text), ("users.toml", users_text)):
                path = os.path.join(cluster.base_dir, name)
                with open(path, "w") as f:
                    f.write(text)
                paths.append(path)
            config = load_config(*paths)
            print(f"\ntrio_pgdog demo: PostgreSQL {cluster.port} behind the proxy on port {port}.\n"
                  f"Connect with:\n\n    psql postgres://{DEMO_USER}:{DEMO_PASSWORD}@127.0.0.1:{port}"
                  f"/{DEMO_DATABASE}\n\nConfig files: {paths[0]}, {paths[1]}\n"
                  "Press Ctrl-C to stop (the temporary cluster is removed).\n",
                  file=sys.stderr, flush=True)
            return serve(config)
    except EmbeddedError as exc:
        log.error("demo: %s", exc)
        return 1
    except KeyboardInterrupt:
        log.info("demo interrupted")
        return 0
    finally:
        log.info("demo stopped; temporary PostgreSQL removed")
