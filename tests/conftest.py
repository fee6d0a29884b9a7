"""Shared fixtures: one real PostgreSQL cluster per test session, proxies as real processes.

The cluster comes from trio_pgdog.embedded (the code `demo` uses). Each proxy is started as
`python -m trio_pgdog --config ... --users ...`, exactly as a user runs it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from trio_pgdog.embedded import Cluster, free_port

# Users on the test cluster: name -> (password, the method PostgreSQL demands).
PG_USERS = {
    "app": ("app-secret", "scram-sha-256"),
    "md5user": ("md5-secret", "md5"),
    "clearuser": ("clear-secret", "password"),
    "trustuser": (None, "trust"),
}
APP_DB = "appdb"


@pytest.fixture(scope="session")
def pg() -> Iterator[Cluster]:
    with Cluster.create() as cluster:
        cluster.start()
        for name, (password, method) in PG_USERS.items():
            cluster.add_user(name, password, auth=method)
        cluster.add_database(APP_DB, owner="app")
        cluster.sql(f"GRANT ALL ON DATABASE {APP_DB} TO PUBLIC; "
                    "GRANT ALL ON SCHEMA public TO PUBLIC", dbname=APP_DB)
        yield cluster


def pgdog_toml(pg: Cluster, port: int, **general: object) -> str:
    """A pgdog.toml with database `appdb` on the test cluster; `general` overrides [general]."""
    settings = {"host": "127.0.0.1", "port": port, **general}
    lines = ["[general]"] + [f"{k} = {_toml(v)}" for k, v in settings.items()]
    lines += ["", "[[databases]]", f'name = "{APP_DB}"', 'host = "127.0.0.1"', f"port = {pg.port}", ""]
    return "\n".join(lines)


def users_toml(*users: dict[str, object]) -> str:
    """users.toml text; default: user `app` on `appdb` with its real password."""
    if not users:
        users = ({"name": "app", "database": APP_DB, "password": PG_USERS["app"][0]},)
    out = []
    for user in users:
        out.append("[[users]]")
        out += [f"{k} = {_toml(v)}" for k, v in user.items()]
        out.append("")
    return "\n".join(out)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)


class ProxyProcess:
    """A running `python -m trio_pgdog` and what it logged."""

    def __init__(self, proc: subprocess.Popen, port: int, log_path: Path, workdir: Path):
        self.proc = proc
        self.port = port
        self.log_path = log_path
        self.workdir = workdir

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def dsn(self, user: str = "app", password: str | None = None, dbname: str = APP_DB) -> str:
        if password is None and user in PG_USERS:
            password = PG_USERS[user][0]
        parts = [f"host=127.0.0.1 port={self.port} user={user} dbname={dbname}",
                 "connect_timeout=10"]
        if password is not None:
            parts.append(f"password={password}")
        return " ".join(parts)

    def connect(self, **kwargs: object) -> psycopg.Connection:
        kw = {"user": "app", "password": None, "dbname": APP_DB}
        kw.update({k: kwargs.pop(k) for k in list(kwargs) if k in kw})
        return psycopg.connect(self.dsn(**kw), autocommit=True, **kwargs)  # type: ignore[arg-type]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def start_proxy(workdir: Path, pgdog_text: str, users_text: str | None, port: int,
                wait: bool = True, extra_args: list[str] | None = None) -> ProxyProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    cfg, users = workdir / "pgdog.toml", workdir / "users.toml"
    cfg.write_text(pgdog_text)
    if users_text is not None:
        users.write_text(users_text)
    log_path = workdir / "proxy.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "trio_pgdog", "--config", str(cfg), "--users", str(users),
         *(extra_args or [])],
        stdout=log_path.open("wb"), stderr=subprocess.STDOUT, cwd=workdir, env=env)
    proxy = ProxyProcess(proc, port, log_path, workdir)
    if wait:
        _wait_listening(proxy)
    return proxy


def _wait_listening(proxy: ProxyProcess, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proxy.proc.poll() is not None:
            raise RuntimeError(f"proxy exited with {proxy.proc.returncode}:\n{proxy.log}")
        try:
            socket.create_connection(("127.0.0.1", proxy.port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    proxy.stop(signal.SIGKILL)
    raise RuntimeError(f"proxy did not listen on {proxy.port}:\n{proxy.log}")


@pytest.fixture
def proxy_factory(pg: Cluster, tmp_path: Path) -> Iterator:
    """start(general=..., users=..., pgdog_text=...) -> ProxyProcess; all stopped at teardown."""
    started: list[ProxyProcess] = []

    def start(*, users: str | None = None, pgdog_text: str | None = None, wait: bool = True,
              **general: object) -> ProxyProcess:
        port = free_port()
        text = pgdog_text if pgdog_text is not None else pgdog_toml(pg, port, **general)
        proxy = start_proxy(tmp_path / f"proxy{len(started)}", text,
                            users if users is not None else users_toml(), port, wait=wait)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        try:
            proxy.stop(timeout=15)
        except subprocess.TimeoutExpired:
            proxy.stop(signal.SIGKILL)


@pytest.fixture
def proxy(proxy_factory) -> ProxyProcess:
    """A transaction-pooling proxy for user `app` on `appdb` with default settings."""
    return proxy_factory()
