"""The built-in hooks and the Python hook loader called directly, with real router facts:
no proxy and no server here."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path

import pytest

from trio_pgdog.config import ConfigError, load_config_text
from trio_pgdog.config.models import (
    InterceptHook,
    InterceptQuery,
    PrewarmerHook,
    PythonHook,
    QueryLoggerHook,
    TableAccessHook,
)
from trio_pgdog.hooks.api import Action, Decision, QueryDone, QueryInfo, ServerInfo
from trio_pgdog.hooks.builtin import (
    BUILTINS,
    Intercept,
    Prewarmer,
    QueryLogger,
    TableAccess,
    load_python_hook,
)
from trio_pgdog.hooks.builtin.query_logger import parameter_values
from trio_pgdog.hooks.builtin.table_access import parse_table_name
from trio_pgdog.hooks.errors import HookLoadError
from trio_pgdog.protocol.types import require_type_oid, type_oid
from trio_pgdog.router.classify import classify


def query(sql: str, *, user: str = "alice", database: str = "app") -> QueryInfo:
    return QueryInfo(sql=sql, facts=classify(sql), database=database, user=user,
                     client_addr="127.0.0.1:50000")


# --- table_access ------------------------------------------------------------


def table_access(*tables: str) -> TableAccess:
    return TableAccess(TableAccessHook(enabled=True, tables=tables))


def blocked_table(hook: TableAccess, sql: str) -> str | None:
    """The table named in the refusal, or None when the statement is allowed."""
    decision = hook.pre_query(query(sql))
    if decision is None:
        return None
    assert decision.action is Action.BLOCK
    assert decision.sqlstate == "42501"
    found = re.fullmatch(
        r'permission denied: table "(.+)" is blocked by trio_pgdog \(hooks\.table_access\)', decision.message
    )
    assert found, decision.message
    return found.group(1)


@pytest.mark.parametrize(
    ("sql", "table"),
    [
        ("SELECT * FROM secrets", "secrets"),
        ("select * from public.secrets", "public.secrets"),
        ("SELECT a.id FROM accounts a JOIN secrets s ON s.id = a.id", "secrets"),
        ("SELECT * FROM accounts WHERE id IN (SELECT id FROM secrets)", "secrets"),
        ("SELECT (SELECT count(*) FROM secrets)", "secrets"),
        ("WITH s AS (SELECT * FROM secrets) SELECT * FROM s", "secrets"),
        ("WITH x AS (SELECT 1) SELECT * FROM x, app.secrets", "app.secrets"),
        ("INSERT INTO audit SELECT * FROM secrets", "secrets"),
        ("INSERT INTO secrets VALUES (1)", "secrets"),
        ("UPDATE accounts SET n = (SELECT n FROM secrets LIMIT 1)", "secrets"),
        ("DELETE FROM accounts USING secrets WHERE true", "secrets"),
        ("COPY secrets TO STDOUT", "secrets"),
        ("COPY (SELECT * FROM secrets) TO STDOUT", "secrets"),
        ("COPY secrets FROM STDIN", "secrets"),
        ("TABLE secrets", "secrets"),
        ("EXPLAIN ANALYZE SELECT * FROM secrets", "secrets"),
        ("TRUNCATE secrets", "secrets"),
        ("SELECT 1; SELECT * FROM secrets", "secrets"),  # any statement of a simple Query
        ("SELECT * FROM SECRETS", "secrets"),  # unquoted: folded, like PostgreSQL does
    ],
)
def test_table_access_blocks_a_table_anywhere_in_the_statement(sql: str, table: str) -> None:
    assert blocked_table(table_access("secrets"), sql) == table


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM accounts",
        "SELECT * FROM secrets_archive",
        "SELECT secrets FROM accounts",  # a column, not a table
        "SELECT 'secrets'",
        "WITH secrets AS (SELECT 1) SELECT * FROM secrets",  # a CTE shadows the table
        'SELECT * FROM "Secrets"',  # quoted: a different table
        "BEGIN",
        "not even sql",
    ],
)
def test_table_access_allows_other_statements(sql: str) -> None:
    assert blocked_table(table_access("secrets"), sql) is None


def test_qualified_name_matches_its_schema_and_unqualified_references() -> None:
    hook = table_access("pg_catalog.pg_authid", "app.secrets")
    assert blocked_table(hook, "SELECT * FROM pg_catalog.pg_authid") == "pg_catalog.pg_authid"
    # search_path could resolve it to the listed schema: refused, to be safe.
    assert blocked_table(hook, "SELECT rolpassword FROM pg_authid") == "pg_authid"
    assert blocked_table(hook, "SELECT * FROM secrets") == "secrets"
    # Qualified with another schema: certainly another table.
    assert blocked_table(hook, "SELECT * FROM other.secrets") is None
    assert blocked_table(hook, "SELECT * FROM public.pg_authid") is None


def test_bare_name_matches_in_every_schema() -> None:
    hook = table_access("secrets")
    for sql in ("SELECT * FROM a.secrets", "SELECT * FROM b.secrets", "SELECT * FROM db.c.secrets"):
        assert blocked_table(hook, sql) is not None


def test_configured_names_are_folded_unless_quoted() -> None:
    hook = table_access("Secrets", '"MixedCase"', 'App."Quoted.Name"')
    assert blocked_table(hook, "SELECT * FROM secrets") == "secrets"
    assert blocked_table(hook, "SELECT * FROM SECRETS") == "secrets"
    assert blocked_table(hook, 'SELECT * FROM "MixedCase"') == "MixedCase"
    assert blocked_table(hook, "SELECT * FROM MixedCase") is None  # that is mixedcase
    assert blocked_table(hook, 'SELECT * FROM app."Quoted.Name"') == "app.Quoted.Name"
    assert blocked_table(hook, 'SELECT * FROM "App"."Quoted.Name"') is None


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("secrets", (None, "secrets")),
        ("  Public . Secrets ", ("public", "secrets")),
        ('"My ""Table"""', (None, 'My "Table"')),
        ('s."T"', ("s", "T")),
        ("ÄBC", (None, "Äbc")),  # PostgreSQL folds only ASCII letters in UTF-8
    ],
)
def test_parse_table_name(text: str, parsed: tuple[str | None, str]) -> None:
    assert parse_table_name(text) == parsed


