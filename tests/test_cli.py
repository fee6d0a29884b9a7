"""The command line as an operator meets it: help, version, config files, signals, the demo."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from conftest import APP_DB, psql, users_toml, wait_for
from psycopg import errors

import trio_pgdog
from trio_pgdog.embedded import free_port
from trio_pgdog.router.sharding.hashing import shard_of_int

# A line written through `logging` (the proxy's log format); anything else is plain output.
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trio_pgdog", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except (ConnectionRefusedError, ConnectionResetError):
        # Reset: the connection was still in the listener's queue when the listener closed.
        return True
    return False


def test_help_and_version():
    out = run_cli("--help")
    assert out.returncode == 0, out.stderr
    for word in ("--config", "--users", "--version", "demo"):
        assert word in out.stdout
    out = run_cli("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"trio_pgdog {trio_pgdog.__version__}"


def test_the_console_script_is_the_same_program():
    """README's quickstart runs `trio-pgdog`: pip installs it beside the interpreter."""
    script = Path(sys.executable).with_name("trio-pgdog")
    assert script.exists(), "pip install did not create the trio-pgdog console script"
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == f"trio_pgdog {trio_pgdog.__version__}"


def test_the_docs_name_only_commands_that_exist():
    """Every `trio-pgdog <command>` / `python -m trio_pgdog <command>` the README and docs/
    show is one `--help` lists (a renamed command leaves no stale instruction)."""
    listed = set(re.findall(r"^    ([a-z-]+) ", run_cli("--help").stdout, re.M))
    root = Path(__file__).parent.parent
    shown: set[str] = set()
    for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for rest in re.findall(r"(?:trio-pgdog|python -m trio_pgdog)((?: [^ `\n]+)*)", page.read_text()):
            command = _command(rest.split())
            if command is not None:
                shown.add(command)
    assert {"demo", "check-config"} <= shown
    assert shown <= listed, f"docs show commands --help does not list: {shown - listed}"


def _command(words: list[str]) -> str | None:
    """The subcommand in a command line's words after the program, if it names one."""
    with_value = {"--config", "--users", "--host", "--port", "--log-level"}
    while words and words[0].startswith("-"):
        words = words[2:] if words[0] in with_value else words[1:]
    return words[0] if words and re.fullmatch(r"[a-z][a-z-]+", words[0]) else None


def test_first_log_line_names_the_version(proxy):
    first = proxy.log.splitlines()[0]
    assert LOG_LINE.match(first)
    assert f"trio_pgdog {trio_pgdog.__version__}" in first


def test_readme_seed_config_works(pg, proxy_factory):
    """The quickstart file from the README, with the test cluster's database name and port."""
    proxy = proxy_factory(pgdog_text=lambda port: (
        f'[general]\nhost = "0.0.0.0"\nport = {port}\n\n'
        f'[[servers]]\nname = "appdb"\nhost = "127.0.0.1"\nport = {pg.port}\n'))
    with proxy.connect() as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == ("app", APP_DB)


GOOD_PGDOG = '[general]\nport = 6432\n\n[[databases]]\nname = "appdb"\nhost = "127.0.0.1"\n'
GOOD_USERS = users_toml()

