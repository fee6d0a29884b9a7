"""Session parameters follow each client across server connections in transaction mode."""

from __future__ import annotations

import psycopg
import pytest
from conftest import PROTOCOLS, users_toml

from trio_pgdog.session.params import parse_options


def _show(conn: psycopg.Connection, name: str) -> str:
    return conn.execute(f"SELECT current_setting('{name}')").fetchone()[0]


def test_startup_parameters_are_applied_on_every_transaction(proxy_factory):
    proxy = proxy_factory(default_pool_size=1)  # both clients share one server connection
    tokyo = proxy.connect(application_name="alpha", options="-c TimeZone=Asia/Tokyo")
    plain = proxy.connect(application_name="beta")
    with tokyo, plain:
        default_tz = _show(plain, "TimeZone")
        assert default_tz != "Asia/Tokyo"
        for _ in range(3):
            assert _show(tokyo, "TimeZone") == "Asia/Tokyo"
            assert _show(tokyo, "application_name") == "alpha"
            assert _show(plain, "TimeZone") == default_tz
            assert _show(plain, "application_name") == "beta"
        assert tokyo.execute("select pg_backend_pid()").fetchone() == \
            plain.execute("select pg_backend_pid()").fetchone()


def test_unreported_startup_settings_follow_the_client(proxy_factory, pg):
    pg.sql("CREATE SCHEMA IF NOT EXISTS params_s AUTHORIZATION app; "
           "CREATE TABLE IF NOT EXISTS params_s.only_here (x int); "
           "GRANT SELECT ON params_s.only_here TO PUBLIC", dbname="appdb")
    proxy = proxy_factory(default_pool_size=1)
    with proxy.connect(options="-c search_path=params_s,public -c statement_timeout=1234") as a, \
            proxy.connect() as b:
        for _ in range(2):
            assert a.execute("select count(*) from only_here").fetchone() == (0,)
            assert _show(a, "statement_timeout") == "1234ms"
            with pytest.raises(psycopg.errors.UndefinedTable):
                b.execute("select count(*) from only_here")
            assert _show(b, "statement_timeout") == "0"


def test_set_is_remembered_set_local_and_rollback_are_not(proxy_factory):
    proxy = proxy_factory(default_pool_size=1)
    with proxy.connect() as a, proxy.connect() as b:
        default_style = _show(b, "DateStyle")
        a.execute("SET DateStyle TO 'German'")
        assert _show(b, "DateStyle") == default_style   # b's transaction on the same server
        assert _show(a, "DateStyle").startswith("German")
        assert a.info.parameter_status("DateStyle").startswith("German")  # ParameterStatus

        with a.transaction():
            a.execute("SET LOCAL TimeZone TO 'Pacific/Auckland'")
            assert _show(a, "TimeZone") == "Pacific/Auckland"
        assert _show(a, "TimeZone") != "Pacific/Auckland"

        with pytest.raises(psycopg.errors.DivisionByZero), a.transaction():
            a.execute("SET IntervalStyle TO 'iso_8601'")
            a.execute("select 1/0")
        assert _show(a, "IntervalStyle") != "iso_8601"

        with a.transaction():
            a.execute("SET TimeZone TO 'Europe/Paris'")
        assert _show(b, "TimeZone") != "Europe/Paris"
        assert _show(a, "TimeZone") == "Europe/Paris"

        a.execute("RESET ALL")
        assert _show(a, "DateStyle") == default_style
        assert _show(a, "TimeZone") == _show(b, "TimeZone")


def test_parse_options_reads_libpq_style_settings():
    assert parse_options(r"-c search_path=a,b --work-mem=4MB -cx=1 -c y=with\ space") == {
        "search_path": "a,b", "work_mem": "4MB", "x": "1", "y": "with space"}


