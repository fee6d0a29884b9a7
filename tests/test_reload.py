"""SIGHUP reloads pgdog.toml and users.toml without dropping unchanged pools."""

from __future__ import annotations

import signal
import time

import psycopg
import pytest
from conftest import APP_DB, PG_USERS, users_toml


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
