"""The hook registry through the proxy: built-in hooks and Python hooks against real PostgreSQL,
in the simple and the extended protocol, in transaction and session pooling."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import psycopg
import pytest
import trio
from conftest import APP_DB, PG_USERS, PROTOCOLS, pgdog_toml, proxy_backends, wait_for
from hookmods.recorder import read_events

MODES = ["transaction", "session"]


def _hooks_toml(pg, extra: str, **general):
    return lambda port: pgdog_toml(pg, port, **general) + "\n" + extra


@pytest.fixture(scope="module", autouse=True)
def secrets_table(pg):
    pg.sql("CREATE TABLE IF NOT EXISTS secrets (id int, v text); "
           "CREATE TABLE IF NOT EXISTS open_data (id int, v text); "
           "TRUNCATE secrets, open_data; INSERT INTO secrets VALUES (1, 's'); "
           "INSERT INTO open_data VALUES (1, 'o'), (2, 'p');"
           "GRANT ALL ON secrets, open_data TO app", dbname=APP_DB)


TABLE_ACCESS = """
[hooks.table_access]
enabled = true
tables = ["secrets", "pg_catalog.pg_authid"]
"""


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_table_access_blocks_every_mention_and_nothing_else(pg, proxy_factory, protocol, mode):
    proxy = proxy_factory(pgdog_text=_hooks_toml(pg, TABLE_ACCESS, pooler_mode=mode))
    with proxy.connect(**PROTOCOLS[protocol]) as conn:
        for sql in ("SELECT * FROM secrets",
                    "SELECT * FROM open_data o JOIN public.secrets s ON s.id = o.id",
                    "SELECT (SELECT count(*) FROM secrets) FROM open_data",
                    "WITH x AS (SELECT * FROM secrets) SELECT * FROM x",
                    "INSERT INTO open_data SELECT * FROM secrets",
                    "SELECT rolname FROM pg_authid"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as err:
                conn.execute(sql)
            assert 'secrets" is blocked' in str(err.value) or 'pg_authid" is blocked' in str(err.value)
        # The same connection goes on with everything else.
        assert conn.execute("SELECT count(*) FROM open_data").fetchone() == (2,)
        assert conn.execute("SELECT %s::int + 1", (41,)).fetchone() == (42,)
    assert pg.sql("SELECT count(*) FROM open_data", dbname=APP_DB) == "2"  # the INSERT never ran


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_blocked_inside_a_transaction_aborts_it_on_both_sides(pg, proxy_factory, protocol, mode):
    proxy = proxy_factory(pgdog_text=_hooks_toml(pg, TABLE_ACCESS, pooler_mode=mode))
    with proxy.connect(**PROTOCOLS[protocol]) as conn:
        conn.autocommit = False
        conn.execute("INSERT INTO open_data VALUES (100, 'in tx')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as blocked:
            conn.execute("SELECT * FROM secrets")
        # The server raised it for the proxy; how (a DO block) is not the client's business.
        assert blocked.value.diag.context is None
        assert blocked.value.diag.datatype_name is None
        assert "secrets" in blocked.value.diag.message_primary
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")  # the server agrees: the transaction is aborted
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM open_data WHERE id = 100").fetchone() == (0,)
        conn.commit()


def test_blocked_statement_in_a_multi_statement_batch(pg, proxy_factory):
    """psql sends `a; b` as one Query: refused whole, the rest of the session goes on."""
    proxy = proxy_factory(pgdog_text=_hooks_toml(pg, TABLE_ACCESS))
    with proxy.connect() as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.pgconn.exec_(b"INSERT INTO open_data VALUES (7, 'x'); SELECT * FROM secrets")
            raise psycopg.errors.InsufficientPrivilege(conn.pgconn.error_message.decode())
        assert conn.execute("SELECT count(*) FROM open_data WHERE id = 7").fetchone() == (0,)


INTERCEPT = """
[hooks.intercept]
enabled = true
[[hooks.intercept.queries]]
query = "select version()"
columns = [["version", "text"]]
rows = [["trio_pgdog on ${DATABASE} for ${USER}"]]
[[hooks.intercept.queries]]
query = "select 'pgdog_info', 1"
columns = [["name", "text"], ["n", "int4"]]
rows = [["a", "1"], ["b", "2"]]
"""


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_intercept_answers_without_a_server(pg, proxy_factory, protocol, mode):
    proxy = proxy_factory(pgdog_text=_hooks_toml(pg, INTERCEPT, pooler_mode="transaction"),
                          users=_users(mode))
    with proxy.connect(**PROTOCOLS[protocol]) as conn:
        for _ in range(3):  # again and again: prepared statements are reused
            assert conn.execute("SELECT  VERSION()").fetchall() == [("trio_pgdog on appdb for app",)]
            cur = conn.execute("select 'pgdog_info', 1")
            assert [d.name for d in cur.description] == ["name", "n"]
            assert cur.fetchall() == [("a", 1), ("b", 2)]
            assert cur.rowcount == 2
        # The proxy's server connections (one opened at login, for the server's parameters)
        # never ran a statement: pg_stat_activity shows each one's last query.
        assert [q for (q,) in proxy_backends(pg, proxy, "query")] in ([], [""])
        # Everything else still reaches PostgreSQL, on the same connection.
        assert conn.execute("SELECT current_user").fetchone() == ("app",)


def test_intercept_inside_a_transaction_keeps_its_status(pg, proxy_factory):
    proxy = proxy_factory(pgdog_text=_hooks_toml(pg, INTERCEPT))
    with proxy.connect(prepare_threshold=0) as conn:
        conn.autocommit = False
        conn.execute("INSERT INTO open_data VALUES (200, 'tx')")
        assert conn.execute("select version()").fetchone()[0].startswith("trio_pgdog")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM open_data WHERE id = 200").fetchone() == (0,)


def test_query_logger_writes_one_line_per_statement(pg, proxy_factory, tmp_path):
    log_path = tmp_path / "queries.jsonl"
    extra = f"""