@pytest.mark.parametrize("text", ["", "a.", ".a", "a.b.c", '"open', "a b"])
def test_bad_table_names_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"hooks\.table_access: table name"):
        table_access(text)


# --- intercept ---------------------------------------------------------------


def intercept(*queries: InterceptQuery) -> Intercept:
    return Intercept(InterceptHook(enabled=True, queries=queries))


VERSION = InterceptQuery(
    query="select version()",
    columns=(("version", "text"),),
    rows=(("trio_pgdog on ${DATABASE} for ${USER}",),),
)


@pytest.mark.parametrize(
    "sql",
    ["select version()", "SELECT VERSION()", "  SeLeCt\n\tversion ( ) ;", "/* hi */ select version()"],
)
def test_intercept_matches_the_normalized_statement(sql: str) -> None:
    decision = intercept(VERSION).pre_query(query(sql, user="bob", database="shop"))
    assert decision == Decision.intercept([("version", 25)], [["trio_pgdog on shop for bob"]])


@pytest.mark.parametrize(
    "sql",
    [
        "select version(), 1",
        "select pg_catalog.version()",
        "select current_user",
        "select version(); select 1",
        "selec version()",
        "",
    ],
)
def test_intercept_leaves_other_statements_alone(sql: str) -> None:
    assert intercept(VERSION).pre_query(query(sql)) is None


