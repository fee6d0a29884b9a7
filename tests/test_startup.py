"""The first minutes with the proxy, through the real command line: a port that is taken,
--host/--port, log levels and formats, the servers checked at start-up, check-config."""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import APP_DB, PG_USERS, pgdog_toml, start_proxy, users_toml, wait_for

from trio_pgdog.embedded import free_port

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")
ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trio_pgdog", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def plain_lines(text: str) -> list[str]:
    """The lines that are not log records: what the program says to the operator itself."""
    return [line for line in text.splitlines() if line and not LOG_LINE.match(line)]


def write_configs(tmp_path: Path, pgdog: str, users: str | None = None) -> list[str]:
    """--config/--users arguments for files holding `pgdog` and `users` (default user app)."""
    (tmp_path / "pgdog.toml").write_text(pgdog)
    (tmp_path / "users.toml").write_text(users if users is not None else users_toml())
    return ["--config", str(tmp_path / "pgdog.toml"), "--users", str(tmp_path / "users.toml")]


def closed_port() -> int:
    """A port nothing listens on."""
    return free_port()


# --- a port that is taken --------------------------------------------------------------------


@pytest.fixture
def taken_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


def test_a_taken_port_is_named_with_what_to_do(pg, tmp_path, taken_port):
    args = write_configs(tmp_path, pgdog_toml(pg, taken_port))
    out = run_cli(*args)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    [message] = plain_lines(out.stderr)
    assert message.startswith(f"trio_pgdog: cannot listen on 127.0.0.1:{taken_port}: the address "
                              "is already in use")
    assert f"(by pid {os.getpid()}: " in message  # this test holds it
    assert "--port" in message


def test_demo_checks_its_port_before_starting_postgresql(taken_port):
    started = time.monotonic()
    out = run_cli("demo", "--port", str(taken_port), timeout=60)
    assert out.returncode == 1, out.stderr
    assert time.monotonic() - started < 15
    assert "Traceback" not in out.stderr
    assert "Connect with" not in out.stderr  # nothing announced that is not there
    assert "throw-away PostgreSQL" not in out.stderr  # no time spent on clusters
    [message] = plain_lines(out.stderr)
    assert f"cannot listen on 127.0.0.1:{taken_port}: the address is already in use" in message


# --- --host and --port ---------------------------------------------------------------------------


def test_port_and_host_flags_override_general(pg, tmp_path):
    file_port, port = free_port(), free_port()
    text = pgdog_toml(pg, file_port).replace('host = "127.0.0.1"', 'host = "192.0.2.1"', 1)
    proxy = start_proxy(tmp_path, text, users_toml(), port,
                        extra_args=["--host", "127.0.0.1", "--port", str(port)])
    try:
        assert f"listening on 127.0.0.1:{port}" in proxy.log
        with proxy.connect() as conn:
            assert conn.execute("SELECT current_database()").fetchone() == (APP_DB,)
        # A reload keeps the command line's address: no "needs a restart" warning.
        proxy.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in proxy.log, what="reload")
        assert "need a restart" not in proxy.log
    finally:
        proxy.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", file_port), timeout=1).close()


@pytest.mark.parametrize("value", ["0", "70000", "http"])
def test_a_bad_port_flag_is_refused(tmp_path, value):
    out = run_cli("--port", value)
    assert out.returncode == 2
    assert "argument --port" in out.stderr and "Traceback" not in out.stderr


# --- a users.toml that is not there ------------------------------------------------------------


def test_a_missing_users_file_stops_the_start(pg, tmp_path):
    (tmp_path / "pgdog.toml").write_text(pgdog_toml(pg, free_port()))
    users = tmp_path / "users.toml"
    out = run_cli("--config", str(tmp_path / "pgdog.toml"), "--users", str(users))
    assert out.returncode == 2, out.stderr
    [message] = plain_lines(out.stderr)
    assert message.startswith(f"trio_pgdog: {users}: cannot read: No such file or directory; ")
    assert "Traceback" not in out.stderr


def test_an_empty_users_file_starts_with_a_warning(pg, tmp_path):
    port = free_port()
    proxy = start_proxy(tmp_path, pgdog_toml(pg, port), "", port)
    try:
        assert re.search(r"WARNING trio_pgdog: no users in \S+users\.toml: every login will be "
                         "refused", proxy.log)
    finally:
        proxy.stop()


