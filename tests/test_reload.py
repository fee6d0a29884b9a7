"""SIGHUP reloads pgdog.toml and users.toml without dropping unchanged pools."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time

import psycopg
import pytest
from conftest import APP_DB, PG_USERS, pgdog_toml, proxy_backends, users_toml

from trio_pgdog.bench import distinct_errors
from trio_pgdog.embedded import find_pg_binary


def _wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_sighup_adds_users_and_keeps_unchanged_pools(proxy_factory):
    proxy = proxy_factory(default_pool_size=1)
    with proxy.connect() as conn:
        backend = conn.execute("select pg_backend_pid()").fetchone()[0]
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(proxy.dsn("md5user"))

    app = {"name": "app", "database": APP_DB, "password": PG_USERS["app"][0]}
    md5 = {"name": "md5user", "database": APP_DB, "password": PG_USERS["md5user"][0]}
    (proxy.workdir / "users.toml").write_text(users_toml(app, md5))
    proxy.proc.send_signal(signal.SIGHUP)
    _wait_for(lambda: "configuration reloaded" in proxy.log)

    with psycopg.connect(proxy.dsn("md5user"), autocommit=True) as conn:
        assert conn.execute("select current_user").fetchone() == ("md5user",)
    with proxy.connect() as conn:  # the unchanged pool kept its server connection
        assert conn.execute("select pg_backend_pid()").fetchone()[0] == backend


def test_invalid_reload_keeps_the_running_configuration(proxy_factory):
    proxy = proxy_factory()
    (proxy.workdir / "pgdog.toml").write_text("[general]\nport = 'not a number'\n")
    proxy.proc.send_signal(signal.SIGHUP)
    _wait_for(lambda: "reload failed" in proxy.log)
    assert "port" in proxy.log.split("reload failed")[1].splitlines()[0]
    with proxy.connect() as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    assert proxy.proc.poll() is None


def test_removed_user_is_refused_after_reload(proxy_factory):
    proxy = proxy_factory()
    conn = proxy.connect()
    assert conn.execute("select 1").fetchone() == (1,)
    md5 = {"name": "md5user", "database": APP_DB, "password": PG_USERS["md5user"][0]}
    (proxy.workdir / "users.toml").write_text(users_toml(md5))
    proxy.proc.send_signal(signal.SIGHUP)
    _wait_for(lambda: "configuration reloaded" in proxy.log)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(proxy.dsn())
    with pytest.raises(psycopg.OperationalError, match="removed"):
        conn.execute("select 1")
    conn.close()


# --- reloads under load: waiters move to the new pool, nobody sees a gap --------------------------

def _rewrite_config(proxy, pg, db_host: str = "127.0.0.1", **general: object) -> None:
    """Replace pgdog.toml in one rename, so that a reload never reads half a file; `db_host`
    is the name the database's [[databases]] entry gives its host."""
    text = pgdog_toml(pg, proxy.port, **general).replace(
        f'host = "127.0.0.1"\nport = {pg.port}', f'host = "{db_host}"\nport = {pg.port}')
    path = proxy.workdir / "pgdog.toml"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _reload(proxy, pg, **general: object) -> None:
    """Rewrite pgdog.toml, send SIGHUP and wait until the proxy says it reloaded."""
    done = proxy.log.count("configuration reloaded")
    _rewrite_config(proxy, pg, **general)
    proxy.proc.send_signal(signal.SIGHUP)
    _wait_for(lambda: proxy.log.count("configuration reloaded") > done)


@pytest.fixture(scope="module")
def pgbench_data(pg) -> None:
    """pgbench's tables in appdb, made directly on the cluster."""
    init = subprocess.run(
        [find_pg_binary("pgbench"), "-i", "-q", "-s", "1", "-h", "127.0.0.1", "-p", str(pg.port),
         "-U", "app", APP_DB], env=_pgbench_env(), capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stderr


def _pgbench_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGPASSWORD=PG_USERS["app"][0], PGSSLMODE="disable", LC_MESSAGES="C")
    return env


