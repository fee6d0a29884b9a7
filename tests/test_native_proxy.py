"""Native plugins through the proxy: real `python -m trio_pgdog` processes loading .so files
from `[[plugins]]`, real PostgreSQL behind them, and psycopg clients in the simple protocol,
the extended protocol with unnamed statements, and named prepared statements.

The plugins are built once per module (tests/plugin_build.py): the C example
(examples/plugins/c: shard by comment, no DROP TABLE), the Rust example (skipped without
cargo), primary_only_tables (plugins/) and the test plugins of tests/plugins/: answers.c
(a decision per query text), by_param.c (a decision per first parameter, so one prepared
statement gets different decisions) and recorder.c (writes every call to the file named by
its config, so the test can read what happened inside the proxy's process).
"""

from __future__ import annotations

import re
import signal
import threading
from pathlib import Path

import pglast
import psycopg
import pytest
from conftest import (
    APP_DB,
    PG_USERS,
    PROTOCOLS,
    login_error,
    pgdog_toml,
    psql,
    replica_pgdog_toml,
    restart_replicas,
    users_toml,
    wait_for,
    wait_replicated,
)
from pglast.parser import get_postgresql_version
from plugin_build import CARGO, CC, build_c_plugins, build_rust_example

from trio_pgdog import __version__, speedups
from trio_pgdog.hooks.native import ABI_VERSION

pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler")


DROP_BLOCKED = "DROP TABLE is not allowed through this proxy"


# --- building and configuring ------------------------------------------------------------


@pytest.fixture(scope="module")
def libs(tmp_path_factory) -> Path:
    return build_c_plugins(tmp_path_factory.mktemp("plugins"))


@pytest.fixture(scope="module")
def rust_lib(tmp_path_factory) -> Path:
    if CARGO is None:
        pytest.skip("no cargo")
    return build_rust_example(tmp_path_factory.mktemp("rust-target"))


@pytest.fixture(params=["c", "rust"])
def shard_comment(request, libs) -> Path:
    """The shard-by-comment example, in C and in Rust."""
    return libs / "libshard_comment.so" if request.param == "c" else request.getfixturevalue("rust_lib")


@pytest.fixture(scope="module", autouse=True)
def tables(pg):
    pg.sql("CREATE TABLE IF NOT EXISTS native_t (id int, v text); TRUNCATE native_t; "
           "INSERT INTO native_t VALUES (1, 'a'), (2, 'b'), (3, NULL); "
           "GRANT ALL ON native_t TO app", dbname=APP_DB)


def plugin(path: Path | str, config: str | Path | None = None, databases: list[str] | None = None) -> str:
    """One [[plugins]] entry (the proxy's cwd is its workdir: paths are absolute)."""
    lines = ["", "[[plugins]]", f'name = "{path}"']
    if config is not None:
        lines.append(f'config = "{config}"')
    if databases is not None:
        lines.append("databases = [" + ", ".join(f'"{d}"' for d in databases) + "]")
    return "\n".join(lines) + "\n"


@pytest.fixture
def start(pg, proxy_factory):
    """start(extra_toml, **kw) -> a proxy for appdb with `extra_toml` after its [[databases]]."""

    def _start(extra: str, users: str | None = None, **general: object):
        return loaded(proxy_factory(pgdog_text=lambda port: pgdog_toml(pg, port, **general) + extra,
                                    users=users))

    return _start


def loaded(proxy):
    """`proxy` once its plugins are loaded (it binds its port before it loads them)."""
    wait_for(lambda: "listening on" in proxy.log, what="the proxy to start serving")
    return proxy


def records(path: Path, kind: str) -> list[list[str]]:
    """The recorder's lines of one kind, split on tabs (without the kind)."""
    if not path.exists():
        return []
    return [line.split("\t")[1:] for line in path.read_text().splitlines()
            if line.split("\t")[0] == kind]


def table_exists(pg, name: str) -> bool:
    return pg.sql(f"SELECT to_regclass('public.{name}') IS NOT NULL", dbname=APP_DB) == "t"


# --- the startup log ---------------------------------------------------------------------


def test_first_log_line_names_the_versions(start, libs):
    proxy = start(plugin(libs / "libanswers.so"))
    first = proxy.log.splitlines()[0]
    major, minor = get_postgresql_version()
    assert f"trio_pgdog {__version__} starting" in first
    assert f"plugin ABI version {ABI_VERSION}" in first
    assert f"pglast {pglast.__version__.lstrip('v')}" in first
    assert f"libpg_query PostgreSQL {major}.{minor}" in first
    assert f"C speedups {speedups.status()}" in first
    # One line per loaded plugin, with its events.
    assert re.search(r"plugin '[^']*libanswers\.so' loaded from \S+ \(ABI version 1\): events "
                     r"pre_connect, after_connect, pre_query, post_query; wants the AST", proxy.log)


