"""Native plugins (trio_pgdog/hooks/native.py) at the unit level: the header against the ctypes
mirrors, loading and refusing, every event's marshalling, answers that make no sense, the
example and first-party plugins, and `check-plugin`. No PostgreSQL needed.

The plugins are built with gcc into a temporary directory: the examples and first-party
plugins through their Makefiles, the test plugins (tests/plugins/*.c) directly.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from plugin_build import CC, HEADER, INCLUDE, ROOT, TEST_PLUGINS, compile_plugin, run

from trio_pgdog import speedups
from trio_pgdog.config.models import Plugin
from trio_pgdog.hooks import native, native_abi
from trio_pgdog.hooks.api import (
    ALL_SHARDS,
    Action,
    ConnectInfo,
    Decision,
    QueryDone,
    QueryInfo,
    ServerInfo,
)
from trio_pgdog.hooks.errors import HookLoadError
from trio_pgdog.hooks.native import NativeHook, load_plugin
from trio_pgdog.router.classify import classify

LOGGER = "trio_pgdog.hooks.native"

pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler")


@pytest.fixture(scope="module")
def libs(tmp_path_factory) -> Path:
    """Every C plugin, built: lib<name>.so for tests/plugins/<name>.c, libshard_comment.so
    (examples/plugins/c) and libprimary_only_tables.so (make -C plugins)."""
    out = tmp_path_factory.mktemp("plugins")
    for source in sorted(TEST_PLUGINS.glob("*.c")):
        compile_plugin(source, out / f"lib{source.stem}.so")
    run("make", "-s", "-C", ROOT / "examples" / "plugins" / "c", f"OUT={out}")
    run("make", "-s", "-C", ROOT / "plugins", f"OUT={out}")
    return out


@pytest.fixture(scope="module")
def rust_lib(tmp_path_factory) -> Path:
    if shutil.which("cargo") is None:
        pytest.skip("no cargo")
    target = tmp_path_factory.mktemp("rust-target")
    run("cargo", "build", "--offline", "--release", "--quiet", "--target-dir", target,
        cwd=ROOT / "examples" / "plugins" / "rust")
    return target / "release" / "libshard_comment.so"


@pytest.fixture(params=["direct", "ctypes"])
def answers(libs, request, monkeypatch) -> NativeHook:
    """libanswers.so, its pgdog_route_query called through _speedups ("direct") or ctypes."""
    if request.param == "direct" and speedups.c is None:
        pytest.skip(f"trio_pgdog._speedups is {speedups.status()}")
    if request.param == "ctypes":
        monkeypatch.setattr(speedups, "c", None)
    hook = load_plugin(Plugin(name=str(libs / "libanswers.so"), config="answers.conf"))
    assert hook is not None
    assert (hook._direct is not None) == (request.param == "direct")
    yield hook
    hook.close()


class PluginState:
    """Reads the counters and recordings tests/plugins/answers.c exports (the same mapping
    the hook uses: dlopen returns the loaded library)."""

    def __init__(self, path: Path):
        self.lib = ctypes.CDLL(str(path))
        for name in ("answers_config", "answers_post_query", "answers_pre_connect",
                     "answers_after_connect"):
            getattr(self.lib, name).restype = ctypes.c_char_p

    def counter(self, name: str) -> int:
        return ctypes.c_int.in_dll(self.lib, f"answers_{name}").value

    def text(self, name: str) -> str:
        return getattr(self.lib, f"answers_{name}")().decode()


@pytest.fixture
def state(libs) -> PluginState:
    return PluginState(libs / "libanswers.so")


def query(sql: str, **kw) -> QueryInfo:
    kw.setdefault("database", "appdb")
    kw.setdefault("user", "app")
    return QueryInfo(sql=sql, facts=classify(sql), client_addr="127.0.0.1:5000", **kw)


def native_records(caplog, level: int = logging.ERROR) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


# --- the header --------------------------------------------------------------------------

MIRRORS = {
    "PgdogStr": native_abi.PgdogStr,
    "PgdogParameter": native_abi.PgdogParameterIn,
    "PgdogInput": native_abi.PgdogInputNested,
    "PgdogColumn": native_abi.PgdogColumn,
    "PgdogError": native_abi.PgdogError,
    "PgdogIntercept": native_abi.PgdogIntercept,
    "PgdogOutput": native_abi.PgdogOutput,
    "PgdogConnect": native_abi.PgdogConnectIn,
    "PgdogServer": native_abi.PgdogServerIn,
    "PgdogQueryDone": native_abi.PgdogQueryDoneIn,
}


def test_ctypes_mirrors_match_the_header(tmp_path):
    """sizeof and every field's offset and size, as gcc sees the header, equal the ctypes
    structs'."""
    lines = ['#include <stdio.h>', '#include "pgdog_plugin.h"', "int main(void) {"]
    expected = []
    for cname, cls in MIRRORS.items():
        lines.append(f'printf("{cname} %zu\\n", sizeof({cname}));')
        expected.append(f"{cname} {ctypes.sizeof(cls)}")
        for field, *_ in cls._fields_:
            lines.append(f'printf("{cname}.{field} %zu %zu\\n", offsetof({cname}, {field}), '
                         f'sizeof((({cname} *)0)->{field}));')
            descr = getattr(cls, field)
            expected.append(f"{cname}.{field} {descr.offset} {descr.size}")
    lines += ["return 0;", "}"]
    source = tmp_path / "layout.c"
    source.write_text("\n".join(lines) + "\n")
    run(CC, "-std=c99", "-Wall", "-Werror", f"-I{INCLUDE}", "-o", tmp_path / "layout", source)
    assert run(tmp_path / "layout").stdout.split("\n")[:-1] == expected