def test_sql_set_of_unreported_settings_follows_the_client(proxy_factory, pg):
    pg.sql("CREATE SCHEMA IF NOT EXISTS params_t AUTHORIZATION app", dbname="appdb")
    proxy = proxy_factory(default_pool_size=1)
    with proxy.connect() as a, proxy.connect() as b:
        default_path = _show(b, "search_path")
        a.execute("SET search_path TO params_t, public")
        a.execute("SET statement_timeout = '7s'")
        for _ in range(2):
            assert _show(a, "search_path") == "params_t, public"
            assert _show(a, "statement_timeout") == "7s"
            assert _show(b, "search_path") == default_path  # same server, b's own view
            assert _show(b, "statement_timeout") == "0"
        with pytest.raises(psycopg.errors.DivisionByZero), a.transaction():
            a.execute("SET work_mem = '8MB'")
            a.execute("select 1/0")
        assert _show(a, "work_mem") != "8MB"   # rolled back with its transaction
        with a.transaction():
            a.execute("SET LOCAL statement_timeout = '1s'")
        assert _show(a, "statement_timeout") == "7s"
        a.execute("RESET ALL")
        assert _show(a, "search_path") == default_path
        assert _show(a, "statement_timeout") == "0"


@pytest.mark.parametrize(("name", "given"), [
    ("client_encoding", "utf-8"), ("client_encoding", "eucjp"), ("client_encoding", "Unicode"),
    ("DateStyle", "iso"), ("IntervalStyle", "SQL_Standard"),
])
def test_settings_are_reported_as_postgresql_spells_them(pg, proxy_factory, name, given):
    """A value PostgreSQL accepts in another spelling (client_encoding 'utf-8' is UTF8) is
    reported in PostgreSQL's spelling, at login (ParameterStatus) and by SHOW, in every
    transaction, whichever server connection it runs on."""
    proxy = proxy_factory(default_pool_size=1)
    option = f"-c {name}={given}"
    with psycopg.connect(pg.dsn("app", "app-secret", "appdb"), options=option) as direct, \
            psycopg.connect(pg.dsn("app", "app-secret", "appdb")) as plain:
        spelled = direct.info.parameter_status(name)
        assert direct.execute(f"SHOW {name}").fetchone()[0] == spelled
        default = plain.info.parameter_status(name)
    assert spelled is not None and spelled != given
    with proxy.connect(options=option) as conn, proxy.connect() as other:
        assert conn.info.parameter_status(name) == spelled
        for _ in range(2):
            assert conn.execute(f"SHOW {name}").fetchone()[0] == spelled
            assert other.execute(f"SHOW {name}").fetchone()[0] == default
        conn.execute(f"RESET {name}")
        conn.execute(f"SET {name} TO '{given}'")
        assert conn.info.parameter_status(name) == spelled
        other.execute("SELECT 1")
        assert conn.execute(f"SHOW {name}").fetchone()[0] == spelled


def test_a_startup_setting_postgresql_refuses_is_refused_at_login(proxy_factory):
    proxy = proxy_factory()
    with pytest.raises(psycopg.OperationalError) as refused:
        proxy.connect(options="-c client_encoding=klingon")
    # As PostgreSQL itself refuses it (psycopg does not expose a login's SQLSTATE).
    assert 'invalid value for parameter "client_encoding": "klingon"' in str(refused.value)
    with proxy.connect() as conn:
        assert conn.execute("select 1").fetchone() == (1,)


# --- who the session runs as: SET ROLE, SET SESSION AUTHORIZATION -------------------------------


def _whoami(conn: psycopg.Connection) -> tuple[str, str]:
    return conn.execute("SELECT current_user, session_user").fetchone()