# --- routing by comment ------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_shard_comment_routes_to_shard_zero(start, shard_comment, protocol):
    proxy = start(plugin(shard_comment))
    with proxy.connect(**PROTOCOLS[protocol]) as conn:
        for _ in range(2):
            assert conn.execute("/* shard: 0 */ SELECT count(*) FROM native_t").fetchone() == (3,)
            assert conn.execute("SELECT v FROM native_t WHERE id = %s /* shard:0 */",
                                (1,)).fetchone() == ("a",)
        # A shard the database does not have: the example refuses it itself (22023).
        with pytest.raises(psycopg.errors.InvalidParameterValue,
                           match=r"shard 1 does not exist \(the database has 1\)"):
            conn.execute("/* shard: 1 */ SELECT count(*) FROM native_t")
        # The connection goes on.
        assert conn.execute("/* shard: 0 */ SELECT 1").fetchone() == (1,)
        assert conn.execute("SELECT 2").fetchone() == (2,)
    assert proxy.proc.poll() is None


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_forward_to_a_shard_that_does_not_exist_is_58000_and_a_log_line(start, libs, protocol):
    """A plugin that forwards to a shard out of range (answers.c: "forward <shard> <role>")."""
    proxy = start(plugin(libs / "libanswers.so"))
    with proxy.connect(**PROTOCOLS[protocol]) as conn:
        with pytest.raises(psycopg.errors.SystemError, match=r"shard 1 out of range") as err:
            conn.execute("forward 1 0")
        assert err.value.sqlstate == "58000"
        assert conn.execute("SELECT count(*) FROM native_t").fetchone() == (3,)
    assert re.search(r"ERROR trio_pgdog\.hooks\.native: plugin '[^']*libanswers\.so' \(\S+\): "
                     r"invalid answer from pgdog_route_query: shard 1 out of range .*58000",
                     proxy.log)
    assert proxy.proc.poll() is None


# --- blocking DROP TABLE -----------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_drop_table_blocked_outside_a_transaction(pg, start, shard_comment, protocol):
    name = f"victim_{protocol}"
    pg.sql(f"DROP TABLE IF EXISTS {name}; CREATE TABLE {name} (id int); "
           f"ALTER TABLE {name} OWNER TO app", dbname=APP_DB)
    proxy = start(plugin(shard_comment))
    with proxy.connect(**PROTOCOLS[protocol]) as conn:
        for sql in (f"DROP TABLE {name}", f"drop   table IF EXISTS {name}",
                    f"/* shard: 0 */ DROP TABLE {name}"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match=DROP_BLOCKED):
                conn.execute(sql)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute(f"SELECT count(*) FROM {name}").fetchone() == (0,)
    assert table_exists(pg, name)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_drop_table_blocked_inside_a_transaction_aborts_it_on_both_sides(pg, start, shard_comment,
                                                                         protocol):
    name = f"victim_tx_{protocol}"
    pg.sql(f"DROP TABLE IF EXISTS {name}; CREATE TABLE {name} (id int); "
           f"ALTER TABLE {name} OWNER TO app", dbname=APP_DB)
    proxy = start(plugin(shard_comment))
    with proxy.connect(**PROTOCOLS[protocol]) as conn:
        conn.autocommit = False
        conn.execute(f"INSERT INTO {name} VALUES (1)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=DROP_BLOCKED):
            conn.execute(f"DROP TABLE {name}")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")  # the server agrees: the transaction is aborted
        conn.rollback()
        assert conn.execute(f"SELECT count(*) FROM {name}").fetchone() == (0,)  # rolled back
        conn.commit()
        conn.autocommit = True
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert table_exists(pg, name)
    assert pg.sql(f"SELECT count(*) FROM {name}", dbname=APP_DB) == "0"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_drop_table_blocked_in_session_pooling(pg, start, libs, protocol):
    name = f"victim_session_{protocol}"
    pg.sql(f"DROP TABLE IF EXISTS {name}; CREATE TABLE {name} (id int); "
           f"ALTER TABLE {name} OWNER TO app", dbname=APP_DB)
    proxy = start(plugin(libs / "libshard_comment.so"), pooler_mode="session")
    with proxy.connect(**PROTOCOLS[protocol]) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=DROP_BLOCKED):
            conn.execute(f"DROP TABLE {name}")
        conn.autocommit = False
        conn.execute(f"INSERT INTO {name} VALUES (1)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=DROP_BLOCKED):
            conn.execute(f"DROP TABLE {name}")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("/* shard: 0 */ SELECT 1")
        conn.rollback()
        assert conn.execute(f"SELECT count(*) FROM {name}").fetchone() == (0,)
        conn.commit()
    assert table_exists(pg, name)


def test_drop_table_blocked_after_another_statement_of_a_pipeline(pg, start, libs):
    """Extended protocol, one Sync for both: the INSERT already ran in the batch's implicit
    transaction, so the server raises the error and the INSERT is rolled back with it, as
    PostgreSQL would do for any error in the batch."""
    pg.sql("DROP TABLE IF EXISTS victim_pipe; CREATE TABLE victim_pipe (id int); "
           "ALTER TABLE victim_pipe OWNER TO app", dbname=APP_DB)
    proxy = start(plugin(libs / "libshard_comment.so"))
    with proxy.connect() as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=DROP_BLOCKED), \
                conn.pipeline():
            conn.execute("INSERT INTO victim_pipe VALUES (1)")
            conn.execute("DROP TABLE victim_pipe")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute("SELECT count(*) FROM victim_pipe").fetchone() == (0,)
    assert table_exists(pg, "victim_pipe")