def test_intercept_ignores_literal_values_and_parameters() -> None:
    hook = intercept(InterceptQuery(query="select 1", columns=(("one", "int4"),), rows=(("1",),)))
    for sql in ("select 1", "SELECT 42", "select $1"):
        decision = hook.pre_query(query(sql))
        assert decision is not None and decision.rows == (("1",),)


def test_intercept_substitution() -> None:
    hook = intercept(
        InterceptQuery(
            query="select current_user, current_database()",
            columns=(("current_user", "name"), ("current_database", "name")),
            rows=(("${USER}", "${DATABASE}"), ("${USER}@${DATABASE}", "$USER {DATABASE} ${OTHER}")),
        )
    )
    decision = hook.pre_query(query("select current_user, current_database()", user="u${DATABASE}",
                                    database="d"))
    assert decision is not None
    assert decision.columns == (("current_user", 19), ("current_database", 19))
    # One pass: a user name that looks like a placeholder stays as it is.
    assert decision.rows == (("u${DATABASE}", "d"), ("u${DATABASE}@d", "$USER {DATABASE} ${OTHER}"))


def test_intercept_several_queries_and_no_rows() -> None:
    hook = intercept(
        VERSION,
        InterceptQuery(query="select * from feature_flags", columns=(("name", "text"), ("on", "bool"))),
    )
    decision = hook.pre_query(query("SELECT * FROM feature_flags"))
    assert decision == Decision.intercept([("name", 25), ("on", 16)], [])
    assert hook.pre_query(query("select version()")) is not None


def test_intercept_refuses_two_queries_with_the_same_fingerprint() -> None:
    with pytest.raises(ValueError, match="'select 2' matches the same statements as 'select 1'"):
        intercept(InterceptQuery(query="select 1"), InterceptQuery(query="select 2"))


@pytest.mark.parametrize(
    ("name", "oid"),
    [
        ("text", 25), ("TEXT", 25), ("varchar", 1043), ("character varying", 1043),
        ("Character  Varying(20)", 1043), ("char", 1042), ("bpchar", 1042), ("character(3)", 1042),
        ('"char"', 18), ("name", 19), ("bool", 16), ("boolean", 16), ("int2", 21), ("smallint", 21),
        ("int4", 23), ("integer", 23), ("int", 23), ("int8", 20), ("bigint", 20), ("float4", 700),
        ("real", 700), ("float8", 701), ("double precision", 701), ("numeric", 1700),
        ("decimal(10, 2)", 1700), ("oid", 26), ("json", 114), ("jsonb", 3802), ("uuid", 2950),
        ("bytea", 17), ("date", 1082), ("time", 1083), ("timestamp", 1114), ("timestamptz", 1184),
        ("timestamp with time zone", 1184), ("timestamp(3) without time zone", 1114),
        ("interval", 1186), ("inet", 869), ("pg_catalog.int4", 23),
        ("text[]", 1009), ("_text", 1009), ("integer[]", 1007), ("int4[][]", 1007),
        ("integer array", 1007), ("jsonb[]", 3807),
    ],
)
def test_type_names(name: str, oid: int) -> None:
    assert type_oid(name) == oid


@pytest.mark.parametrize("name", ["texty", "", "mytype", "void[]", "tex t"])
def test_unknown_type_names(name: str) -> None:
    assert type_oid(name) is None
    with pytest.raises(ValueError, match=r"unknown type .* such as text, varchar, integer"):
        require_type_oid(name)


def intercept_toml(query_sql: str, columns: str, rows: str) -> str:
    return (
        "[hooks.intercept]\nenabled = true\n\n"
        f"[[hooks.intercept.queries]]\nquery = {json.dumps(query_sql)}\ncolumns = {columns}\nrows = {rows}\n"
    )


def config_error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, None)
    return str(info.value)


