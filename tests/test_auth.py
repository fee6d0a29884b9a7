"""Logging in: how the proxy checks its clients, and how it logs in to PostgreSQL for them.

Client side: SCRAM-SHA-256 (the default), md5 or trust, checked with libpq's `require_auth`
so a test fails if the proxy silently asks for another method. Server side: whatever the test
cluster demands of each user (scram, md5, cleartext password, trust). Refused logins are
checked over the raw protocol, because libpq does not report a failed login's SQLSTATE.
"""

from __future__ import annotations

import base64

import psycopg
import pytest
from conftest import APP_DB, PG_USERS, login_error, pgdog_toml, proxy_backends, psql, users_toml

from trio_pgdog.embedded import Cluster


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


def test_unknown_database_is_reported_only_after_the_password(pg, proxy):
    # As PostgreSQL does: authentication first, then "database does not exist".
    error = login_error(proxy.port, "app", dbname="nodb", password=PG_USERS["app"][0])
    assert error is not None
    assert (error["S"], error["C"]) == ("FATAL", "3D000")
    assert "nodb" in error["M"]
    for user in ("app", "nobody"):  # without the password, nothing about the database
        error = login_error(proxy.port, user, dbname="nodb", password="not-the-password")
        assert error is not None and error["C"] == "28P01", error
        assert error["M"] == f'password authentication failed for user "{user}"'

    with pytest.raises(psycopg.OperationalError, match='"nobody"'):
        proxy.connect(user="nobody", password="whatever")
    with pytest.raises(psycopg.OperationalError, match='"nodb"'):
        proxy.connect(dbname="nodb")
    assert proxy_backends(pg, proxy) == []


def two_databases_toml(pg: Cluster, port: int, **general: object) -> str:
    """pgdog.toml with `appdb` and `otherdb` (both on the test cluster's appdb)."""
    return pgdog_toml(pg, port, **general) + "\n".join([
        "", "[[databases]]", 'name = "otherdb"', 'host = "127.0.0.1"', f"port = {pg.port}",
        f'database_name = "{APP_DB}"', ""])


def probe(port: int, user: str, password: str, dbname: str = APP_DB
          ) -> tuple[list[tuple[int, bytes]], dict[str, str] | None]:
    """(the Authentication requests the proxy sent, its ErrorResponse) for one login."""
    transcript: list[tuple[int, bytes]] = []
    return transcript, login_error(port, user, dbname, password, transcript=transcript)


def scram_salt_and_iterations(transcript: list[tuple[int, bytes]]) -> tuple[bytes, int]:
    """Check the shape of a failed SCRAM exchange; its salt and iteration count."""
    assert [code for code, _ in transcript] == [10, 11]  # SASL, SASL continue; no SASL final
    assert transcript[0][1] == b"SCRAM-SHA-256\0\0"  # the mechanisms offered
    fields = dict(part.split(b"=", 1) for part in transcript[1][1].split(b","))
    assert list(fields) == [b"r", b"s", b"i"], transcript[1][1]
    return base64.b64decode(fields[b"s"], validate=True), int(fields[b"i"])