def test_psql_client(start, libs):
    proxy = start(plugin(libs / "libshard_comment.so") + plugin(libs / "libanswers.so"))
    out = psql(proxy.port, "/* shard: 0 */ SELECT count(*) FROM native_t")
    assert (out.returncode, out.stdout.strip()) == (0, "3")
    out = psql(proxy.port, "DROP TABLE native_t")
    assert out.returncode != 0 and DROP_BLOCKED in out.stderr
    out = psql(proxy.port, "/* shard: 7 */ SELECT 1")
    assert out.returncode != 0 and "shard 7 does not exist" in out.stderr
    out = psql(proxy.port, "intercept")
    assert (out.returncode, out.stdout.splitlines()) == (0, ["1|one", "2|"])
    out = psql(proxy.port, "rewrite SELECT 'rewritten'")
    assert (out.returncode, out.stdout.strip()) == (0, "rewritten")


# --- intercept and rewrite ---------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_intercept_same_rows_in_every_protocol(start, libs, protocol):
    """answers.c answers "intercept" (not SQL: only the plugin can answer it) with two int4
    and text columns, the last cell NULL."""
    proxy = start(plugin(libs / "libanswers.so"))
    with proxy.connect(**PROTOCOLS[protocol]) as conn:
        for _ in range(3):  # prepared statements are reused
            cur = conn.execute("intercept")
            assert [d.name for d in cur.description] == ["id", "name"]
            assert [d.type_code for d in cur.description] == [23, 25]
            assert cur.fetchall() == [(1, "one"), (2, None)]
            assert cur.rowcount == 2
            assert conn.execute("intercept_no_rows").fetchall() == []
        # In a transaction: answered without changing its status.
        conn.autocommit = False
        conn.execute("INSERT INTO native_t VALUES (100, 'tx')")
        assert conn.execute("intercept").fetchall() == [(1, "one"), (2, None)]
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM native_t").fetchone() == (3,)


def test_intercept_among_server_answers_in_a_pipeline(start, libs):
    """The proxy's answers take their place among the server's, in order."""
    proxy = start(plugin(libs / "libanswers.so"))
    with proxy.connect() as conn:
        for _ in range(2):
            with conn.pipeline():
                curs = [conn.execute(sql) for sql in (
                    "SELECT count(*) FROM native_t", "intercept", "SELECT 'between'",
                    "intercept_no_rows", "rewrite SELECT 'rewritten'", "SELECT 'last'")]
            assert [c.fetchall() for c in curs] == [
                [(3,)], [(1, "one"), (2, None)], [("between",)], [], [("rewritten",)], [("last",)]]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_intercept_in_a_failed_transaction_is_refused_by_the_server(start, libs, protocol):
    proxy = start(plugin(libs / "libanswers.so"))
    with proxy.connect(**PROTOCOLS[protocol]) as conn:
        conn.autocommit = False
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1 / (id - id) FROM native_t")
        # (Valid SQL: PostgreSQL reports a syntax error even in a failed transaction.)
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("/* echo */ SELECT 1")
        conn.rollback()
        assert conn.execute("/* echo */ SELECT 1").fetchone()[0] == "/* echo */ SELECT 1"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_plugin_sees_the_statement_as_the_client_sent_it(start, libs, protocol):
    """answers.c's echo: one row describing its PgdogInput."""
    proxy = start(plugin(libs / "libanswers.so"))
    with proxy.connect(**PROTOCOLS[protocol]) as conn:
        cur = conn.execute("/* echo */ SELECT %s::int, %s::text", (42, None))
        row = dict(zip([d.name for d in cur.description], cur.fetchone(), strict=True))
    if protocol == "simple":
        assert row["query"] == "/* echo */ SELECT 42::int, NULL::text"
        assert row["params"] == ""
    else:
        assert row["query"] == "/* echo */ SELECT $1::int, $2::text"
        # psycopg sends the int in binary: 4 bytes of 42; NULL stays NULL
        assert row["params"] in ("1:0000002a,NULL", "1:002a,NULL", "0:3432,NULL")
    assert (row["database"], row["user"], row["shards"]) == (APP_DB, "app", "1")
    assert row["flags"] == "primary=1 replicas=0 tx=0"
    assert row["ast"].startswith('{"version":')


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_rewrite(start, libs, protocol):
    """answers.c: "rewrite <sql>" runs <sql> instead."""
    proxy = start(plugin(libs / "libanswers.so"))
    with proxy.connect(**PROTOCOLS[protocol]) as conn:
        for _ in range(3):
            assert conn.execute("rewrite SELECT 40 + 2").fetchone() == (42,)
            assert conn.execute("rewrite SELECT %s::int * 2", (21,)).fetchone() == (42,)
            assert conn.execute("rewrite SELECT count(*) FROM native_t").fetchone() == (3,)
        # A prepared statement whose text is rewritten, next to one that is not.
        assert conn.execute("SELECT %s::int * 3", (5,)).fetchone() == (15,)
        with pytest.raises(psycopg.errors.SystemError, match="empty"):
            conn.execute("rewrite_empty")
        assert conn.execute("SELECT 1").fetchone() == (1,)