def test_intercept_config_loads() -> None:
    config = load_config_text(intercept_toml("select version()", '[["version", "text"]]', '[["x"]]'), None)
    hook = BUILTINS["intercept"](config.hooks.intercept, None)
    assert hook.pre_query(query("SELECT version()")) == Decision.intercept([("version", 25)], [["x"]])


@pytest.mark.parametrize(
    ("query_sql", "columns", "rows", "expected"),
    [
        ("select 1", '[["n", "texty"]]', '[["1"]]',
         "line 6: [[hooks.intercept.queries]] #1 'columns': entry 1: unknown type 'texty' (use a built-in "
         "PostgreSQL type such as text, "),
        ("select 1", '[["n", "int"], ["m", "int"]]', '[["1", "2"], ["3"]]',
         "line 7: [[hooks.intercept.queries]] #1 'rows': row 2 has 1 cells but there are 2 columns, "
         "got ['3']"),
        ("select 1", '[["n", "int"]]', '[["1", "2"]]',
         "line 7: [[hooks.intercept.queries]] #1 'rows': row 1 has 2 cells but there are 1 columns"),
        ("selec 1", "[]", "[]",
         "line 5: [[hooks.intercept.queries]] #1 'query': 'selec 1' is not valid SQL: syntax error"),
        ("select 1; select 2", "[]", "[]",
         "line 5: [[hooks.intercept.queries]] #1 'query': 'select 1; select 2' must be exactly one "
         "statement, found 2"),
    ],
)
def test_bad_intercept_config_is_a_config_error(query_sql: str, columns: str, rows: str,
                                                expected: str) -> None:
    message = config_error(intercept_toml(query_sql, columns, rows))
    assert message.startswith(f"pgdog.toml: {expected}"), message
    assert "\n" not in message


# --- query_logger ------------------------------------------------------------


def done(sql: str = "SELECT 1", **changes: object) -> QueryDone:
    values: dict[str, object] = dict(
        sql=sql, database="app", user="alice", client_addr="127.0.0.1:50000", duration_us=1234,
        rows=1, sqlstate="", host="127.0.0.1:5432", role="primary", shard=0,
    )
    values.update(changes)
    return QueryDone(**values)  # type: ignore[arg-type]


TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d"


def logger(tmp_path: Path, **options: object) -> tuple[QueryLogger, Path]:
    hook = BUILTINS["query_logger"](QueryLoggerHook(enabled=True, path="queries.log", **options),
                                    str(tmp_path))
    assert isinstance(hook, QueryLogger)
    return hook, tmp_path / "queries.log"


def test_text_lines(tmp_path: Path) -> None:
    hook, path = logger(tmp_path)
    hook.post_query(done("SELECT 1"))
    hook.post_query(done("SELECT *\nFROM t\r\nWHERE a = 'x\\y'", duration_us=5, rows=0, sqlstate="42P01",
                         host="10.0.0.2:5432", role="replica"))
    hook.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    assert re.fullmatch(
        TIME + r" db=app user=alice client=127\.0\.0\.1:50000 duration=1\.234ms rows=1 sqlstate=- "
        r"host=127\.0\.0\.1:5432 sql=SELECT 1",
        lines[0],
    ), lines[0]
    # Newlines and backslashes are escaped: one statement, one line.
    assert lines[1].endswith(
        " duration=0.005ms rows=0 sqlstate=42P01 host=10.0.0.2:5432 "
        "sql=SELECT *\\nFROM t\\r\\nWHERE a = 'x\\\\y'"
    ), lines[1]


def test_json_lines(tmp_path: Path) -> None:
    hook, path = logger(tmp_path, format="json")
    hook.post_query(done("SELECT 1"))
    hook.post_query(done("SELECT\n'ü'", sqlstate="22012", rows=0, host="trio_pgdog", role=""))
    hook.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert re.fullmatch(TIME, first.pop("time"))
    assert first == {
        "database": "app", "user": "alice", "client": "127.0.0.1:50000", "duration_us": 1234, "rows": 1,
        "sqlstate": "", "host": "127.0.0.1:5432", "role": "primary", "sql": "SELECT 1",
    }
    assert (second["sql"], second["sqlstate"], second["host"]) == ("SELECT\n'ü'", "22012", "trio_pgdog")