def test_unknown_user_gets_the_exchange_a_wrong_password_gets(pg, proxy_factory):
    users = users_toml(app_user(), {"name": "md5user", "database": "otherdb",
                                    "password": PG_USERS["md5user"][0]})
    proxy = proxy_factory(users=users, pgdog_text=lambda port: two_databases_toml(pg, port))
    wrong = probe(proxy.port, "app", "not-the-password")
    probes = {
        "unknown user": probe(proxy.port, "nobody", "whatever"),
        "unknown user, unknown database": probe(proxy.port, "nobody", "whatever", "nodb"),
        # md5user exists, but not for appdb: its password is checked, so a wrong one gets
        # the same answer.
        "user of another database": probe(proxy.port, "md5user", "whatever"),
    }
    salt, iterations = scram_salt_and_iterations(wrong[0])
    assert (len(salt), iterations) == (16, 4096)
    assert wrong[1] is not None
    for what, (transcript, error) in probes.items():
        assert error is not None, what
        user = "nobody" if "unknown" in what else "md5user"
        their_salt, their_iterations = scram_salt_and_iterations(transcript)
        assert (len(their_salt), their_iterations) == (16, 4096), what
        assert their_salt != salt, what
        # The same fields and text, apart from the user name.
        assert error == {k: v.replace('"app"', f'"{user}"') for k, v in wrong[1].items()}, what
        assert error["C"] == "28P01" and error["M"] == \
            f'password authentication failed for user "{user}"', what

    # The salt is stable per user name, as a real user's is.
    assert scram_salt_and_iterations(probe(proxy.port, "nobody", "again")[0])[0] == \
        scram_salt_and_iterations(probes["unknown user"][0])[0]
    assert scram_salt_and_iterations(probe(proxy.port, "app", "again")[0])[0] == salt
    assert scram_salt_and_iterations(probe(proxy.port, "nobody2", "x")[0])[0] != \
        scram_salt_and_iterations(probes["unknown user"][0])[0]

    # Past its password, a user of another database learns why it may not come in.
    transcript, error = probe(proxy.port, "md5user", PG_USERS["md5user"][0])
    assert [code for code, _ in transcript] == [10, 11, 12]  # SCRAM succeeded
    assert error is not None and error["C"] == "28000"
    assert error["M"].startswith('user "md5user" has no access to database "appdb"')
    assert login_error(proxy.port, "md5user", "otherdb", PG_USERS["md5user"][0]) is None
    assert proxy_backends(pg, proxy, "usename") == [["md5user"]]  # only the otherdb login

    # The operator learns who was unknown; a known user is not called unknown.
    lines = [line for line in proxy.log.splitlines() if "28P01" in line]
    for user_at_db in ("nobody@appdb", "nobody@nodb"):
        assert any(f"({user_at_db}): 28P01" in line and 'unknown user "nobody"' in line
                   for line in lines), lines
    assert not any("unknown user" in line for line in lines if "(nobody" not in line)


def test_md5_client_login(proxy_factory):
    proxy = proxy_factory(auth_type="md5")
    with proxy.connect(require_auth="md5") as conn:
        assert whoami(conn) == ("app", APP_DB)
    out = psql(proxy.port, "SELECT current_user")
    assert (out.returncode, out.stdout.strip()) == (0, "app"), out.stderr
    error = login_error(proxy.port, "app", password="not-the-password")
    assert error is not None and error["C"] == "28P01"


def test_md5_unknown_user_gets_the_exchange_a_wrong_password_gets(proxy_factory):
    proxy = proxy_factory(auth_type="md5")
    wrong = probe(proxy.port, "app", "not-the-password")
    unknown = probe(proxy.port, "nobody", "whatever")
    for transcript, error in (wrong, unknown):
        assert [(code, len(salt)) for code, salt in transcript] == [(5, 4)]  # md5, a 4-byte salt
        assert error is not None and error["C"] == "28P01"
    assert unknown[1] == {k: v.replace('"app"', '"nobody"') for k, v in wrong[1].items()}
    assert unknown[0][0][1] != probe(proxy.port, "nobody", "whatever")[0][0][1]  # fresh salts
    assert 'unknown user "nobody"' in proxy.log


def test_trust_client_login_asks_no_password(pg, proxy_factory):
    proxy = proxy_factory(auth_type="trust")
    with proxy.connect(password="", require_auth="none") as conn:
        assert whoami(conn) == ("app", APP_DB)
    out = psql(proxy.port, "SELECT current_user", password="")
    assert (out.returncode, out.stdout.strip()) == (0, "app"), out.stderr
    # Trust skips the password, not the user list; with no secret to protect, it says why.
    transcript: list[tuple[int, bytes]] = []
    error = login_error(proxy.port, "nobody", transcript=transcript)
    assert transcript == []
    assert error is not None and error["C"] == "28000"
    assert error["M"] == 'no such user "nobody" in trio_pgdog (add it to users.toml)'
    error = login_error(proxy.port, "app", dbname="nodb")
    assert error is not None and error["C"] == "3D000"


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
    assert error is not None and error["C"] == "28P01"  # not a user of the proxy's


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