BY_PARAM = {"plain": ("original", "plain"), "rewrite": ("rewritten", "rewrite"),
            "intercept": ("intercepted", "intercept")}


@pytest.mark.parametrize("speedups_env", ["", "0"], ids=["speedups", "no-speedups"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_one_statement_decided_differently_on_each_execution(start, libs, protocol, speedups_env,
                                                             monkeypatch):
    """by_param.c decides by the first parameter: one prepared statement is forwarded,
    rewritten, intercepted and blocked in turns (the simple protocol inlines the parameter:
    the plugin sees none and everything is forwarded). The same with the C speedups
    switched off (TRIO_PGDOG_SPEEDUPS=0): the pure-Python path decides alike."""
    monkeypatch.setenv("TRIO_PGDOG_SPEEDUPS", speedups_env)
    proxy = start(plugin(libs / "libby_param.so"))
    assert ("C speedups off" in proxy.log) == (speedups_env == "0")
    sql = "SELECT 'original', %s::text"
    values = ["plain", "rewrite", "plain", "intercept", "plain", "block", "plain", "intercept",
              "rewrite", "block", "rewrite", "rewrite", "intercept", "intercept", "plain"]
    with proxy.connect(**PROTOCOLS[protocol]) as conn:
        for value in values:
            if value == "block" and protocol != "simple":
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match="blocked by parameter"):
                    conn.execute(sql, (value,))
            elif protocol == "simple":
                assert conn.execute(sql, (value,)).fetchone() == ("original", value)
            else:
                assert conn.execute(sql, (value,)).fetchone() == BY_PARAM[value], value
            assert conn.execute("SELECT %s::int", (7,)).fetchone() == (7,)  # another statement
        if protocol == "simple":
            return
        # The same inside a transaction, ended by a block that aborts it on both sides.
        conn.autocommit = False
        for value in ("rewrite", "plain", "intercept", "rewrite", "plain"):
            assert conn.execute(sql, (value,)).fetchone() == BY_PARAM[value], value
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql, ("block",))
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute(sql, ("plain",))
        conn.rollback()
        for value in ("plain", "rewrite", "intercept", "plain"):
            assert conn.execute(sql, (value,)).fetchone() == BY_PARAM[value], value
        conn.commit()


# --- pre_connect, after_connect, post_query ------------------------------------------------


REFUSED_PASSWORD = "refused-secret"


def _users_with_refused() -> str:
    return users_toml({"name": "app", "database": APP_DB, "password": PG_USERS["app"][0]},
                      {"name": "refused", "database": APP_DB, "password": REFUSED_PASSWORD})


def test_pre_connect_refusal(start, libs, tmp_path):
    log_path = tmp_path / "recorder.log"
    proxy = start(plugin(libs / "librecorder.so", log_path), users=_users_with_refused())
    # The plugin's SQLSTATE and message reach the client.
    fields = login_error(proxy.port, "refused", password=REFUSED_PASSWORD)
    assert fields is not None
    assert (fields["S"], fields["C"]) == ("FATAL", "53300")
    assert fields["M"] == "recorder: no more connections for user refused"
    # A BLOCK without SQLSTATE or message: the proxy's defaults (28000, naming the plugin).
    with pytest.raises(psycopg.OperationalError,
                       match=r"blocked by plugin \S*librecorder\.so") as err:
        proxy.connect(application_name="refuse_me")
    assert err.value.sqlstate in (None, "28000")
    # Everyone else is let in.
    with proxy.connect(application_name="welcome") as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("app",)
    assert records(log_path, "pre_connect") == [
        ["refused", APP_DB, ""], ["app", APP_DB, "refuse_me"], ["app", APP_DB, "welcome"]]
    assert proxy.proc.poll() is None