def test_parameters_only_when_enabled(tmp_path: Path) -> None:
    params = dict(parameters=(b"42", None, b"\x00\x01", b"caf\xc3\xa9", b"\xff"),
                  parameter_formats=(0, 0, 1, 0, 0))
    expected = ["42", None, "\\x0001", "café", "\ufffd"]

    hook, path = logger(tmp_path, format="json")
    hook.post_query(done("SELECT $1", **params))
    hook.close()
    assert "parameters" not in json.loads(path.read_text())

    path.unlink()
    hook, path = logger(tmp_path, format="json", parameters=True)
    hook.post_query(done("SELECT $1", **params))
    hook.post_query(done("SELECT 1"))
    hook.close()
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert first["parameters"] == expected
    assert second["parameters"] == []

    path.unlink()
    hook, path = logger(tmp_path)
    hook.post_query(done("SELECT $1", **params))
    hook.close()
    assert "params=" not in path.read_text()

    path.unlink()
    hook, path = logger(tmp_path, parameters=True)
    hook.post_query(done("SELECT $1", **params))
    hook.close()
    line = path.read_text()
    assert line.endswith(' params=["42", null, "\\\\x0001", "café", "\ufffd"] sql=SELECT $1\n')


def test_parameter_formats_follow_bind_rules() -> None:
    values = (b"\x01", b"\x02")
    assert parameter_values(values, ()) == ["\x01", "\x02"]  # none: all text
    assert parameter_values(values, (1,)) == ["\\x01", "\\x02"]  # one: applies to all
    assert parameter_values(values, (0, 1)) == ["\x01", "\\x02"]


def test_logger_appends(tmp_path: Path) -> None:
    for _ in range(2):
        hook, path = logger(tmp_path)
        hook.post_query(done())
        hook.close()
    assert len(path.read_text().splitlines()) == 2


def test_relative_path_without_base_dir_is_under_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    hook = QueryLogger(QueryLoggerHook(enabled=True, path="logs.txt"))
    monkeypatch.chdir("/")
    hook.post_query(done())
    hook.close()
    assert hook.path == str(tmp_path / "logs.txt")
    assert (tmp_path / "logs.txt").read_text().count("\n") == 1


def test_default_is_standard_error(capsys: pytest.CaptureFixture[str]) -> None:
    hook = BUILTINS["query_logger"](QueryLoggerHook(enabled=True, format="json"), None)
    hook.post_query(done("SELECT 'to stderr'"))
    hook.close()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert json.loads(captured.err)["sql"] == "SELECT 'to stderr'"