def test_header_constants_match_the_adapter():
    text = HEADER.read_text()

    def define(name: str) -> int:
        m = re.search(rf"#define {name}\s+\(?(-?\d+)\)?", text)
        assert m, name
        return int(m.group(1))

    assert define("PGDOG_PLUGIN_ABI_VERSION") == native.ABI_VERSION == 1
    for action in Action:
        name = {"ALLOW": "NO_DECISION", "ROUTE": "FORWARD"}.get(action.name, action.name)
        assert define(f"PGDOG_{name}") == action.value
    assert define("PGDOG_SHARD_UNKNOWN") == native_abi.SHARD_UNKNOWN == -2
    assert define("PGDOG_SHARD_ALL") == native_abi.SHARD_ALL == ALL_SHARDS == -1
    assert (define("PGDOG_ROLE_UNKNOWN"), define("PGDOG_ROLE_PRIMARY"), define("PGDOG_ROLE_REPLICA")) \
        == (0, 1, 2)
    includes = re.findall(r"#include\s+<([^>]+)>", text)
    assert sorted(includes) == ["stddef.h", "stdint.h"]


@pytest.mark.parametrize("flags", [["-x", "c", "-std=c99", "-pedantic"], ["-x", "c", "-std=c11"],
                                   ["-x", "c++", "-std=c++11"]])
def test_header_compiles_cleanly(tmp_path, flags):
    source = tmp_path / "t.c"
    source.write_text('#include "pgdog_plugin.h"\nPGDOG_PLUGIN_DECLARE()\n'
                      "PgdogOutput pgdog_route_query(PgdogInput in) {\n"
                      "    PgdogOutput out = PGDOG_OUTPUT_INIT;\n    (void)in;\n    return out;\n}\n"
                      "int pgdog_wants_ast = 1;\n")
    compiler = shutil.which("g++") if "c++" in flags else CC
    if compiler is None:
        pytest.skip("no C++ compiler")
    run(compiler, *flags, "-Wall", "-Wextra", "-Werror", "-fPIC", "-shared", f"-I{INCLUDE}",
        "-o", tmp_path / "t.so", source)


# --- loading -----------------------------------------------------------------------------