def test_after_connect_sql_runs_on_every_new_server_connection(pg, start, libs, tmp_path):
    log_path = tmp_path / "recorder.log"
    proxy = start(plugin(libs / "librecorder.so", log_path), default_pool_size=2)
    conns = [proxy.connect(**kw) for kw in PROTOCOLS.values()]
    try:
        with conns[0].transaction(), conns[1].transaction():  # two server connections
            for conn in conns[:2]:
                assert conn.execute("SELECT current_setting('recorder.server', true)").fetchone() \
                    == (f"{pg.port} primary",)
        assert conns[2].execute("SELECT current_setting('recorder.server')").fetchone() \
            == (f"{pg.port} primary",)
    finally:
        for conn in conns:
            conn.close()
    seen = records(log_path, "after_connect")
    assert len(seen) == 2
    assert all(s == [APP_DB, "127.0.0.1", str(pg.port), "primary", "0"] for s in seen)


def test_after_connect_sql_of_answers_sets_application_name(pg, start, libs):
    """answers.c's after_connect: SET application_name = 'from_plugin' on the server side."""
    proxy = start(plugin(libs / "libanswers.so"))
    with proxy.connect() as conn, conn.transaction():
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        assert pg.sql(f"SELECT application_name FROM pg_stat_activity WHERE pid = {pid}") \
            == "from_plugin"


def test_post_query_data(pg, start, libs, tmp_path):
    log_path = tmp_path / "recorder.log"
    # answers.c first (intercepts "intercept"), then the recorder.
    proxy = start(plugin(libs / "libanswers.so") + plugin(libs / "librecorder.so", log_path))
    for protocol, kwargs in PROTOCOLS.items():
        with proxy.connect(**kwargs) as conn:
            conn.execute(f"SELECT id FROM native_t WHERE id <= %s /* {protocol} */", (2,))
            conn.execute(f"UPDATE native_t SET v = v /* {protocol} */")
            with pytest.raises(psycopg.errors.DivisionByZero):  # at run time, in Execute
                conn.execute(f"SELECT 1 / (id - id) FROM native_t /* {protocol} */")
            conn.execute("intercept")
    done = wait_for(lambda: (lambda r: r if len(r) >= 12 else None)(records(log_path, "post_query")),
                    what="12 post_query lines")
    by_query = {d[0]: d[1:] for d in done}
    for protocol in PROTOCOLS:
        select = (f"SELECT id FROM native_t WHERE id <= 2 /* {protocol} */" if protocol == "simple"
                  else f"SELECT id FROM native_t WHERE id <= $1 /* {protocol} */")
        db, user, rows, sqlstate, role, duration = by_query[select]
        assert (db, user, rows, sqlstate, role) == (APP_DB, "app", "2", "", "1")  # 1: primary
        assert int(duration) > 0
        assert by_query[f"UPDATE native_t SET v = v /* {protocol} */"][2:5] == ["3", "", "1"]
        assert by_query[f"SELECT 1 / (id - id) FROM native_t /* {protocol} */"][2:5] \
            == ["0", "22012", "1"]
    # Answered by the proxy: no server role (0, unknown).
    intercepted = [d[1:6] for d in done if d[0] == "intercept"]
    assert [(d[0], d[1], d[3], d[4]) for d in intercepted] == [(APP_DB, "app", "", "0")] * 3
    assert len(done) == 12  # once per statement, also for prepared statements


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_post_query_rows_of_an_intercepted_statement(start, libs, tmp_path, protocol):
    log_path = tmp_path / "recorder.log"
    proxy = start(plugin(libs / "libanswers.so") + plugin(libs / "librecorder.so", log_path))
    with proxy.connect(**PROTOCOLS[protocol]) as conn:
        assert len(conn.execute("intercept").fetchall()) == 2
    done = wait_for(lambda: records(log_path, "post_query"), what="post_query")
    assert [(d[0], d[3]) for d in done] == [("intercept", "2")]