[hooks.query_logger]
enabled = true
format = "json"
path = "{log_path}"
parameters = true
"""
    proxy = proxy_factory(pgdog_text=_hooks_toml(pg, extra))
    with proxy.connect() as conn:
        conn.execute("SELECT * FROM open_data ORDER BY id")
        conn.execute("SELECT %s::text", ("five",))
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1/0")
    with proxy.connect(cursor_factory=psycopg.ClientCursor) as conn:
        conn.execute("UPDATE open_data SET v = v WHERE id <= 2")
    lines = wait_for(lambda: _json_lines(log_path, 4), what="four log lines")
    by_sql = {line["sql"]: line for line in lines}
    select = by_sql["SELECT * FROM open_data ORDER BY id"]
    assert select["rows"] == 2 and select["sqlstate"] == "" and select["user"] == "app"
    assert select["database"] == APP_DB and select["host"] == f"127.0.0.1:{pg.port}"
    assert select["client"].startswith("127.0.0.1:") and select["duration_us"] > 0
    assert by_sql["SELECT $1::text"]["parameters"] == ["five"]
    assert by_sql["SELECT 1/0"]["sqlstate"] == "22012"
    assert by_sql["UPDATE open_data SET v = v WHERE id <= 2"]["rows"] == 2


def _json_lines(path, count):
    if not path.exists():
        return None
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return lines if len(lines) >= count else None


def test_prewarmer_runs_on_every_new_server_connection(pg, proxy_factory):
    extra = """
[hooks.prewarmer]
enabled = true
queries = ["SELECT set_config('pgdog.prewarmed', 'yes', false)"]
"""
    proxy = proxy_factory(pgdog_text=_hooks_toml(pg, extra), default_pool_size=2)
    conns = [proxy.connect() for _ in range(2)]
    try:
        with conns[0].transaction(), conns[1].transaction():  # two server connections
            for conn in conns:
                value = conn.execute("SELECT current_setting('pgdog.prewarmed', true)").fetchone()
                assert value == ("yes",)
    finally:
        for conn in conns:
            conn.close()


def test_failing_after_connect_statement_discards_the_connection(pg, proxy_factory):
    extra = """