# --- log level and format --------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_log_level_in_any_case(pg, tmp_path, monkeypatch, how):
    port = free_port()
    extra = ["--log-level", "debug"] if how == "flag" else []
    if how == "environment":
        monkeypatch.setenv("PGDOG_LOG_LEVEL", "Debug")
    proxy = start_proxy(tmp_path, pgdog_toml(pg, port), users_toml(), port, extra_args=extra)
    try:
        with proxy.connect() as conn:
            conn.execute("SELECT 1")
        wait_for(lambda: re.search(r" DEBUG \S+: client \S+ logged in as app@appdb", proxy.log),
                 what="a DEBUG line")
    finally:
        proxy.stop()
    assert "Traceback" not in proxy.log


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_an_unknown_log_level_is_one_line(tmp_path, how):
    env = dict(os.environ)
    args: list[str] = []
    if how == "flag":
        args = ["--log-level", "verbose"]
    else:
        env["PGDOG_LOG_LEVEL"] = "verbose"
    out = run_cli(*args, cwd=tmp_path, env=env)
    assert out.returncode == 2
    source = "--log-level" if how == "flag" else "PGDOG_LOG_LEVEL"
    assert out.stderr.splitlines() == [
        f"trio_pgdog: {source}: unknown log level 'verbose' (use one of debug, info, warning, "
        "error, critical)"]


def test_json_log_format(pg, tmp_path):
    port = free_port()
    text = pgdog_toml(pg, port, log_format="json")
    text += f'\n[[databases]]\nname = "{APP_DB}"\nhost = "127.0.0.1"\nport = {closed_port()}\n' \
            'role = "replica"\n'
    proxy = start_proxy(tmp_path, text, users_toml(), port)
    try:
        wait_for(lambda: "cannot log in" in proxy.log, what="the start-up check's warning")
    finally:
        proxy.stop()
    records = [json.loads(line) for line in proxy.log.splitlines()]  # every line is JSON
    for record in records:
        assert {"time", "level", "logger", "message"} <= record.keys()
        moment = datetime.datetime.fromisoformat(record["time"])
        assert record["time"].endswith("Z") and moment.utcoffset() == datetime.timedelta(0)
    assert records[0]["message"].startswith("trio_pgdog ") and records[0]["level"] == "INFO"
    warning = next(r for r in records if "cannot log in" in r["message"])
    assert warning["level"] == "WARNING" and warning["logger"] == "trio_pgdog.app"
    assert records[-1]["message"] == "trio_pgdog stopped"


# --- servers checked at start-up ---------------------------------------------------------------------


def test_servers_are_checked_at_start_up(pg, tmp_path):
    port, dead = free_port(), closed_port()
    text = pgdog_toml(pg, port)
    text += f'\n[[databases]]\nname = "{APP_DB}"\nhost = "127.0.0.1"\nport = {dead}\nrole = "replica"\n'
    text += f'\n[[databases]]\nname = "other"\nhost = "127.0.0.1"\nport = {pg.port}\n'
    users = users_toml({"name": "app", "database": APP_DB, "password": PG_USERS["app"][0]},
                       {"name": "app", "database": "other", "password": "wrong"})
    proxy = start_proxy(tmp_path, text, users, port)
    try:
        # The port opened first; the check runs behind it and the proxy keeps serving.
        wait_for(lambda: proxy.log.count("cannot log in") == 2, what="two warnings")
        log = proxy.log
        assert log.index("listening on") < log.index("cannot log in")
        assert (f"WARNING trio_pgdog.app: server {APP_DB} (replica) 127.0.0.1:{dead} as app: "
                f"cannot log in: connection refused") in log
        assert re.search(rf"WARNING trio_pgdog\.app: server other \(primary\) 127\.0\.0\.1:{pg.port} "
                         r"as app: cannot log in: .*\(SQLSTATE 28P01\)", log)
        assert "logged in to every configured server" not in log
        with proxy.connect() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        proxy.stop()