BAD_CONFIGS = {
    "unknown key": ("pgdog.toml", GOOD_PGDOG.replace("port = 6432", "prot = 6432"),
                    ["line 2", "'prot'"]),
    "wrong type": ("pgdog.toml", GOOD_PGDOG.replace("6432", '"6432"'), ["line 2", "'port'"]),
    "bad value": ("pgdog.toml", GOOD_PGDOG + 'role = "leader"\n', ["line 7", "'role'"]),
    "missing required key": ("pgdog.toml", GOOD_PGDOG.replace('host = "127.0.0.1"\n', ""),
                             ["[[databases]]", "'host'"]),
    "bad TOML": ("pgdog.toml", GOOD_PGDOG.replace("[general]", "[general"), ["line 1"]),
    "users: unknown key": ("users.toml", GOOD_USERS + "pool_sise = 3\n",
                           ["line 5", "'pool_sise'"]),
    "users: missing required key": ("users.toml", '[[users]]\nname = "app"\ndatabase = "appdb"\n',
                                    ["'password'"]),
    "users: wrong type": ("users.toml", GOOD_USERS + 'pool_size = "3"\n',
                          ["line 5", "'pool_size'"]),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_invalid_config_exits_2_with_one_line(tmp_path, case):
    bad_file, text, words = BAD_CONFIGS[case]
    files = {"pgdog.toml": GOOD_PGDOG, "users.toml": GOOD_USERS, bad_file: text}
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    out = run_cli("--config", str(tmp_path / "pgdog.toml"), "--users", str(tmp_path / "users.toml"))
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    message = [line for line in out.stderr.splitlines() if not LOG_LINE.match(line)]
    assert len(message) == 1, out.stderr
    assert str(tmp_path / bad_file) in message[0]
    for word in words:
        assert word in message[0]


def test_sigterm_lets_a_transaction_finish_and_exits_0(pg, proxy_factory):
    proxy = proxy_factory()
    with proxy.connect() as setup:
        setup.execute("DROP TABLE IF EXISTS in_flight; CREATE TABLE in_flight (v text)")
    busy, idle = proxy.connect(), proxy.connect()
    try:
        idle.execute("SELECT 1")
        busy.execute("BEGIN")
        busy.execute("INSERT INTO in_flight VALUES ('before SIGTERM')")

        proxy.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: refuses_connections(proxy.port), timeout=5, what="the listener to close")
        with pytest.raises(psycopg.OperationalError):
            proxy.connect()
        # The idle client is told why it is being disconnected.
        with pytest.raises(errors.AdminShutdown) as exc:
            idle.execute("SELECT 1")
        assert exc.value.sqlstate == "57P01"

        # The transaction in flight goes on and commits.
        time.sleep(1)
        busy.execute("INSERT INTO in_flight VALUES ('after SIGTERM')")
        busy.execute("COMMIT")
        assert proxy.proc.wait(timeout=10) == 0
    finally:
        busy.close()
        idle.close()
    assert pg.sql("SELECT string_agg(v, ',' ORDER BY v) FROM in_flight", dbname=APP_DB) == \
        "after SIGTERM,before SIGTERM"
    assert "Traceback" not in proxy.log


def test_shutdown_timeout_cuts_off_a_transaction_that_runs_too_long(pg, proxy_factory):
    proxy = proxy_factory(shutdown_timeout=500)
    with proxy.connect() as setup:
        setup.execute("DROP TABLE IF EXISTS too_long; CREATE TABLE too_long (v text)")
    with proxy.connect() as conn:
        conn.execute("BEGIN")
        conn.execute("INSERT INTO too_long VALUES ('never committed')")
        started = time.monotonic()
        proxy.proc.send_signal(signal.SIGTERM)
        assert proxy.proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
        with pytest.raises(psycopg.OperationalError):
            conn.execute("COMMIT")
    wait_for(lambda: pg.sql("SELECT count(*) FROM too_long", dbname=APP_DB) == "0",
             what="the cut-off transaction to be rolled back")
    assert "Traceback" not in proxy.log


def test_sigint_exits_0(proxy):
    with proxy.connect() as conn:
        conn.execute("SELECT 1")
        assert proxy.stop(signal.SIGINT, timeout=10) == 0
        with pytest.raises(errors.AdminShutdown):
            conn.execute("SELECT 1")
    assert "Traceback" not in proxy.log


def test_demo_runs_a_throwaway_cluster_and_cleans_up(tmp_path):
    port = free_port()
    log_path = tmp_path / "demo.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "trio_pgdog", "demo", "--port", str(port)],
                                stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        def serving() -> bool:
            assert proc.poll() is None, log_path.read_text()
            return not refuses_connections(port)

        wait_for(serving, timeout=60, what="the demo to listen")
        out = psql(port, "SELECT current_user, current_database(), 40 + 2", user="pgdog",
                   password="pgdog", dbname="pgdog")
        assert (out.returncode, out.stdout.strip()) == (0, "pgdog|pgdog|42"), out.stderr
        with psycopg.connect(f"postgresql://pgdog:pgdog@127.0.0.1:{port}/pgdog") as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)

        text = log_path.read_text()
        assert f"psql postgres://pgdog:pgdog@127.0.0.1:{port}/pgdog" in text
        # Announced once it is true: after the proxy listens.
        assert text.index(f"listening on 127.0.0.1:{port}") < text.index("Connect with")
        found = re.search(r"throw-away PostgreSQL in (\S+)", text)
        assert found, text
        base_dir = Path(found.group(1))
        assert base_dir.is_dir()
        pg_port = int(re.search(r"PostgreSQL (\d+) behind the proxy", text).group(1))

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not base_dir.exists()
    assert refuses_connections(pg_port)  # the throw-away PostgreSQL is stopped too
    assert "Traceback" not in log_path.read_text()