[hooks.prewarmer]
enabled = true
queries = ["SELECT no_such_function()"]
"""
    proxy = proxy_factory(pgdog_text=_hooks_toml(pg, extra))
    # Login itself needs a server connection (for the server's parameters): it is refused.
    with pytest.raises(psycopg.OperationalError, match="after_connect statement failed"):
        proxy.connect()
    assert "no_such_function" in proxy.log and "connection discarded" in proxy.log
    assert proxy_backends(pg, proxy) == []


def _recorder_toml(path, **options) -> str:
    opts = ", ".join(f"{k} = {json.dumps(v)}" for k, v in options.items()
                     if not isinstance(v, dict))
    tables = "".join(f"\n[hooks.python.options.{k}]\n" + "\n".join(
        f"{json.dumps(a)} = {json.dumps(b)}" for a, b in v.items())
        for k, v in options.items() if isinstance(v, dict))
    return (f'[[hooks.python]]\nobject = "hookmods.recorder:Recorder"\n'
            f'options = {{ path = "{path}"{", " + opts if opts else ""} }}\n' if not tables else
            f'[[hooks.python]]\nobject = "hookmods.recorder:Recorder"\n'
            f'[hooks.python.options]\npath = "{path}"\n{opts.replace(", ", chr(10))}\n{tables}\n')


def _users(mode: str = "transaction") -> str:
    return (f'[[users]]\nname = "app"\ndatabase = "{APP_DB}"\npassword = "{PG_USERS["app"][0]}"\n'
            f'pooler_mode = "{mode}"\n')


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_python_hook_sees_events_in_order(pg, proxy_factory, tmp_path, protocol):
    events_path = tmp_path / "events.jsonl"
    proxy = proxy_factory(pgdog_text=_hooks_toml(pg, _recorder_toml(events_path)))
    with proxy.connect(application_name="hooktest", **PROTOCOLS[protocol]) as conn:
        conn.execute("SELECT id FROM open_data WHERE v = %s", ("p",))
    expected = ["pre_connect", "after_connect", "pre_query", "post_query"]
    if protocol == "prepared":  # prepared on its own first: shown once without parameters
        expected.insert(2, "pre_query")
    events = wait_for(lambda: [e for e in read_events(events_path)
                               if e["event"] != "pre_query" or "open_data" in e["sql"]]
                      if len(read_events(events_path)) >= len(expected) else None, what="events")
    assert [e["event"] for e in events] == expected
    assert events[0]["application_name"] == "hooktest" and events[0]["user"] == "app"
    assert events[1]["port"] == pg.port and events[1]["role"] == "primary"
    query = events[-2]
    assert query["tables"] == [[None, "open_data"]] and query["kind"] == "select"
    assert query["extended"] == (protocol != "simple")
    assert query["params"] == ([] if protocol == "simple" else ["p"])  # simple: inlined
    assert events[-1]["rows"] == 1 and events[-1]["sqlstate"] == ""
    assert events[-1]["params"] == query["params"]


def test_python_hook_rewrite_and_route(pg, proxy_factory, tmp_path):
    events_path = tmp_path / "events.jsonl"
    extra = _recorder_toml(events_path, rewrite={"pgdog_answer": "SELECT 42"})
    proxy = proxy_factory(pgdog_text=_hooks_toml(pg, extra))
    for kwargs in PROTOCOLS.values():
        with proxy.connect(**kwargs) as conn:
            assert conn.execute("SELECT 'pgdog_answer'").fetchone() == (42,)


def test_a_raising_hook_is_no_decision(pg, proxy_factory, tmp_path):
    extra = _recorder_toml(tmp_path / "events.jsonl", raise_on="open_data", block="secrets")
    proxy = proxy_factory(pgdog_text=_hooks_toml(pg, extra))
    for kwargs in PROTOCOLS.values():
        with proxy.connect(**kwargs) as conn:
            assert conn.execute("SELECT count(*) FROM open_data").fetchone() == (2,)
    assert "pre_query raised RuntimeError('recorder hook bug')" in proxy.log
    assert proxy.log.count("recorder hook bug") == 1  # logged once, not per statement


def test_a_nonsense_answer_becomes_an_error_for_that_client(pg, proxy_factory, tmp_path):
    extra = _recorder_toml(tmp_path / "events.jsonl", nonsense_on="nonsense")
    proxy = proxy_factory(pgdog_text=_hooks_toml(pg, extra))
    with proxy.connect() as conn:
        with pytest.raises(psycopg.errors.SystemError) as err:
            conn.execute("SELECT 'nonsense'")
        assert "invalid SQLSTATE" in str(err.value)
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_pre_connect_refusal(pg, proxy_factory, tmp_path):
    extra = _recorder_toml(tmp_path / "events.jsonl", refuse_application="badapp")
    proxy = proxy_factory(pgdog_text=_hooks_toml(pg, extra))
    with pytest.raises(psycopg.OperationalError, match="application badapp is not welcome"):
        proxy.connect(application_name="badapp")
    with proxy.connect(application_name="goodapp") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert "application badapp is not welcome" in proxy.log  # one line for the refusal


@pytest.mark.parametrize(("obj", "why"), [
    ("hookmods.sample_hook:NoSuchClass", "hookmods.sample_hook has no attribute 'NoSuchClass'"),
    ("hookmods.broken_import:Hook",
     "cannot import hookmods.broken_import: RuntimeError: broken on purpose"),
    ("hookmods.sample_hook:FailingInit", "FailingInit(**options) raised RuntimeError"),
])
def test_a_hook_that_cannot_load_stops_the_start(pg, proxy_factory, obj, why):
    """With a guard configured next to it, a proxy that started anyway would run half its
    configuration: it refuses to start, in one line naming the hook and why, exit status 2."""
    proxy = proxy_factory(wait=False, pgdog_text=_hooks_toml(
        pg, TABLE_ACCESS + f'\n[[hooks.python]]\nobject = "{obj}"\n'))
    assert proxy.proc.wait(timeout=20) == 2, proxy.log
    assert "Traceback" not in proxy.log and "listening on" not in proxy.log
    message = [line for line in proxy.log.splitlines() if line.startswith("trio_pgdog: ")]
    assert len(message) == 1, proxy.log
    assert message[0].startswith(f"trio_pgdog: [[hooks.python]] object {obj!r}: {why}")
    assert message[0].endswith("not starting without it (fix the entry in "
                               f"{proxy.workdir / 'pgdog.toml'} or remove it)")


def test_a_reload_that_would_lose_a_hook_keeps_the_running_configuration(pg, proxy_factory):
    proxy = proxy_factory(pgdog_text=_hooks_toml(pg, TABLE_ACCESS))
    config = proxy.workdir / "pgdog.toml"
    config.write_text(config.read_text().replace(TABLE_ACCESS, "")
                      + '\n[[hooks.python]]\nobject = "hookmods.sample_hook:NoSuchClass"\n')
    proxy.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload failed" in proxy.log, what="the reload to fail")
    assert ("reload failed, keeping the running configuration (hooks included): [[hooks.python]] "
            "object 'hookmods.sample_hook:NoSuchClass'") in proxy.log
    with proxy.connect() as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT count(*) FROM secrets")  # the guard is still on
    assert "configuration reloaded" not in proxy.log


@pytest.mark.parametrize("mode", MODES)
def test_reload_adds_and_removes_hooks(pg, proxy_factory, mode):
    proxy = proxy_factory(users=_users(mode))
    config = proxy.workdir / "pgdog.toml"
    base = config.read_text()
    with proxy.connect() as conn:
        assert conn.execute("SELECT count(*) FROM secrets").fetchone() == (1,)
        config.write_text(base + TABLE_ACCESS)
        proxy.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in proxy.log, what="reload")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM secrets")
        config.write_text(base)
        proxy.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: proxy.log.count("configuration reloaded") == 2, what="second reload")
        assert conn.execute("SELECT count(*) FROM secrets").fetchone() == (1,)


LOGGER_AND_BLOCK = """
[hooks.query_logger]
enabled = true
path = "queries.log"

