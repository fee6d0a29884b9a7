"""Throw-away PostgreSQL clusters (trio_pgdog.embedded), against the real local PostgreSQL."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import psycopg
import pytest

from trio_pgdog.embedded import Cluster, EmbeddedError, binaries, find_pg_binary, free_port

# A quote, a backslash and a space: proves the SQL and conninfo quoting, not just the happy path.
PASSWORD = "s3cret 'pw' \\ x"
# libpq >= 16 can insist on one auth method, which proves the server asked for that one.
CAN_REQUIRE_AUTH = psycopg.pq.version() >= 160000


def connect(
    cluster: Cluster, user: str, password: str | None, dbname: str = "postgres", **extra: str
) -> psycopg.Connection:
    return psycopg.connect(cluster.dsn(user, password, dbname), connect_timeout=10, **extra)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster.create(settings={"work_mem": "7MB"}) as c:
        c.start()
        yield c


def test_cluster_listens_on_loopback_with_own_socket_dir(cluster: Cluster) -> None:
    assert cluster.is_running()
    assert cluster.host == "127.0.0.1"
    assert 20000 <= cluster.port < 32000
    assert cluster.data_dir.startswith(cluster.base_dir)
    assert os.path.basename(cluster.base_dir).startswith("trio_pgdog-")
    assert os.path.exists(os.path.join(cluster.socket_dir, f".s.PGSQL.{cluster.port}"))
    shown = cluster.sql(
        "SHOW listen_addresses; SHOW port; SHOW unix_socket_directories;"
        " SHOW max_connections; SHOW work_mem; SHOW wal_level"
    )
    expected = ["127.0.0.1", str(cluster.port), cluster.socket_dir, "300", "7MB", "replica"]
    assert shown.splitlines() == expected
    # The superuser is trusted over TCP too.
    with connect(cluster, "postgres", None) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)


@pytest.mark.parametrize("auth", ["scram-sha-256", "md5", "password", "trust"])
def test_add_user_demands_its_auth_method(cluster: Cluster, auth: str) -> None:
    user = "user_" + auth.replace("-", "_")
    cluster.add_user(user, PASSWORD, auth=auth)

    extra = {"require_auth": "none" if auth == "trust" else auth} if CAN_REQUIRE_AUTH else {}
    with connect(cluster, user, PASSWORD, **extra) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (user,)

    if auth == "trust":
        with connect(cluster, user, "wrong") as conn:
            assert conn.execute("SELECT current_user").fetchone() == (user,)
    else:
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            connect(cluster, user, "wrong")

    stored = cluster.sql(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{user}'")
    assert stored.startswith("md5" if auth == "md5" else "SCRAM-SHA-256$")


def test_add_user_superuser(cluster: Cluster) -> None:
    cluster.add_user("boss", PASSWORD, superuser=True)
    with connect(cluster, "boss", PASSWORD) as conn:
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = 'boss'").fetchone() == (
            True,
        )


def test_add_database_owned_by_user(cluster: Cluster) -> None:
    cluster.add_user("app", PASSWORD)
    cluster.add_database("app db", owner="app")
    with connect(cluster, "app", PASSWORD, dbname="app db") as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("app db",)
        conn.execute("CREATE TABLE t (x int)")  # the owner may create tables in it


def test_sql_error_carries_psql_message(cluster: Cluster) -> None:
    with pytest.raises(EmbeddedError, match="no_such_table"):
        cluster.sql("SELECT * FROM no_such_table")


def test_restart_keeps_data(cluster: Cluster) -> None:
    cluster.sql("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
    started = cluster.sql("SELECT pg_postmaster_start_time()")
    cluster.restart()
    assert cluster.is_running()
    assert cluster.sql("SELECT pg_postmaster_start_time()") != started
    assert cluster.sql("SELECT x FROM kept") == "42"


def test_stop_start_and_destroy() -> None:
    with Cluster.create() as c:
        assert not c.is_running()  # create does not start it
        c.start()
        c.stop()
        assert not c.is_running()
        c.stop()  # stopping a stopped cluster is fine
        with pytest.raises(psycopg.OperationalError):
            connect(c, "postgres", None)
        c.start()
        with connect(c, "postgres", None) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    assert not os.path.exists(c.base_dir)
    c.destroy()  # idempotent
    assert not c.is_running()


def test_start_failure_shows_server_log() -> None:
    with (
        Cluster.create(settings={"shared_buffers": "plenty"}) as c,
        pytest.raises(EmbeddedError, match='invalid value for parameter "shared_buffers"'),
    ):
        c.start(timeout=10)


def test_replica_receives_rows_from_primary(cluster: Cluster) -> None:
    cluster.sql("CREATE TABLE replicated (x int)")
    with cluster.create_replica() as replica:
        assert not replica.is_running()
        assert replica.port != cluster.port
        replica.start()
        assert replica.sql("SELECT pg_is_in_recovery()") == "t"
        cluster.sql("INSERT INTO replicated VALUES (7)")
        deadline = time.monotonic() + 10
        while replica.sql("SELECT count(*) FROM replicated WHERE x = 7") != "1":
            assert time.monotonic() < deadline, "row never reached the replica"
            time.sleep(0.05)
        # Clients reach the replica over TCP like the primary.
        with connect(replica, "postgres", None) as conn:
            assert conn.execute("SELECT x FROM replicated").fetchall() == [(7,)]


def test_find_pg_binary_prefers_env_dir(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "initdb"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PGDOG_PG_BINDIR", str(tmp_path))
    assert find_pg_binary("initdb") == str(fake)


def test_find_pg_binary_says_how_to_fix(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGDOG_PG_BINDIR", str(tmp_path))
    monkeypatch.setenv("PATH", "")
    # Hide this machine's own installation from the fallback locations too.
    monkeypatch.setattr(binaries, "DEBIAN_ROOT", str(tmp_path / "nothing"))
    monkeypatch.setattr(binaries, "SOURCE_BINDIR", str(tmp_path / "nothing"))
    with pytest.raises(EmbeddedError) as excinfo:
        find_pg_binary("initdb")
    message = str(excinfo.value)
    assert message.startswith("initdb not found: install postgresql")
    assert "apt-get install postgresql" in message
    assert "PGDOG_PG_BINDIR" in message


def test_free_port_in_range_and_never_repeated() -> None:
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == 20
    assert all(20000 <= p < 32000 for p in ports)
    # Already handed out: not offered again.
    with pytest.raises(EmbeddedError):
        free_port(ports[0], ports[0] + 1)


def test_free_port_skips_busy_port() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(EmbeddedError, match="no free TCP port"):
            free_port(port, port + 1)