def test_unwritable_path_does_not_raise(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    target = tmp_path / "missing-dir" / "queries.log"
    with caplog.at_level(logging.WARNING, logger="trio_pgdog.hooks.builtin.query_logger"):
        hook = QueryLogger(QueryLoggerHook(enabled=True, path=str(target)))
        for _ in range(3):
            hook.post_query(done())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"cannot write to {target}" in warnings[0].getMessage()
    # Once the directory exists, logging resumes.
    target.parent.mkdir()
    hook.post_query(done("SELECT 'back'"))
    hook.close()
    assert target.read_text().endswith("sql=SELECT 'back'\n")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_failing_writes_do_not_raise(caplog: pytest.LogCaptureFixture) -> None:
    hook = QueryLogger(QueryLoggerHook(enabled=True, path="/dev/full"))
    with caplog.at_level(logging.WARNING, logger="trio_pgdog.hooks.builtin.query_logger"):
        for _ in range(3):
            hook.post_query(done())
        hook.close()
    assert len([r for r in caplog.records if "No space left" in r.getMessage()]) == 1


def test_closed_logger_writes_nothing(tmp_path: Path) -> None:
    hook, path = logger(tmp_path)
    hook.close()
    hook.post_query(done())
    hook.close()
    assert path.read_text() == ""


# --- prewarmer ---------------------------------------------------------------


def test_prewarmer_returns_its_queries_for_every_connection() -> None:
    queries = ("SELECT pg_prewarm('pgbench_accounts')", "SET jit = off")
    hook = BUILTINS["prewarmer"](PrewarmerHook(enabled=True, queries=queries), None)
    assert isinstance(hook, Prewarmer)
    info = ServerInfo(database="app", user="app", host="127.0.0.1", port=5432, role="primary", shard=0)
    first = hook.after_connect(info)
    assert first == list(queries)
    first.clear()  # the caller's list is its own
    assert hook.after_connect(info) == list(queries)
    assert Prewarmer(PrewarmerHook()).after_connect(info) == []


# --- builtins table ----------------------------------------------------------


def test_builtins_build_each_hook_from_its_section() -> None:
    config = load_config_text(
        """
        [hooks.table_access]
        enabled = true
        tables = ["secrets"]

        [hooks.prewarmer]
        enabled = true
        queries = ["SELECT 1"]
        """.replace("        ", ""),
        None,
    )
    assert set(BUILTINS) == {"table_access", "intercept", "query_logger", "prewarmer"}
    hook = BUILTINS["table_access"](config.hooks.table_access, None)
    assert isinstance(hook, TableAccess)
    assert hook.pre_query(query("select * from secrets")) is not None
    assert BUILTINS["prewarmer"](config.hooks.prewarmer, "/etc").after_connect(None) == ["SELECT 1"]


# --- Python hooks --------------------------------------------------------------


@pytest.fixture
def hookmods(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    monkeypatch.delitem(sys.modules, "hookmods.broken_import", raising=False)


def test_python_hook_is_instantiated_with_its_options(hookmods: None) -> None:
    hook = load_python_hook(PythonHook(object="hookmods.sample_hook:SampleHook",
                                       options={"word": "DROP", "sqlstate": "P0001"}))
    decision = hook.pre_query(query("DROP TABLE x"))  # type: ignore[attr-defined]
    assert decision == Decision.block("'DROP' is not allowed here", "P0001")
    assert hook.pre_query(query("SELECT 1")) is None  # type: ignore[attr-defined]


def test_python_hook_forms(hookmods: None) -> None:
    nested = load_python_hook(PythonHook(object="hookmods.sample_hook:Nested.Inner"))
    assert type(nested).__name__ == "Inner"
    made = load_python_hook(PythonHook(object="hookmods.sample_hook:make_hook", options={"word": "x"}))
    assert made.word == "x"  # type: ignore[attr-defined]
    ready = load_python_hook(PythonHook(object=" hookmods.sample_hook : ready "))
    assert ready.word == "ready-made"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("spec", "options", "expected"),
    [
        ("hookmods.sample_hook", {}, 'must be "package.module:Class"'),
        ("hookmods.sample_hook:", {}, 'must be "package.module:Class"'),
        (":SampleHook", {}, 'must be "package.module:Class"'),
        ("hookmods.no_such_module:Hook", {}, "cannot import hookmods.no_such_module: "
         "ModuleNotFoundError: No module named 'hookmods.no_such_module'"),
        ("hookmods.broken_import:Hook", {}, "cannot import hookmods.broken_import: "
         "RuntimeError: broken on purpose"),
        ("hookmods.sample_hook:Missing", {}, "hookmods.sample_hook has no attribute 'Missing'"),
        ("hookmods.sample_hook:Nested.Missing", {},
         "hookmods.sample_hook.Nested has no attribute 'Missing'"),
        ("hookmods.sample_hook:SampleHook", {"colour": "red"},
         "SampleHook(**options) raised TypeError: SampleHook.__init__() got an unexpected keyword "
         "argument 'colour'"),
        ("hookmods.sample_hook:FailingInit", {},
         "FailingInit(**options) raised RuntimeError: no database second line"),
        ("hookmods.sample_hook:NotAHook", {},
         "NotAHook object has none of the hook methods pre_connect, after_connect, pre_query, post_query"),
        ("hookmods.sample_hook:ready", {"word": "x"},
         "ready is a SampleHook, not a class, so it takes no options"),
    ],
)
def test_python_hook_errors(hookmods: None, spec: str, options: dict[str, object], expected: str) -> None:
    with pytest.raises(HookLoadError) as info:
        load_python_hook(PythonHook(object=spec, options=options))
    message = str(info.value)
    assert message == f"[[hooks.python]] object {spec!r}: {expected}"
    assert "\n" not in message


def test_python_hook_from_config(hookmods: None) -> None:
    config = load_config_text(
        '[[hooks.python]]\nobject = "hookmods.sample_hook:SampleHook"\n\n'
        '[hooks.python.options]\nword = "secret"\n',
        None,
    )
    (entry,) = config.hooks.python
    hook = load_python_hook(entry)
    assert hook.pre_query(query("SELECT 'secret'")) is not None  # type: ignore[attr-defined]


# --- docs/hooks.md -------------------------------------------------------------

DOCS = Path(__file__).parent.parent / "docs" / "hooks.md"


def test_every_toml_example_in_the_guide_loads() -> None:
    blocks = re.findall(r"```toml\n(.*?)```", DOCS.read_text(), re.S)
    assert len(blocks) >= 6
    for block in blocks:
        config = load_config_text(block, None)
        assert config.hook_order, block
    # The intercept example answers as documented.
    (example,) = [b for b in blocks if "[hooks.intercept]" in b]
    hook = BUILTINS["intercept"](load_config_text(example, None).hooks.intercept, None)
    decision = hook.pre_query(query("SELECT  Version()", user="bob", database="shop"))
    assert decision == Decision.intercept([("version", 25)], [["trio_pgdog on shop for bob"]])


def test_the_guides_python_hook_works() -> None:
    (source,) = [b for b in re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
                 if b.startswith("# mycompany/hooks.py")]
    namespace: dict[str, object] = {}
    exec(compile(source, str(DOCS), "exec"), namespace)
    hook = namespace["ReadOnlyReports"](user="reporting")  # type: ignore[operator]
    assert hook.pre_query(query("UPDATE t SET a = 1", user="reporting")).action is Action.BLOCK
    assert hook.pre_query(query("SELECT * FROM t", user="reporting")) == Decision.route(role="replica")
    assert hook.pre_query(query("BEGIN", user="reporting")) is None
    assert hook.pre_query(query("UPDATE t SET a = 1", user="app")) is None


@pytest.mark.parametrize("sql", ['SELECT * FROM U&"\\0073ecrets"', "SELECT * FROM SECRETS",
                                 'SELECT * FROM "secrets"', "select * from public . secrets"])
def test_table_access_text_shortcut_never_misses_a_reference(sql: str) -> None:
    hook = TableAccess(TableAccessHook(enabled=True, tables=("secrets",)))
    decision = hook.pre_query(QueryInfo(sql=sql, database="db", user="u", client_addr="c"))
    assert decision is not None and decision.sqlstate == "42501"


def test_table_access_text_shortcut_skips_the_parse() -> None:
    hook = TableAccess(TableAccessHook(enabled=True, tables=("secrets",)))

    def no_parse(_sql: str):
        raise AssertionError("parsed a statement that cannot mention the table")

    info = QueryInfo(sql="SELECT abalance FROM pgbench_accounts WHERE aid = 7", database="db",
                     user="u", client_addr="c", lookup=no_parse)
    assert hook.pre_query(info) is None