@pytest.mark.parametrize(("protocol", "sql", "params", "sent", "sqlstate"), [
    # the parameter does not convert to int: the error answers the Bind
    ("extended", "SELECT %s::int /* bind */", ("x",), "SELECT $1::int /* bind */", "22P02"),
    ("prepared", "SELECT %s::int /* bind */", ("x",), "SELECT $1::int /* bind */", "22P02"),
    # constant folding while planning: also at Bind
    ("extended", "SELECT 1/0 /* plan */", None, "SELECT 1/0 /* plan */", "22012"),
    # a syntax error answers the Parse of Parse, Bind, Describe, Execute, Sync
    ("extended", "SELECT FROM WHERE /* parse */", None, "SELECT FROM WHERE /* parse */", "42601"),
], ids=["extended-bind", "prepared-bind", "extended-plan", "extended-parse"])
def test_post_query_reports_a_statement_failing_before_execute(start, libs, tmp_path, protocol, sql,
                                                               params, sent, sqlstate):
    log_path = tmp_path / "recorder.log"
    proxy = start(plugin(libs / "librecorder.so", log_path))
    with proxy.connect(**PROTOCOLS[protocol]) as conn:
        with pytest.raises(psycopg.Error) as err:
            conn.execute(sql, params)
        assert err.value.sqlstate == sqlstate
        conn.execute("SELECT 1 /* after */")
    done = wait_for(lambda: (lambda r: r if any("after" in d[0] for d in r) else None)(
        records(log_path, "post_query")), what="post_query of the second statement")
    assert [(d[0], d[4]) for d in done] == [(sent, sqlstate), ("SELECT 1 /* after */", "")]


def test_post_query_reports_errors_in_the_simple_protocol(start, libs, tmp_path):
    """The same errors as a Query message are reported."""
    log_path = tmp_path / "recorder.log"
    proxy = start(plugin(libs / "librecorder.so", log_path))
    with proxy.connect(**PROTOCOLS["simple"]) as conn:
        for sql, error in (("SELECT 'x'::int", psycopg.errors.InvalidTextRepresentation),
                           ("SELECT 1/0", psycopg.errors.DivisionByZero),
                           ("SELECT FROM WHERE", psycopg.errors.SyntaxError)):
            with pytest.raises(error):
                conn.execute(sql)
    done = wait_for(lambda: (lambda r: r if len(r) >= 3 else None)(records(log_path, "post_query")),
                    what="three post_query lines")
    assert [(d[0], d[4]) for d in done] == [("SELECT 'x'::int", "22P02"), ("SELECT 1/0", "22012"),
                                            ("SELECT FROM WHERE", "42601")]


# --- plugins that are refused or answer garbage ----------------------------------------------


def _refused_cases(libs: Path, tmp_path: Path) -> dict[str, tuple[Path, str]]:
    not_a_library = tmp_path / "libtext.so"
    not_a_library.write_text("this is not an ELF file\n")
    return {
        "wrong ABI": (libs / "libwrong_abi.so",
                      "built for plugin ABI version 2, this proxy speaks version 1"),
        "no ABI function": (libs / "libno_abi.so", "no pgdog_plugin_abi_version function"),
        "not a library": (not_a_library, "not a loadable shared library"),
        "missing file": (tmp_path / "libmissing.so", f"no such file: {tmp_path / 'libmissing.so'}"),
        "no event": (libs / "libabi_only.so", "exports no event function"),
    }


@pytest.mark.parametrize("case", ["wrong ABI", "no ABI function", "not a library", "missing file",
                                  "no event"])
def test_a_plugin_that_cannot_load_stops_the_start(pg, proxy_factory, libs, tmp_path, case):
    """Fail closed: the proxy does not serve without a hook it was configured with. It says
    which plugin and why in one line, exits 2, and the plugins loaded before it are unloaded."""
    path, why = _refused_cases(libs, tmp_path)[case]
    log_path = tmp_path / "recorder.log"
    proxy = proxy_factory(wait=False, pgdog_text=lambda port: pgdog_toml(pg, port)
                          + plugin(libs / "librecorder.so", log_path) + plugin(path))
    assert proxy.proc.wait(timeout=20) == 2, proxy.log
    log = proxy.log
    assert "Traceback" not in log and "listening on" not in log
    message = [line for line in log.splitlines() if not re.match(r"\d{4}-\d\d-\d\d ", line)]
    assert len(message) == 1, log
    assert message[0].startswith(f"trio_pgdog: plugin '{path}' refused: ")
    assert why in message[0] and "not starting without it" in message[0]
    assert log_path.read_text().splitlines() == ["init 1", "fini 1"]