@pytest.fixture
def member_role(pg) -> str:
    """A role `app` may SET ROLE to."""
    pg.sql("DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'params_reader') "
           "THEN CREATE ROLE params_reader NOLOGIN; END IF; END$$; GRANT params_reader TO app")
    return "params_reader"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_set_role_stays_with_the_client_that_set_it(proxy_factory, member_role, protocol):
    proxy = proxy_factory(default_pool_size=1)  # both clients share one server connection
    with proxy.connect(**PROTOCOLS[protocol]) as a, proxy.connect(**PROTOCOLS[protocol]) as b:
        for sql in (f"SET ROLE {member_role}", f"SET SESSION ROLE {member_role}",
                    f"/* tenant 7 */ SET ROLE {member_role}"):
            a.execute(sql)
            for _ in range(2):  # a keeps it after b's transaction on the same server
                assert _whoami(b) == ("app", "app"), sql
                assert _whoami(a) == (member_role, "app"), sql
            a.execute("RESET ROLE")
            assert _whoami(a) == ("app", "app")
        for undo in ("SET ROLE NONE", "RESET ROLE", "DISCARD ALL", "RESET SESSION AUTHORIZATION"):
            a.execute(f"SET ROLE {member_role}")
            assert _whoami(b) == ("app", "app")
            a.execute(undo)
            for _ in range(2):
                assert _whoami(a) == ("app", "app"), undo
                assert _whoami(b) == ("app", "app"), undo
        with a.transaction():  # ends with its transaction, as in PostgreSQL
            a.execute(f"SET LOCAL ROLE {member_role}")
            assert _whoami(a) == (member_role, "app")
        assert _whoami(a) == ("app", "app")
        with pytest.raises(psycopg.errors.DivisionByZero), a.transaction():
            a.execute(f"SET ROLE {member_role}")  # rolled back with its transaction
            a.execute("SELECT 1/0")
        assert _whoami(b) == ("app", "app")
        assert _whoami(a) == ("app", "app")
        assert a.execute("SELECT pg_backend_pid()").fetchone() == \
            b.execute("SELECT pg_backend_pid()").fetchone()


def superuser_users() -> str:
    """users.toml: client `admin` logs in to the test cluster as its superuser (trusted)."""
    return users_toml({"name": "admin", "database": "appdb", "password": "admin-secret",
                       "server_user": "postgres"})


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_session_authorization_stays_with_the_client_that_set_it(proxy_factory, member_role,
                                                                 protocol):
    proxy = proxy_factory(default_pool_size=1, users=superuser_users())
    options = {"user": "admin", "password": "admin-secret", **PROTOCOLS[protocol]}
    with proxy.connect(**options) as a, proxy.connect(**options) as b:
        for undo in ("RESET SESSION AUTHORIZATION", "SET SESSION AUTHORIZATION DEFAULT",
                     "DISCARD ALL"):
            a.execute("SET SESSION AUTHORIZATION app")
            assert a.info.parameter_status("session_authorization") == "app"
            for _ in range(2):
                assert _whoami(b) == ("postgres", "postgres"), undo
                assert _whoami(a) == ("app", "app"), undo
            assert b.info.parameter_status("session_authorization") == "postgres"
            a.execute(undo)
            assert a.info.parameter_status("session_authorization") == "postgres"
            assert _whoami(b) == ("postgres", "postgres"), undo
            assert _whoami(a) == ("postgres", "postgres"), undo
        # Both at once: the role is given back after the session authorization (which
        # resets it), so the client's role survives b's transactions too.
        a.execute("SET SESSION AUTHORIZATION app")
        a.execute(f"SET ROLE {member_role}")
        for _ in range(2):
            assert _whoami(b) == ("postgres", "postgres")
            assert _whoami(a) == (member_role, "app")
        a.execute("SET SESSION AUTHORIZATION DEFAULT")  # resets the role too
        assert _whoami(a) == ("postgres", "postgres")
        assert _whoami(b) == ("postgres", "postgres")
        assert _whoami(a) == ("postgres", "postgres")


def test_a_role_that_cannot_be_given_back_ends_the_session(proxy_factory, pg):
    pg.sql("DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'params_revoked') "
           "THEN CREATE ROLE params_revoked NOLOGIN; END IF; END$$; GRANT params_revoked TO app")
    proxy = proxy_factory(default_pool_size=1)
    with proxy.connect() as a, proxy.connect() as b:
        a.execute("SET ROLE params_revoked")
        assert _whoami(b) == ("app", "app")  # the server runs as app again
        pg.sql("REVOKE params_revoked FROM app")
        # PostgreSQL would not let a run as params_revoked now; nor may a run as app.
        with pytest.raises(psycopg.Error) as refused:
            a.execute("SELECT current_user")
        assert refused.value.sqlstate == "42501"
        assert "could not restore this session's role" in str(refused.value)
        assert a.closed or a.broken
        assert _whoami(b) == ("app", "app")
    assert "refused its role or session authorization" in proxy.log