def test_load_logs_one_line_with_the_events(libs, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    path = libs / "libanswers.so"
    hook = load_plugin(Plugin(name=str(path)))
    assert isinstance(hook, NativeHook)
    try:
        assert hook.path == str(path)
        assert hook.name == str(path)
        assert hook.abi_version == 1
        assert hook.events == ("pre_connect", "after_connect", "pre_query", "post_query")
        assert hook.wants_ast
        assert native_records(caplog, logging.INFO) == [
            f"plugin {str(path)!r} loaded from {path} (ABI version 1): events pre_connect, "
            "after_connect, pre_query, post_query; wants the AST"]
    finally:
        hook.close()


def test_only_the_implemented_events_are_methods(libs):
    hook = load_plugin(Plugin(name=str(libs / "libnoop.so")))
    assert hook.events == ("pre_query",)
    assert hasattr(hook, "pre_query") and hasattr(hook, "close")
    for event in ("pre_connect", "after_connect", "post_query"):
        assert not hasattr(hook, event)
    assert not hook.wants_ast
    hook.close()


def test_relative_path_is_taken_from_base_dir(libs, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    hook = load_plugin(Plugin(name="libnoop.so"), base_dir=str(libs))
    assert hook is not None and hook.path == str(libs / "libnoop.so")
    hook.close()
    hook = load_plugin(Plugin(name="./sub/../libnoop.so"), base_dir=str(libs))
    assert hook is not None
    hook.close()


def test_relative_path_defaults_to_the_working_directory(libs, monkeypatch):
    monkeypatch.chdir(libs)
    hook = load_plugin(Plugin(name="libnoop.so"))
    assert hook is not None and hook.path == str(libs / "libnoop.so")
    hook.close()


def test_a_bare_name_is_found_through_ld_library_path(libs):
    """`name = "shard_comment"` means libshard_comment.so on the library path; the dynamic
    loader reads LD_LIBRARY_PATH when the process starts, so this runs in a new one."""
    code = ("from trio_pgdog.config.models import Plugin\n"
            "from trio_pgdog.hooks.native import load_plugin\n"
            "h = load_plugin(Plugin(name='shard_comment'))\n"
            "print(h.path, h.events)\n")
    env = dict(os.environ, LD_LIBRARY_PATH=str(libs))
    out = run(sys.executable, "-c", code, env=env, cwd=ROOT)
    assert out.stdout.strip() == f"{libs / 'libshard_comment.so'} ('pre_query',)"


def test_configure_gets_the_config_value_as_written(libs, state):
    hook = load_plugin(Plugin(name=str(libs / "libanswers.so"), config="relative/dir/x.toml"))
    assert state.text("config") == "relative/dir/x.toml"
    hook.close()
    hook = load_plugin(Plugin(name=str(libs / "libanswers.so")))
    assert state.text("config") == "(null) 0"
    hook.close()


def test_init_once_per_load_and_fini_once_per_close(libs, state):
    inits, finis = state.counter("init_calls"), state.counter("fini_calls")
    hook = load_plugin(Plugin(name=str(libs / "libanswers.so")))
    assert state.counter("init_calls") == inits + 1
    assert state.counter("fini_calls") == finis
    hook.close()
    hook.close()
    assert state.counter("fini_calls") == finis + 1
    # A closed hook no longer calls into the plugin.
    calls = state.counter("route_calls")
    assert hook.pre_query(query("intercept")) is None
    assert state.counter("route_calls") == calls


def _refusal_cases(libs: Path, tmp: Path) -> list[tuple[str, str | None, str]]:
    text_so = tmp / "x.so"
    text_so.write_text("this is not a library\n")
    return [
        (str(tmp / "missing.so"), None, f"plugin '{tmp / 'missing.so'}' refused: no such file: "
                                        f"{tmp / 'missing.so'}"),
        ("no_such_plugin_anywhere", None,
         "plugin 'no_such_plugin_anywhere' refused: libno_such_plugin_anywhere.so not found in "
         "LD_LIBRARY_PATH or the system library directories"),
        (str(text_so), None, f"plugin '{text_so}' refused: {text_so}: not a loadable shared library ("),
        (str(libs / "libno_abi.so"), None,
         f"refused: {libs / 'libno_abi.so'}: no pgdog_plugin_abi_version function"),
        (str(libs / "libwrong_abi.so"), None,
         f"refused: {libs / 'libwrong_abi.so'}: built for plugin ABI version 2, this proxy speaks "
         "version 1"),
        (str(libs / "libabi_only.so"), None,
         f"refused: {libs / 'libabi_only.so'}: exports no event function"),
        (str(libs / "libconfigure_fails.so"), str(tmp / "marker"),
         f"refused: {libs / 'libconfigure_fails.so'}: pgdog_configure('{tmp / 'marker'}') returned 3"),
    ]


@pytest.mark.parametrize("case", range(7))
def test_refusals_raise_one_line_naming_the_plugin(libs, tmp_path, caplog, case):
    caplog.set_level(logging.INFO, logger=LOGGER)
    name, config, expected = _refusal_cases(libs, tmp_path)[case]
    with pytest.raises(HookLoadError) as refused:
        load_plugin(Plugin(name=name, config=config))
    assert expected in str(refused.value)
    assert "\n" not in str(refused.value)
    assert native_records(caplog, logging.INFO) == []  # no "loaded" line


@pytest.mark.parametrize("name", ["README.md", "notes.txt", "sub/dir"])
def test_a_name_with_a_dot_or_slash_is_a_path(tmp_path, name):
    """Not libREADME.md.so on the library path: "no such file", naming what was given."""
    with pytest.raises(HookLoadError) as refused:
        load_plugin(Plugin(name=name), base_dir=str(tmp_path))
    assert str(refused.value) == (f"plugin {name!r} refused: no such file: {name} "
                                  f"({tmp_path / name})")


def test_refused_configure_still_gets_fini(libs, tmp_path):
    marker = tmp_path / "marker"
    with pytest.raises(HookLoadError):
        load_plugin(Plugin(name=str(libs / "libconfigure_fails.so"), config=str(marker)))
    assert (tmp_path / "marker.fini").exists()


# --- pre_query ---------------------------------------------------------------------------


@pytest.mark.parametrize(("sql", "expected"), [
    ("select 1", None),
    ("forward 1 1", Decision.route(shard=1, role="primary")),
    ("forward 0 2", Decision.route(shard=0, role="replica")),
    ("forward -1 0", Decision.route(shard=ALL_SHARDS)),
    ("forward -2 0", Decision.route()),
    ("forward -2 1", Decision.route(role="primary")),
    ("block 42P01 no such thing", Decision.block("no such thing", sqlstate="42P01")),
    ("intercept", Decision.intercept([("id", 23), ("name", 25)], [("1", "one"), ("2", None)])),
    ("intercept_no_rows", Decision.intercept([("x", 25)], [])),
    ("rewrite SELECT 2", Decision.rewrite("SELECT 2")),
])
def test_pre_query_answers(answers, sql, expected, caplog):
    assert answers.pre_query(query(sql, shards=2)) == expected
    assert native_records(caplog) == []
    assert answers.invalid_answers == 0


def test_block_defaults_name_the_plugin(answers):
    decision = answers.pre_query(query("block - "))
    assert decision == Decision.block(f"blocked by plugin {answers.name}", sqlstate="42501")


def test_output_free_gets_every_output(answers, state):
    frees = state.counter("free_calls")
    answers.pre_query(query("select 1"))
    assert state.counter("last_freed_decision") == 0
    answers.pre_query(query("intercept"))
    assert state.counter("last_freed_decision") == 3
    answers.pre_query(query("decision 77"))   # invalid, freed all the same
    assert state.counter("last_freed_decision") == 77
    assert state.counter("free_calls") == frees + 3


@pytest.mark.parametrize(("sql", "what"), [
    ("decision 9", "unknown decision 9"),
    ("decision -1", "unknown decision -1"),
    ("forward 2 0", "shard 2 out of range (-2 unknown, -1 all, 0..1)"),
    ("forward -3 0", "shard -3 out of range"),
    ("forward 0 3", "role 3 is not one of 0 (unknown), 1 (primary), 2 (replica)"),
    ("block 4250a nope", "invalid SQLSTATE '4250a'"),
    ("block 4250 nope", "invalid SQLSTATE '4250'"),
    ("block_null_message", "error.message is NULL with length 10"),
    ("intercept_null_columns", "INTERCEPT with num_columns 2 and columns NULL"),
    ("intercept_null_cells", "INTERCEPT with 1 rows of 1 columns and cells NULL"),
    ("intercept_bad_utf8", "intercept cell (row 0, column 0) is not UTF-8"),
    ("rewrite_empty", "REWRITE with an empty SQL text"),
])
def test_answers_that_make_no_sense_become_an_error(answers, caplog, sql, what):
    decision = answers.pre_query(query(sql, shards=2))
    assert decision.action == Action.BLOCK
    assert decision.sqlstate == "58000"
    assert decision.message.startswith(f"plugin {answers.name}: {what}")
    errors = native_records(caplog)
    assert len(errors) == 1
    assert f"invalid answer from pgdog_route_query: {what}" in errors[0]
    assert answers.invalid_answers == 1


def echo(hook: NativeHook, info: QueryInfo) -> dict[str, str]:
    decision = hook.pre_query(info)
    assert decision.action == Action.INTERCEPT
    return dict(zip([c[0] for c in decision.columns], decision.rows[0], strict=True))


def test_pre_query_input(answers):
    seen = echo(answers, query("echo", database="shop", user="alice", shards=4, has_primary=True,
                               has_replicas=True, in_transaction=True))
    assert seen == {"query": "echo", "database": "shop", "user": "alice", "shards": "4",
                    "flags": "primary=1 replicas=1 tx=1", "params": "", "ast": ""}
    # The database and user follow the statement (the adapter caches them between calls).
    seen = echo(answers, query("echo", database="other", user="bob", has_primary=False))
    assert (seen["database"], seen["user"], seen["shards"], seen["flags"]) == \
        ("other", "bob", "1", "primary=0 replicas=0 tx=0")


def test_pre_query_parameters(answers):
    info = query("echo", parameters=(b"42", None, b"\x00\x01", b""), parameter_formats=(0, 0, 1, 0),
                 extended=True)
    assert echo(answers, info)["params"] == "0:3432,NULL,1:0001,0:"
    # Bind's shorthand: one format code for every parameter, or none for all text.
    assert echo(answers, query("echo", parameters=(b"a", b"b"), parameter_formats=(1,)))["params"] \
        == "1:61,1:62"
    assert echo(answers, query("echo", parameters=(b"a",)))["params"] == "0:61"
    # and none at all on the next statement
    assert echo(answers, query("echo"))["params"] == ""
    # More values than the direct call keeps on its stack.
    many = tuple(str(i).encode() for i in range(40))
    assert echo(answers, query("echo", parameters=many))["params"] == \
        ",".join(f"0:{v.hex()}" for v in many)


def test_ast_json_for_plugins_that_want_it(answers):
    seen = echo(answers, query("/* echo */ SELECT 1"))
    assert seen["ast"].startswith('{"version":')
    assert '"stmts":[{"stmt":{"SelectStmt"' in seen["ast"]
    assert echo(answers, query("echo"))["ast"] == ""   # does not parse


def test_ast_cache_is_bounded():
    for i in range(native._AST_CACHE_SIZE + 50):
        native._ast_json(f"SELECT {i}")
    assert len(native._AST_CACHE) == native._AST_CACHE_SIZE
    assert native._ast_json("SELECT 1 +") == b""


# --- pre_connect, after_connect, post_query -----------------------------------------------


def connect(user: str) -> ConnectInfo:
    return ConnectInfo(user=user, database="appdb", application_name="psql", client_addr="10.0.0.1:4000")


def test_pre_connect(answers, state, caplog):
    assert answers.pre_connect(connect("alice")) is None
    assert state.text("pre_connect") == "alice|appdb|psql|10.0.0.1:4000"
    assert answers.pre_connect(connect("blocked")) == \
        Decision.block(f"blocked by plugin {answers.name}", sqlstate="28000")
    assert answers.pre_connect(connect("blocked_msg")) == Decision.block("go away", sqlstate="28P01")
    assert native_records(caplog) == []
    bad = answers.pre_connect(connect("bad_sqlstate"))
    assert (bad.action, bad.sqlstate) == (Action.BLOCK, "58000")
    assert "invalid SQLSTATE '28p01'" in bad.message
    garbage = answers.pre_connect(connect("garbage"))
    assert (garbage.action, garbage.sqlstate) == (Action.BLOCK, "58000")
    assert garbage.message == f"plugin {answers.name}: unknown decision 42"
    assert len(native_records(caplog)) == 2


def server(database: str, role: str = "replica") -> ServerInfo:
    return ServerInfo(database=database, user="app", host="10.0.0.2", port=5433, role=role, shard=1)


def test_after_connect(answers, state, caplog):
    assert answers.after_connect(server("appdb")) == ["SET application_name = 'from_plugin'"]
    assert state.text("after_connect") == "appdb|10.0.0.2|5433|2|1"
    assert answers.after_connect(server("none", role="primary")) == []
    assert state.text("after_connect") == "none|10.0.0.2|5433|1|1"
    assert native_records(caplog) == []
    assert answers.after_connect(server("null")) == []
    errors = native_records(caplog)
    assert len(errors) == 1
    assert "invalid answer from pgdog_after_connect: the SQL returned by pgdog_after_connect is " \
           "NULL with length 5; no SQL is run" in errors[0]


def test_post_query(answers, state):
    done = QueryDone(sql="SELECT * FROM t", database="appdb", user="app", client_addr="1.2.3.4:5",
                     duration_us=1234, rows=5, sqlstate="42P01", host="10.0.0.2:5432", role="primary",
                     shard=1)
    assert answers.post_query(done) is None
    assert state.text("post_query") == "SELECT * FROM t|appdb|app|1234|5|42P01|1|1"
    answers.post_query(QueryDone(sql="SELECT 1", database="appdb", user="app", client_addr="x",
                                 duration_us=7, rows=1, sqlstate="", host="trio_pgdog", role="",
                                 shard=0))
    assert state.text("post_query") == "SELECT 1|appdb|app|7|1||0|0"


# --- the examples and first-party plugins -------------------------------------------------


@pytest.fixture(params=["c", "rust"])
def shard_comment(request, libs) -> NativeHook:
    path = libs / "libshard_comment.so" if request.param == "c" else request.getfixturevalue("rust_lib")
    hook = load_plugin(Plugin(name=str(path)))
    assert hook is not None and hook.events == ("pre_query",)
    yield hook
    hook.close()


@pytest.mark.parametrize(("sql", "expected"), [
    ("SELECT * FROM users WHERE id = 1", None),
    ("/* shard: 1 */ SELECT * FROM users", Decision.route(shard=1)),
    ("SELECT 1 /*shard:0*/", Decision.route(shard=0)),
    ("/* SHARD :  2  */ UPDATE users SET a = 1", Decision.route(shard=2)),
    ("/* shard: x */ SELECT 1", None),
    ("/* shard: 7 */ SELECT 1", Decision.block("shard 7 does not exist (the database has 3)",
                                               sqlstate="22023")),
    ("DROP TABLE users", Decision.block("DROP TABLE is not allowed through this proxy")),
    ("drop\n   table if exists users", Decision.block("DROP TABLE is not allowed through this proxy")),
    ("SELECT 1; Drop Table users", Decision.block("DROP TABLE is not allowed through this proxy")),
    ("DROP TABLESPACE ts", None),
    ("DROP INDEX i", None),
    ("SELECT backdrop table FROM t", None),
])
def test_shard_comment_examples(shard_comment, sql, expected):
    assert shard_comment.pre_query(query(sql, shards=3)) == expected


@pytest.fixture
def tables_file(tmp_path) -> Path:
    path = tmp_path / "tables.txt"
    path.write_text("# tables whose readers need fresh data\naccounts\n\n  billing.invoices   # paid?\n"
                    'odd"name\n')
    return path


@pytest.mark.parametrize(("sql", "primary"), [
    ("SELECT * FROM accounts WHERE id = 1", True),
    ("SELECT * FROM public.accounts", True),
    ("SELECT * FROM users u JOIN accounts a ON a.uid = u.id", True),
    ("SELECT * FROM accounts_archive", False),
    ("SELECT * FROM my_accounts", False),
    ("SELECT 'accounts' FROM users", False),
    ("SELECT 1 /* accounts */", False),
    ("SELECT * FROM billing.invoices", True),
    ("SELECT * FROM invoices", False),
    ("SELECT * FROM other.invoices", False),
    ('SELECT * FROM "odd""name"', True),
    ("WITH x AS (SELECT * FROM accounts) SELECT * FROM x", True),
    ("not sql at all accounts", False),
])
def test_primary_only_tables(libs, tables_file, sql, primary):
    hook = load_plugin(Plugin(name=str(libs / "libprimary_only_tables.so"), config=str(tables_file)))
    assert hook is not None and hook.wants_ast
    try:
        expected = Decision.route(role="primary") if primary else None
        assert hook.pre_query(query(sql, has_replicas=True)) == expected
        # Without a primary there is nothing to insist on.
        assert hook.pre_query(query(sql, has_primary=False, has_replicas=True)) is None
    finally:
        hook.close()


def test_primary_only_tables_needs_its_config(libs):
    path = libs / "libprimary_only_tables.so"
    for config, expected in ((None, f"{path}: pgdog_configure(None) returned 1"),
                             ("/nonexistent/tables.txt",
                              f"{path}: pgdog_configure('/nonexistent/tables.txt') returned 2")):
        with pytest.raises(HookLoadError) as refused:
            load_plugin(Plugin(name=str(path), config=config))
        assert str(refused.value) == f"plugin {str(path)!r} refused: {expected}"


# --- check-plugin ---------------------------------------------------------------------------


def check_plugin(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trio_pgdog", "check-plugin", *map(str, args)],
                          capture_output=True, text=True, timeout=60, cwd=cwd)


def test_check_plugin_ok(libs):
    out = check_plugin(libs / "libshard_comment.so")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ABI version: 1 (this proxy: 1)" in out.stdout
    assert "events:      pre_query" in out.stdout
    assert "-> block: SQLSTATE 42501: DROP TABLE is not allowed through this proxy" in out.stdout
    assert "-> route: shard 1, role any" in out.stdout
    assert out.stdout.rstrip().endswith("OK")


def test_check_plugin_every_event_and_config(libs, tables_file):
    out = check_plugin(libs / "libanswers.so", "--bench")
    assert out.returncode == 0, out.stdout + out.stderr
    for line in ("pre_connect (pgdog_pre_connect):", "-> admit", "after_connect (pgdog_after_connect):",
                 "-> run \"SET application_name = 'from_plugin'\"", "post_query (pgdog_post_query):",
                 "-> called", "cost per pre_query call"):
        assert line in out.stdout
    out = check_plugin(libs / "libprimary_only_tables.so", "--config", tables_file)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "wants AST:   yes" in out.stdout


@pytest.mark.parametrize(("name", "why"), [
    ("libwrong_abi.so", "built for plugin ABI version 2"),
    ("libno_abi.so", "no pgdog_plugin_abi_version function"),
    ("libabi_only.so", "exports no event function"),
    ("missing.so", "no such file"),
])
def test_check_plugin_refused(libs, name, why):
    out = check_plugin(libs / name)
    assert out.returncode == 1
    assert out.stdout.startswith(f"FAILED: plugin '{libs / name}' refused: ")
    assert why in out.stdout
    assert "Traceback" not in out.stderr


def test_check_plugin_of_a_name_with_a_dot_is_a_file(tmp_path):
    """`check-plugin README.md` means that file, not libREADME.md.so on the library path."""
    out = check_plugin("README.md", cwd=tmp_path)
    assert out.returncode == 1
    assert f"no such file: README.md ({tmp_path / 'README.md'})" in out.stdout
    assert "libREADME" not in out.stdout + out.stderr
    out = check_plugin("README.md")  # the repository's README: there, but not a library
    assert out.returncode == 1
    assert f"{ROOT / 'README.md'}: not a loadable shared library" in out.stdout


def test_check_config_loads_plugins_as_the_proxy_does(libs, tmp_path):
    """check-config loads each [[plugins]] entry (init, configure, fini) and reports it."""
    from trio_pgdog.embedded import free_port

    marker = tmp_path / "marker"
    (tmp_path / "pgdog.toml").write_text(
        f'[[databases]]\nname = "appdb"\nhost = "127.0.0.1"\nport = {free_port()}\n'
        f'\n[[plugins]]\nname = "{libs / "libnoop.so"}"\ndatabases = ["appdb"]\n'
        f'\n[[plugins]]\nname = "{libs / "libconfigure_fails.so"}"\nconfig = "{marker}"\n')
    (tmp_path / "users.toml").write_text('[[users]]\nname = "app"\ndatabase = "appdb"\n'
                                         'password = "x"\n')
    out = subprocess.run([sys.executable, "-m", "trio_pgdog", "check-config", "--config",
                          str(tmp_path / "pgdog.toml"), "--users", str(tmp_path / "users.toml")],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert f"OK   plugin {libs / 'libnoop.so'}: pre_query (databases: appdb)" in lines
    assert (f"FAIL plugin '{libs / 'libconfigure_fails.so'}' refused: "
            f"{libs / 'libconfigure_fails.so'}: pgdog_configure('{marker}') returned 3 "
            "(the proxy would not start)") in lines
    assert (tmp_path / "marker.fini").exists()  # refused, and still given its pgdog_fini
    assert lines[-1] == "2 problems found"  # the plugin and the server that is not there


def test_check_plugin_invalid_answers(libs):
    out = check_plugin(libs / "libgarbage.so")
    assert out.returncode == 1
    assert out.stdout.count("<- INVALID") == 6 + 2   # every sample, pre_connect, after_connect
    assert "FAILED: 8 invalid answer(s)" in out.stdout
    assert "invalid answer from pgdog_route_query: unknown decision 99" in out.stderr