def test_a_reload_that_would_lose_a_plugin_keeps_the_running_configuration(start, libs, tmp_path):
    """The new file changes the recorder's entry and adds a plugin that cannot load: the
    recorder goes back to its running entry, the table guard stays on, the pools stay."""
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    guard = '\n[hooks.table_access]\nenabled = true\ntables = ["native_secret"]\n'
    proxy = start(plugin(libs / "librecorder.so", first) + guard)
    config = proxy.workdir / "pgdog.toml"
    config.write_text(config.read_text().replace(str(first), str(second)).replace(guard, "")
                      + plugin(tmp_path / "nothing_here.so"))
    proxy.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload failed" in proxy.log, what="the reload to fail")
    line = next(x for x in proxy.log.splitlines() if "reload failed" in x)
    assert "keeping the running configuration" in line
    assert f"plugin '{tmp_path / 'nothing_here.so'}' refused: no such file" in line
    assert "configuration reloaded" not in proxy.log and "is now OFF" not in proxy.log
    with proxy.connect() as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT * FROM native_secret")
    with proxy.connect() as conn:
        conn.execute("SELECT 'after the failed reload'")
    done = wait_for(lambda: [r for r in records(first, "post_query")
                             if r[0] == "SELECT 'after the failed reload'"], timeout=3,
                    what="post_query in the running plugin's log")
    assert done
    assert "Traceback" not in proxy.log


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_garbage_answer_is_an_error_for_that_statement_only(start, libs, protocol):
    """answers.c answers "decision <n>" with decision n (not one of the ABI's)."""
    proxy = start(plugin(libs / "libanswers.so"))
    other = proxy.connect(**PROTOCOLS[protocol])
    errors: list[BaseException] = []

    def busy() -> None:  # another client, working all along
        try:
            for _ in range(50):
                assert other.execute("SELECT count(*) FROM native_t").fetchone() == (3,)
        except BaseException as exc:
            errors.append(exc)

    with other, proxy.connect(**PROTOCOLS[protocol]) as conn:
        thread = threading.Thread(target=busy)
        thread.start()
        for n in (7, 99, -1):
            with pytest.raises(psycopg.errors.SystemError, match=f"unknown decision {n}") as err:
                conn.execute(f"decision {n}")
            assert err.value.sqlstate == "58000"
            assert conn.execute("SELECT 1").fetchone() == (1,)
        # Inside a transaction: aborted on both sides, like any other error.
        conn.autocommit = False
        conn.execute("SELECT 1")
        with pytest.raises(psycopg.errors.SystemError):
            conn.execute("decision 5")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        thread.join()
    assert errors == []
    assert proxy.log.count("invalid answer from pgdog_route_query: unknown decision") == 4
    assert proxy.proc.poll() is None


def test_garbage_plugin_refuses_its_database_clients_with_58000(pg, libs, proxy_factory):
    """garbage.c answers nonsense to every event; it applies to database garbagedb only."""
    users = users_toml({"name": "app", "database": APP_DB, "password": PG_USERS["app"][0]},
                       {"name": "app", "database": "garbagedb", "password": PG_USERS["app"][0]})
    extra = (f'\n[[databases]]\nname = "garbagedb"\nhost = "127.0.0.1"\nport = {pg.port}\n'
             f'database_name = "{APP_DB}"\n' + plugin(libs / "libgarbage.so", databases=["garbagedb"]))
    proxy = loaded(proxy_factory(pgdog_text=lambda port: pgdog_toml(pg, port) + extra,
                                 users=users))
    with proxy.connect() as conn:
        for _ in range(3):
            fields = login_error(proxy.port, "app", dbname="garbagedb", password=PG_USERS["app"][0])
            assert fields is not None and fields["C"] == "58000"
            assert "unknown decision -1" in fields["M"]
            assert conn.execute("SELECT count(*) FROM native_t").fetchone() == (3,)
    assert "invalid answer from pgdog_pre_connect: unknown decision -1" in proxy.log
    assert proxy.proc.poll() is None


# --- primary_only_tables with replicas ---------------------------------------------------


@pytest.fixture
def topology(pg_replicas):
    primary, replicas = pg_replicas
    if not all(r.is_running() for r in replicas):
        restart_replicas(primary, replicas)
    primary.sql("CREATE TABLE IF NOT EXISTS lag_ok_t (id int); "
                "ALTER TABLE lag_ok_t OWNER TO app", dbname=APP_DB)
    wait_replicated(primary, replicas)
    return primary, replicas


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_primary_only_tables(topology, libs, proxy_factory, tmp_path, protocol):
    primary, replicas = topology
    tables = tmp_path / "primary_only_tables.txt"
    tables.write_text("# read after write\nrw_t\n")
    extra = plugin(libs / "libprimary_only_tables.so", tables)
    proxy = loaded(proxy_factory(
        pgdog_text=lambda port: replica_pgdog_toml(primary, replicas, port) + extra))
    replica_ports = {r.port for r in replicas}
    seen_replicas = set()
    with proxy.connect(**PROTOCOLS[protocol]) as conn:
        for i in range(6):
            port, recovery = conn.execute(
                "SELECT inet_server_port(), pg_is_in_recovery(), (SELECT count(*) FROM rw_t) "
                "WHERE %s >= 0", (i,)).fetchone()[:2]
            assert (port, recovery) == (primary.port, False)
            port, recovery = conn.execute(
                "SELECT inet_server_port(), pg_is_in_recovery(), (SELECT count(*) FROM lag_ok_t) "
                "WHERE %s >= 0", (i,)).fetchone()[:2]
            assert port in replica_ports and recovery is True
            seen_replicas.add(port)
            # Not a relation: a string literal naming the table does not count.
            port, recovery = conn.execute("SELECT inet_server_port(), pg_is_in_recovery(), 'rw_t'") \
                .fetchone()[:2]
            assert port in replica_ports and recovery is True
            seen_replicas.add(port)
    assert seen_replicas == replica_ports  # still load-balanced
    assert "libprimary_only_tables.so" in proxy.log and "wants the AST" in proxy.log