[hooks.table_access]
enabled = true
tables = ["secrets"]
"""


@pytest.mark.parametrize("mode", MODES)
def test_copy_and_pipelines_pass_through_the_hook_path(pg, proxy_factory, mode):
    proxy = proxy_factory(pgdog_text=_hooks_toml(pg, LOGGER_AND_BLOCK), users=_users(mode))
    with proxy.connect() as conn:
        table = "open_data"
        with conn.transaction():
            with conn.cursor().copy(f"COPY {table} (id) FROM STDIN") as copy:
                for i in range(1000, 1100):
                    copy.write_row((i,))
            assert conn.execute(f"SELECT count(*) FROM {table} WHERE id >= 1000").fetchone() == (100,)
            conn.execute(f"DELETE FROM {table} WHERE id >= 1000")
        with conn.cursor().copy("COPY (SELECT id FROM open_data ORDER BY id) TO STDOUT") as copy:
            assert [row for row in copy.rows()] == [("1",), ("2",)]
        with conn.pipeline():
            cursors = [conn.execute("SELECT %s::int * 2", (i,)) for i in range(20)]
        assert [c.fetchone()[0] for c in cursors] == [i * 2 for i in range(20)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.pipeline():
            conn.execute("SELECT 1")
            conn.execute("SELECT * FROM secrets")  # psycopg raises at the pipeline's Sync
        assert conn.execute("SELECT 'after'").fetchone() == ("after",)
    lines = wait_for(lambda: (proxy.workdir / "queries.log").exists()
                     and (proxy.workdir / "queries.log").read_text().splitlines(), what="log")
    assert any("COPY" in line and "rows=100" in line for line in lines)
    assert any("sqlstate=42501" in line and "secrets" in line for line in lines)


@pytest.mark.parametrize("protocol", ["simple", "extended", "prepared"])
def test_pgbench_through_hooks_many_clients_few_servers(pg, proxy_factory, protocol):
    """Each client gets its own answers through the hook path under load."""
    proxy = proxy_factory(pgdog_text=_hooks_toml(pg, LOGGER_AND_BLOCK), default_pool_size=3)
    env = dict(os.environ, PGPASSWORD=PG_USERS["app"][0])
    done = subprocess.run(
        ["pgbench", "-n", "-h", "127.0.0.1", "-p", str(proxy.port), "-U", "app", "-c", "12", "-t", "40",
         "-M", protocol, "-f", "-", APP_DB],
        input="\\set id random(1, 2)\nSELECT v FROM open_data WHERE id = :id;\n",
        env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "number of transactions actually processed: 480/480" in done.stdout


def test_statements_prepared_before_a_reload_are_watched_after_it(pg, proxy_factory):
    proxy = proxy_factory()
    config = proxy.workdir / "pgdog.toml"
    with proxy.connect(prepare_threshold=0) as conn:
        assert conn.execute("SELECT v FROM secrets WHERE id = %s", (1,)).fetchone() == ("s",)
        config.write_text(config.read_text() + TABLE_ACCESS)
        proxy.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in proxy.log, what="reload")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # the same prepared statement
            conn.execute("SELECT v FROM secrets WHERE id = %s", (1,))


async def test_a_hook_answer_waits_for_the_answers_before_it(pg, proxy_factory):
    """A statement sent as it came is still running when an intercepted one arrives: the
    proxy's answer goes to the client after the server's, in the order they were asked."""
    from pgwire import Wire, query

    proxy = proxy_factory(pgdog_text=_hooks_toml(pg, INTERCEPT))
    async with await Wire.connect(proxy.port) as wire:
        await wire.login("app", APP_DB, PG_USERS["app"][0])
        await wire.send(query("SELECT 'first' FROM pg_sleep(0.3)"))
        await wire.send(query("select version()") + query("SELECT current_database()"))
        results = [await wire.read_result() for _ in range(3)]
    assert [r.rows for r in results] == [[[b"first"]], [[b"trio_pgdog on appdb for app"]],
                                         [[b"appdb"]]]
    assert [r.status for r in results] == [b"I", b"I", b"I"]


async def test_a_batch_without_sync_is_not_held_without_limit(pg, proxy_factory):
    """Extended-protocol messages beyond the hold limit are handled before their Sync."""
    from pgwire import Wire, message

    from trio_pgdog.session.units import HOLD_LIMIT

    proxy = proxy_factory(pgdog_text=_hooks_toml(pg, TABLE_ACCESS))
    value = b"x" * (1 << 20)
    bind = message(b"B", b"\x00\x00\x00\x00\x00\x01" + len(value).to_bytes(4, "big") + value
                   + b"\x00\x00")
    execute = message(b"E", b"\x00\x00\x00\x00\x00")
    async with await Wire.connect(proxy.port) as wire:
        await wire.login("app", APP_DB, PG_USERS["app"][0])
        await wire.send(message(b"P", b"\x00SELECT length($1::text)\x00\x00\x00"))
        count = HOLD_LIMIT // len(value) + 2
        for _ in range(count):
            await wire.send(bind + execute)

        def server_has_it() -> bool:
            return "length($1::text)" in pg.sql("SELECT string_agg(query, ' ') FROM pg_stat_activity",
                                                 dbname=APP_DB)

        # Before any Sync, PostgreSQL is already running the statements.
        await trio.to_thread.run_sync(lambda: wait_for(server_has_it, what="statements at the server"))
        await wire.send(message(b"S"))
        lengths = []
        while True:
            msg = await wire.read_message()
            assert msg is not None and msg.kind != b"E", msg
            if msg.kind == b"D":
                lengths.append(msg.body)
            if msg.kind == b"Z":
                break
    assert len(lengths) == count


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_table_access_blocks_copy(pg, proxy_factory, protocol):
    proxy = proxy_factory(pgdog_text=_hooks_toml(pg, TABLE_ACCESS))
    with proxy.connect(**PROTOCOLS[protocol]) as conn:
        for sql in ("COPY secrets TO STDOUT", "COPY (SELECT v FROM secrets) TO STDOUT",
                    "COPY secrets FROM STDIN"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.cursor().copy(sql):
                pass
        with conn.cursor().copy("COPY (SELECT id FROM open_data ORDER BY id) TO STDOUT") as copy:
            assert list(copy.rows()) == [("1",), ("2",)]


def test_hooks_apply_only_to_their_databases(pg, proxy_factory):
    other = TABLE_ACCESS.replace("enabled = true", 'enabled = true\ndatabases = ["otherdb"]')
    proxy = proxy_factory(pgdog_text=_hooks_toml(pg, other))
    with proxy.connect() as conn:  # appdb: not listed, so nothing is refused
        assert conn.execute("SELECT count(*) FROM secrets").fetchone() == (1,)