def test_reachable_servers_give_one_info_line(pg, tmp_path):
    port = free_port()
    proxy = start_proxy(tmp_path, pgdog_toml(pg, port), users_toml(), port)
    try:
        wait_for(lambda: "start-up check" in proxy.log, what="the start-up check")
        assert "INFO trio_pgdog.app: start-up check: logged in to every configured server " \
               "(1 login)" in proxy.log
        assert "WARNING" not in proxy.log
    finally:
        proxy.stop()


# --- check-config ------------------------------------------------------------------------------------


def test_check_config_all_good(pg, tmp_path):
    args = write_configs(tmp_path, pgdog_toml(pg, free_port())
                         + '\n[hooks.table_access]\nenabled = true\ntables = ["secrets"]\n')
    out = run_cli("check-config", *args)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines() == [
        f"OK   {tmp_path / 'pgdog.toml'}: 1 database entry, 0 plugins",
        f"OK   {tmp_path / 'users.toml'}: 1 user",
        "OK   hook hooks.table_access: pre_query",
        f"OK   server {APP_DB} (primary) 127.0.0.1:{pg.port} as app: logged in (PostgreSQL "
        f"{pg.sql('SHOW server_version')})",
        "configuration OK",
    ]


def test_check_config_tries_every_user_on_every_server(pg, tmp_path):
    dead = closed_port()
    text = pgdog_toml(pg, free_port())
    text += f'\n[[databases]]\nname = "{APP_DB}"\nhost = "127.0.0.1"\nport = {dead}\nrole = "replica"\n'
    text += '\n[[databases]]\nname = "nobody"\nhost = "127.0.0.1"\n'
    users = users_toml({"name": "app", "database": APP_DB, "password": PG_USERS["app"][0]},
                       {"name": "md5user", "database": APP_DB, "password": "wrong"})
    out = run_cli("check-config", *write_configs(tmp_path, text, users))
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert f"OK   server {APP_DB} (primary) 127.0.0.1:{pg.port} as app: logged in" in "\n".join(lines)
    assert re.search(rf"FAIL server {APP_DB} \(primary\) 127\.0\.0\.1:{pg.port} as md5user: "
                     r".*password.*\(SQLSTATE 28P01\)", out.stdout)
    for user in ("app", "md5user"):
        assert (f"FAIL server {APP_DB} (replica) 127.0.0.1:{dead} as {user}: connection refused"
                in lines)
    assert ("FAIL server nobody (primary) 127.0.0.1:5432: no user in users.toml may connect to "
            "database 'nobody', so no client can use it") in lines
    assert lines[-1] == "4 problems found"


def test_check_config_reports_every_hook_that_cannot_load(pg, tmp_path):
    text = pgdog_toml(pg, free_port()) + (
        '\n[[hooks.python]]\nobject = "hookmods.sample_hook:NoSuchClass"\n'
        '\n[[plugins]]\nname = "README.md"\n'
        '\n[hooks.table_access]\nenabled = true\ntables = ["secrets"]\n')
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests"))
    out = run_cli("check-config", *write_configs(tmp_path, text), env=env)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert "OK   hook hooks.table_access: pre_query" in lines
    assert ("FAIL [[hooks.python]] object 'hookmods.sample_hook:NoSuchClass': hookmods.sample_hook "
            "has no attribute 'NoSuchClass' (the proxy would not start)") in lines
    assert (f"FAIL plugin 'README.md' refused: no such file: README.md ({tmp_path / 'README.md'})"
            " (the proxy would not start)") in lines
    assert lines[-1] == "2 problems found"


@pytest.mark.parametrize("problem", ["bad file", "no users file"])
def test_check_config_of_files_that_do_not_load(pg, tmp_path, problem):
    args = write_configs(tmp_path, pgdog_toml(pg, free_port()).replace("port =", "prot =", 1))
    if problem == "no users file":
        args = write_configs(tmp_path, pgdog_toml(pg, free_port()))
        (tmp_path / "users.toml").unlink()
    out = run_cli("check-config", *args)
    assert out.returncode == 2, out.stdout + out.stderr
    first, last = out.stdout.splitlines()
    assert first.startswith("FAIL configuration: ")
    assert ("'prot'" if problem == "bad file" else "No such file") in first
    assert last == "1 problem found"