def test_plugins_see_primary_and_replicas(topology, libs, proxy_factory, tmp_path):
    """after_connect gets each server's role and port; pre_query knows there are replicas;
    post_query says where a statement ran."""
    primary, replicas = topology
    log_path = tmp_path / "recorder.log"
    extra = plugin(libs / "librecorder.so", log_path) + plugin(libs / "libanswers.so")
    proxy = loaded(proxy_factory(
        pgdog_text=lambda port: replica_pgdog_toml(primary, replicas, port) + extra))
    replica_ports = {r.port for r in replicas}
    with proxy.connect() as conn:
        for _ in range(4):
            port, setting = conn.execute(
                "SELECT inet_server_port(), current_setting('recorder.server')").fetchone()
            assert port in replica_ports and setting == f"{port} replica"
        with conn.transaction():
            conn.execute("INSERT INTO rw_t VALUES (-1, 'x') ON CONFLICT DO NOTHING")
            assert conn.execute("SELECT current_setting('recorder.server')").fetchone() \
                == (f"{primary.port} primary",)
        row = conn.execute("/* echo */ SELECT 1").fetchone()
        assert row[4] == "primary=1 replicas=1 tx=0"
    connected = {(int(line[2]), line[3]) for line in records(log_path, "after_connect")}
    assert connected >= {(primary.port, "primary")} | {(p, "replica") for p in replica_ports}
    roles = {d[0]: d[5] for d in records(log_path, "post_query")}
    assert roles["SELECT inet_server_port(), current_setting('recorder.server')"] == "2"
    assert roles["INSERT INTO rw_t VALUES (-1, 'x') ON CONFLICT DO NOTHING"] == "1"


# --- lifecycle -------------------------------------------------------------------------------


def test_init_once_at_start_and_fini_once_at_shutdown(start, libs, tmp_path):
    log_path = tmp_path / "recorder.log"
    proxy = start(plugin(libs / "librecorder.so", log_path))
    assert log_path.read_text().splitlines() == ["init 1"]
    with proxy.connect() as conn:
        conn.execute("SELECT 1")
    # A reload that leaves the entry as it is keeps the loaded plugin: no second init, no fini.
    proxy.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "configuration reloaded" in proxy.log, what="reload")
    with proxy.connect() as conn:
        conn.execute("SELECT 2")
    assert proxy.stop(signal.SIGTERM) == 0
    lines = log_path.read_text().splitlines()
    assert lines[0] == "init 1" and lines[-1] == "fini 1"
    assert [line for line in lines if line.startswith(("init", "fini"))] == ["init 1", "fini 1"]
    assert len(records(log_path, "post_query")) == 2


def test_reload_with_a_changed_config_keeps_the_plugin_working(start, libs, tmp_path):
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    proxy = start(plugin(libs / "librecorder.so", first))
    config = proxy.workdir / "pgdog.toml"
    config.write_text(config.read_text().replace(str(first), str(second)))
    proxy.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "configuration reloaded" in proxy.log, what="reload")
    with proxy.connect() as conn:
        conn.execute("SELECT 'after reload'")
    assert wait_for(lambda: records(second, "post_query"), timeout=3, what="post_query in second.log")


# --- order between built-in hooks and plugins ------------------------------------------------


TABLE_ACCESS = '\n[hooks.table_access]\nenabled = true\ntables = ["order_secret"]\n'
ECHO_SECRET = "/* echo */ SELECT * FROM order_secret"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_builtin_before_plugin_wins(start, libs, protocol):
    proxy = start(TABLE_ACCESS + plugin(libs / "libanswers.so"))
    with proxy.connect(**PROTOCOLS[protocol]) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="order_secret"):
            conn.execute(ECHO_SECRET)
        # Where the built-in has no opinion, the plugin decides.
        assert conn.execute("intercept").fetchall() == [(1, "one"), (2, None)]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_plugin_before_builtin_wins(start, libs, protocol):
    proxy = start(plugin(libs / "libanswers.so") + TABLE_ACCESS)
    with proxy.connect(**PROTOCOLS[protocol]) as conn:
        cur = conn.execute(ECHO_SECRET)
        assert cur.description[0].name == "query" and cur.fetchone()[0] == ECHO_SECRET
        # Where the plugin has no opinion, the built-in decides.
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="order_secret"):
            conn.execute("SELECT * FROM order_secret")