def test_sharded_demo_puts_each_row_on_its_shard_and_cleans_up(tmp_path):
    port = free_port()
    log_path = tmp_path / "demo.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "trio_pgdog", "demo", "--shards", "2",
                                 "--port", str(port)],
                                stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
    base_dirs: list[Path] = []
    shard_ports: dict[int, int] = {}
    try:
        def banner_shown() -> bool:
            assert proc.poll() is None, log_path.read_text()
            return "Press Ctrl-C" in log_path.read_text()

        wait_for(banner_shown, timeout=90, what="the sharded demo's banner")
        text = log_path.read_text()
        assert text.index(f"listening on 127.0.0.1:{port}") < text.index("Connect with")
        url = f"postgres://pgdog:pgdog@127.0.0.1:{port}/pgdog"
        assert f"psql {url}" in text
        base_dirs = [Path(d) for d in re.findall(r"throw-away PostgreSQL for shard \d in (\S+)", text)]
        shard_ports = {int(s): int(p) for s, p in re.findall(r"shard (\d): PostgreSQL on port (\d+)", text)}
        assert len(base_dirs) == 2 and all(d.is_dir() for d in base_dirs), text
        assert sorted(shard_ports) == [0, 1], text
        # The banner's own commands: the INSERT through the proxy, the direct reads per shard.
        for shard_port in shard_ports.values():
            direct = f"postgres://pgdog:pgdog@127.0.0.1:{shard_port}/pgdog"
            assert f'psql {direct} -c "SELECT * FROM orders"' in text
        insert = re.search(rf'psql {re.escape(url)} -c "(INSERT INTO orders .*)"', text)
        assert insert, text
        done = psql(port, insert.group(1), user="pgdog", password="pgdog", dbname="pgdog")
        assert (done.returncode, done.stderr) == (0, "")
        values = ", ".join(f"({k}, 'item {k}', {k}.50)" for k in range(7, 21))
        done = psql(port, f"INSERT INTO orders (customer_id, item, amount) VALUES {values}",
                    user="pgdog", password="pgdog", dbname="pgdog")
        assert (done.returncode, done.stderr) == (0, "")

        placed = {}
        for shard, shard_port in shard_ports.items():
            done = psql(shard_port, "SELECT customer_id FROM orders ORDER BY 1", user="pgdog",
                        password="pgdog", dbname="pgdog")
            assert done.returncode == 0, done.stderr
            placed[shard] = [int(k) for k in done.stdout.split()]
            # The omnisharded table is on every shard.
            done = psql(shard_port, "SELECT count(*) FROM products", user="pgdog",
                        password="pgdog", dbname="pgdog")
            assert done.stdout.strip() == "3"
        assert placed == {s: [k for k in range(1, 21) if shard_of_int(k, 2) == s] for s in (0, 1)}
        assert placed[0] and placed[1]
        # A read by key through the proxy is answered by that key's shard.
        done = psql(port, "SELECT inet_server_port(), item FROM orders WHERE customer_id = 3",
                    user="pgdog", password="pgdog", dbname="pgdog")
        assert done.stdout.strip() == f"{shard_ports[shard_of_int(3, 2)]}|cake", done.stderr

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert base_dirs and not any(d.exists() for d in base_dirs)
    assert all(refuses_connections(p) for p in shard_ports.values())
    assert refuses_connections(port)
    assert "Traceback" not in log_path.read_text()


@pytest.mark.parametrize("shards", ["1", "9", "two"])
def test_demo_refuses_a_bad_number_of_shards(shards):
    out = run_cli("demo", "--shards", shards)
    assert out.returncode == 2
    assert out.stderr.splitlines()[-1].startswith("python -m trio_pgdog demo: error: argument --shards: ")
    assert "from 2 to 8" in out.stderr or "not a number of shards" in out.stderr
