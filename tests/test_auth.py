"""Logging in: how the proxy checks its clients, and how it logs in to PostgreSQL for them.

Client side: SCRAM-SHA-256 (the default), md5 or trust, checked with libpq's `require_auth`
so a test fails if the proxy silently asks for another method. Server side: whatever the test
cluster demands of each user (scram, md5, cleartext password, trust). Refused logins are
checked over the raw protocol, because libpq does not report a failed login's SQLSTATE.
"""

from __future__ import annotations

import psycopg
import pytest
from conftest import APP_DB, PG_USERS, login_error, proxy_backends, psql, users_toml


def app_user(**extra: object) -> dict[str, object]:
    return {"name": "app", "database": APP_DB, "password": PG_USERS["app"][0], **extra}


def whoami(conn: psycopg.Connection) -> tuple[str, str]:
    return conn.execute("SELECT current_user, current_database()").fetchone()


# --- client authentication ------------------------------------------------------------------------


def test_scram_is_the_default_client_login(pg, proxy):
    with proxy.connect(require_auth="scram-sha-256") as conn:
        assert whoami(conn) == ("app", APP_DB)
    out = psql(proxy.port, "SELECT current_user")
    assert (out.returncode, out.stdout.strip()) == (0, "app"), out.stderr
    assert login_error(proxy.port, "app", password=PG_USERS["app"][0]) is None


def test_wrong_password_is_refused_and_takes_no_server_connection(pg, proxy):
    error = login_error(proxy.port, "app", password="not-the-password")
    assert error is not None
    assert (error["S"], error["C"]) == ("FATAL", "28P01")
    assert 'password authentication failed for user "app"' in error["M"]
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        proxy.connect(password="not-the-password")
    out = psql(proxy.port, "SELECT 1", password="not-the-password")
    assert out.returncode != 0 and "password authentication failed" in out.stderr
    assert proxy_backends(pg, proxy) == []  # no failed login reached PostgreSQL

    with proxy.connect() as conn:  # the right password still works, and does connect
        assert whoami(conn) == ("app", APP_DB)
    assert len(proxy_backends(pg, proxy)) == 1


def test_unknown_user_and_unknown_database_are_refused(pg, proxy):
    error = login_error(proxy.port, "nobody", password="whatever")
    assert error is not None
    assert (error["S"], error["C"]) == ("FATAL", "28000")
    assert "nobody" in error["M"]

    error = login_error(proxy.port, "app", dbname="nodb", password=PG_USERS["app"][0])
    assert error is not None
    assert (error["S"], error["C"]) == ("FATAL", "3D000")
    assert "nodb" in error["M"]

    # A user that exists, but not for this database.
    error = login_error(proxy.port, "app", dbname="postgres", password=PG_USERS["app"][0])
    assert error is not None and error["C"] == "3D000"

    with pytest.raises(psycopg.OperationalError, match='"nobody"'):
        proxy.connect(user="nobody", password="whatever")
    with pytest.raises(psycopg.OperationalError, match='"nodb"'):
        proxy.connect(dbname="nodb")
    assert proxy_backends(pg, proxy) == []


def test_md5_client_login(proxy_factory):
    proxy = proxy_factory(auth_type="md5")
    with proxy.connect(require_auth="md5") as conn:
        assert whoami(conn) == ("app", APP_DB)
    out = psql(proxy.port, "SELECT current_user")
    assert (out.returncode, out.stdout.strip()) == (0, "app"), out.stderr
    error = login_error(proxy.port, "app", password="not-the-password")
    assert error is not None and error["C"] == "28P01"


def test_trust_client_login_asks_no_password(pg, proxy_factory):
    proxy = proxy_factory(auth_type="trust")
    with proxy.connect(password="", require_auth="none") as conn:
        assert whoami(conn) == ("app", APP_DB)
    out = psql(proxy.port, "SELECT current_user", password="")
    assert (out.returncode, out.stdout.strip()) == (0, "app"), out.stderr
    # Trust skips the password, not the user list.
    error = login_error(proxy.port, "nobody")
    assert error is not None and error["C"] == "28000"


# --- server authentication ------------------------------------------------------------------------


def test_server_login_with_scram_md5_cleartext_and_trust(pg, proxy_factory):
    users = users_toml(
        app_user(),
        {"name": "md5user", "database": APP_DB, "password": PG_USERS["md5user"][0]},
        {"name": "clearuser", "database": APP_DB, "password": PG_USERS["clearuser"][0]},
        # PostgreSQL trusts this user; the password only guards the proxy's door.
        {"name": "trustuser", "database": APP_DB, "password": "trust-client-secret"},
    )
    proxy = proxy_factory(users=users)
    for user, server_method in (("app", "scram-sha-256"), ("md5user", "md5"),
                                ("clearuser", "password"), ("trustuser", "trust")):
        password = PG_USERS[user][0] or "trust-client-secret"
        with proxy.connect(user=user, password=password) as conn:
            assert whoami(conn) == (user, APP_DB), server_method
            # A second transaction reuses the pooled connection.
            assert conn.execute("SELECT session_user").fetchone() == (user,)
    usenames = sorted(row[0] for row in proxy_backends(pg, proxy, "usename"))
    assert usenames == ["app", "clearuser", "md5user", "trustuser"]  # one pool per user


def test_server_user_maps_a_client_onto_another_server_user(pg, proxy_factory):
    users = users_toml({"name": "webapp", "database": APP_DB, "password": "webapp-secret",
                        "server_user": "md5user", "server_password": PG_USERS["md5user"][0]})
    proxy = proxy_factory(users=users)
    with proxy.connect(user="webapp", password="webapp-secret") as conn:
        assert whoami(conn) == ("md5user", APP_DB)
    assert [row[0] for row in proxy_backends(pg, proxy, "usename")] == ["md5user"]
    # The client logs in with its own password, not the server's.
    error = login_error(proxy.port, "webapp", password=PG_USERS["md5user"][0])
    assert error is not None and error["C"] == "28P01"
    error = login_error(proxy.port, "md5user", password=PG_USERS["md5user"][0])
    assert error is not None and error["C"] == "28000"


def test_server_refusing_the_proxy_is_reported_to_the_client(pg, proxy_factory):
    users = users_toml(app_user(server_password="wrong-server-password"))
    proxy = proxy_factory(users=users)
    error = login_error(proxy.port, "app", password=PG_USERS["app"][0])
    assert error is not None
    assert error["C"] == "28P01"
    assert "could not connect to server" in error["M"]
    assert "password authentication failed" in error["M"]
    assert proxy_backends(pg, proxy) == []
    # The proxy itself keeps running and says what happened.
    assert proxy.proc.poll() is None
    assert "password authentication failed" in proxy.log