@pytest.mark.parametrize("mode", ["simple", "prepared"])
def test_pgbench_survives_repeated_reloads_that_resize_the_pool(pg, proxy_factory, pgbench_data,
                                                                mode):
    # 16 clients over 4 or 6 server connections: most clients are waiting at any moment, and
    # every reload replaces the pool under them (and under the clients mid-transaction).
    general = {"default_pool_size": 4, "checkout_timeout": 3000}
    proxy = proxy_factory(**general)
    bench = subprocess.Popen(
        [find_pg_binary("pgbench"), "-n", "-N", "-M", mode, "-c", "16", "-j", "2", "-T", "4",
         "-h", "127.0.0.1", "-p", str(proxy.port), "-U", "app", APP_DB],
        env=_pgbench_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reloads, size = 0, 4
    try:
        time.sleep(0.3)
        while bench.poll() is None:
            size = 6 if size == 4 else 4
            _rewrite_config(proxy, pg, **{**general, "default_pool_size": size})
            proxy.proc.send_signal(signal.SIGHUP)
            reloads += 1
            time.sleep(0.2)
        out, err = bench.communicate(timeout=60)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.communicate()
    # One more reload with the same file: once it is logged, the last resize has been applied
    # (signals that arrive together are taken as one, so the log may show fewer than sent).
    _reload(proxy, pg, **{**general, "default_pool_size": size})
    assert reloads >= 10 and proxy.log.count("changed by a reload") >= 10, proxy.log
    errors = distinct_errors(err)
    assert bench.returncode == 0 and not errors, errors or out
    assert "aborted" not in err, err
    failed = re.search(r"number of failed transactions: (\d+)", out)
    assert failed and failed.group(1) == "0", out
    processed = re.search(r"number of transactions actually processed: (\d+)", out)
    assert processed and int(processed.group(1)) > 200, out
    assert "Traceback" not in proxy.log

    # Nothing leaked: once idle, the proxy holds no more server connections than the last
    # pool may have, and that pool serves exactly `size` transactions at once, no fewer.
    _wait_for(lambda: len(proxy_backends(pg, proxy)) <= size)
    holders = [proxy.connect() for _ in range(size)]
    try:
        for conn in holders:
            conn.execute("BEGIN")
        pids = {conn.execute("SELECT pg_backend_pid()").fetchone()[0] for conn in holders}
        assert len(pids) == size
        assert len(proxy_backends(pg, proxy)) == size
        with proxy.connect() as extra, pytest.raises(psycopg.errors.TooManyConnections):
            extra.execute("SELECT 1")
    finally:
        for conn in holders:
            conn.close()


@pytest.mark.parametrize("change", [
    {"default_pool_size": 2},  # the pool is replaced by one for the same host
    {"db_host": "localhost"},  # that host's pool is gone: the group's new pool serves
], ids=["resized", "host-renamed"])
def test_a_waiting_client_is_served_by_the_reloaded_pool(pg, proxy_factory, change):
    general = {"default_pool_size": 1, "checkout_timeout": 4000}
    proxy = proxy_factory(**general)
    holder, waiter = proxy.connect(), proxy.connect()
    try:
        holder.execute("BEGIN")
        holder_pid = holder.execute("SELECT pg_backend_pid()").fetchone()[0]
        result: dict[str, object] = {}

        def wait_for_a_server() -> None:
            began = time.monotonic()
            try:
                result["row"] = waiter.execute("SELECT 42").fetchone()
            except psycopg.Error as exc:
                result["error"] = exc
            result["waited"] = time.monotonic() - began

        thread = threading.Thread(target=wait_for_a_server)
        thread.start()
        time.sleep(0.5)  # the second client is queued behind the first one's transaction
        assert thread.is_alive()
        _reload(proxy, pg, **{**general, **change})
        # The transaction in flight finishes on its own server connection.
        assert holder.execute("SELECT pg_backend_pid()").fetchone()[0] == holder_pid
        holder.execute("COMMIT")
        thread.join(10)
        assert result.get("row") == (42,), result.get("error")
        assert result["waited"] < 4.0
        # That server connection went back to its old pool, which closed it.
        _wait_for(lambda: str(holder_pid) not in {row[0] for row in proxy_backends(pg, proxy)})
        assert holder.execute("SELECT pg_backend_pid()").fetchone()[0] != holder_pid
    finally:
        holder.close()
        waiter.close()
