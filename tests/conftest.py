"""Shared fixtures: one real PostgreSQL cluster per test session, proxies as real processes.

The cluster comes from trio_pgdog.embedded (the code `demo` uses). Each proxy is started as
`python -m trio_pgdog --config ... --users ...`, exactly as a user runs it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import scramp

from trio_pgdog.embedded import Cluster, free_port

# Users on the test cluster: name -> (password, the method PostgreSQL demands).
PG_USERS = {
    "app": ("app-secret", "scram-sha-256"),
    "md5user": ("md5-secret", "md5"),
    "clearuser": ("clear-secret", "password"),
    "trustuser": (None, "trust"),
}
APP_DB = "appdb"
TESTS_DIR = Path(__file__).parent


class ExtendedCursor(psycopg.Cursor):
    """The extended protocol for every statement: psycopg sends one without parameters as a
    simple Query otherwise."""

    def _execute_send(self, query, *, force_extended: bool = False, binary: bool | None = None):
        super()._execute_send(query, force_extended=True, binary=binary)


# How a client talks: simple Query messages (psycopg's ClientCursor), the extended protocol
# with unnamed statements, or named prepared statements from the first execution on.
PROTOCOLS = {
    "simple": {"cursor_factory": psycopg.ClientCursor},
    "extended": {"prepare_threshold": None, "cursor_factory": ExtendedCursor},
    "prepared": {"prepare_threshold": 0},
}


@pytest.fixture(scope="session")
def pg() -> Iterator[Cluster]:
    with Cluster.create() as cluster:
        cluster.start()
        for name, (password, method) in PG_USERS.items():
            cluster.add_user(name, password, auth=method)
        cluster.add_database(APP_DB, owner="app")
        cluster.sql(f"GRANT ALL ON DATABASE {APP_DB} TO PUBLIC; "
                    "GRANT ALL ON SCHEMA public TO PUBLIC", dbname=APP_DB)
        yield cluster


def pgdog_toml(pg: Cluster, port: int, **general: object) -> str:
    """A pgdog.toml with database `appdb` on the test cluster; `general` overrides [general]."""
    settings = {"host": "127.0.0.1", "port": port, **general}
    lines = ["[general]"] + [f"{k} = {_toml(v)}" for k, v in settings.items()]
    lines += ["", "[[databases]]", f'name = "{APP_DB}"', 'host = "127.0.0.1"', f"port = {pg.port}", ""]
    return "\n".join(lines)


def users_toml(*users: dict[str, object]) -> str:
    """users.toml text; default: user `app` on `appdb` with its real password."""
    if not users:
        users = ({"name": "app", "database": APP_DB, "password": PG_USERS["app"][0]},)
    out = []
    for user in users:
        out.append("[[users]]")
        out += [f"{k} = {_toml(v)}" for k, v in user.items()]
        out.append("")
    return "\n".join(out)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)


class ProxyProcess:
    """A running `python -m trio_pgdog` and what it logged."""

    def __init__(self, proc: subprocess.Popen, port: int, log_path: Path, workdir: Path):
        self.proc = proc
        self.port = port
        self.log_path = log_path
        self.workdir = workdir

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def dsn(self, user: str = "app", password: str | None = None, dbname: str = APP_DB) -> str:
        if password is None and user in PG_USERS:
            password = PG_USERS[user][0]
        parts = [f"host=127.0.0.1 port={self.port} user={user} dbname={dbname}",
                 "connect_timeout=10"]
        if password is not None:
            parts.append(f"password={password}")
        return " ".join(parts)

    def connect(self, **kwargs: object) -> psycopg.Connection:
        kw = {"user": "app", "password": None, "dbname": APP_DB}
        kw.update({k: kwargs.pop(k) for k in list(kwargs) if k in kw})
        return psycopg.connect(self.dsn(**kw), autocommit=True, **kwargs)  # type: ignore[arg-type]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def server_ports(self, server_port: int) -> set[int]:
        """Local ports of this proxy's established TCP connections to `server_port`.

        PostgreSQL shows them as pg_stat_activity.client_port, which tells this proxy's
        server connections apart from those of proxies other tests left behind.
        """
        return server_ports(self.proc.pid, server_port)

    def worker_pids(self) -> list[int]:
        """The worker processes of a proxy with `workers` > 1 (its children)."""
        return process_children(self.proc.pid)


def process_children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def server_ports(pid: int, server_port: int) -> set[int]:
    """Local ports of the established TCP connections to `server_port` of process `pid` and
    of its children (a proxy's workers)."""
    inodes = set()
    for one in (pid, *process_children(pid)):
        try:
            fds = list(Path(f"/proc/{one}/fd").iterdir())
        except OSError:  # gone while we looked
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:  # closed while we looked
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            if state == "01" and inode in inodes and int(remote.rsplit(":", 1)[1], 16) == server_port:
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def proxy_backends(pg: Cluster, proxy: ProxyProcess, columns: str = "pid") -> list[list[str]]:
    """pg_stat_activity rows (the chosen columns) of `proxy`'s server connections to `pg`."""
    ports = proxy.server_ports(pg.port)
    if not ports:
        return []
    out = pg.sql(f"SELECT {columns} FROM pg_stat_activity WHERE application_name = 'trio_pgdog' "
                 f"AND client_port IN ({', '.join(map(str, sorted(ports)))}) ORDER BY pid")
    return [line.split("|") for line in out.splitlines()]


def query_in_thread(proxy: ProxyProcess, sql: str) -> tuple[threading.Thread, threading.Event]:
    """Run `sql` on a new connection to `proxy` in a thread (it may have to wait for a pool
    slot); the Event is set once it has run."""
    done = threading.Event()

    def run() -> None:
        with proxy.connect() as conn:
            conn.execute(sql)
        done.set()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, done


def wait_for(predicate: Callable[[], object], timeout: float = 10, what: str = "condition",
             interval: float = 0.05) -> object:
    """Poll `predicate` until it returns something truthy (returned); fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {result!r})")
        time.sleep(interval)


def psql(port: int, sql: str, user: str = "app", password: str | None = None,
         dbname: str = APP_DB) -> subprocess.CompletedProcess[str]:
    """Run `psql -c sql` against 127.0.0.1:`port` (unaligned, tuples only); never raises."""
    if password is None and user in PG_USERS:
        password = PG_USERS[user][0]
    env = dict(os.environ, PGPASSWORD=password or "", PGCONNECT_TIMEOUT="10")
    return subprocess.run(
        ["psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(port),
         "-U", user, "-d", dbname, "-c", sql],
        env=env, capture_output=True, text=True, timeout=60)


def login_error(port: int, user: str, dbname: str = APP_DB, password: str | None = None,
                transcript: list[tuple[int, bytes]] | None = None) -> dict[str, str] | None:
    """Log in over the raw v3 protocol; the ErrorResponse fields if refused, None if accepted.

    psycopg and psql do not expose the SQLSTATE of a failed login, so tests that check it
    speak the protocol themselves (SCRAM-SHA-256, md5 or cleartext, as asked). `transcript`
    receives (code, data) of every Authentication request the server sent.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        params = b"".join(k + b"\0" + v.encode() + b"\0"
                          for k, v in ((b"user", user), (b"database", dbname))) + b"\0"
        body = struct.pack("!i", 196608) + params
        sock.sendall(struct.pack("!i", len(body) + 4) + body)
        scram = None
        while True:
            kind, body = _read_message(sock)
            if kind == b"E":
                return {field[:1].decode(): field[1:].decode()
                        for field in body.split(b"\0") if field}
            if kind == b"Z":
                sock.sendall(b"X\0\0\0\4")
                return None
            if kind != b"R":
                continue  # ParameterStatus, BackendKeyData, notices
            code = struct.unpack_from("!i", body)[0]
            if transcript is not None:
                transcript.append((code, body[4:]))
            secret = (password or "").encode()
            if code == 3:  # cleartext
                answer = secret + b"\0"
            elif code == 5:  # md5
                inner = hashlib.md5(secret + user.encode()).hexdigest().encode()
                answer = b"md5" + hashlib.md5(inner + body[4:8]).hexdigest().encode() + b"\0"
            elif code == 10:  # SASL: SCRAM-SHA-256
                scram = scramp.ScramClient(["SCRAM-SHA-256"], user, password or "")
                first = scram.get_client_first().encode()
                answer = b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first
            elif code == 11 and scram is not None:
                scram.set_server_first(body[4:].decode())
                answer = scram.get_client_final().encode()
            else:  # 0 (ok), 12 (SASL final): nothing to answer
                continue
            sock.sendall(b"p" + struct.pack("!i", len(answer) + 4) + answer)


def _read_message(sock: socket.socket) -> tuple[bytes, bytes]:
    header = _recv_exactly(sock, 5)
    return header[:1], _recv_exactly(sock, struct.unpack("!i", header[1:])[0] - 4)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def start_proxy(workdir: Path, pgdog_text: str, users_text: str | None, port: int,
                wait: bool = True, extra_args: list[str] | None = None) -> ProxyProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    cfg, users = workdir / "pgdog.toml", workdir / "users.toml"
    cfg.write_text(pgdog_text)
    if users_text is not None:
        users.write_text(users_text)
    log_path = workdir / "proxy.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # Test hook modules ([[hooks.python]] object = "hookmods.recorder:Recorder") import from here.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "trio_pgdog", "--config", str(cfg), "--users", str(users),
         *(extra_args or [])],
        stdout=log_path.open("wb"), stderr=subprocess.STDOUT, cwd=workdir, env=env)
    proxy = ProxyProcess(proc, port, log_path, workdir)
    if wait:
        _wait_listening(proxy)
    return proxy


def _wait_listening(proxy: ProxyProcess, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proxy.proc.poll() is not None:
            raise RuntimeError(f"proxy exited with {proxy.proc.returncode}:\n{proxy.log}")
        try:
            socket.create_connection(("127.0.0.1", proxy.port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    proxy.stop(signal.SIGKILL)
    raise RuntimeError(f"proxy did not listen on {proxy.port}:\n{proxy.log}")


@pytest.fixture
def proxy_factory(pg: Cluster, tmp_path: Path) -> Iterator:
    """start(general=..., users=..., pgdog_text=...) -> ProxyProcess; all stopped at teardown.

    `pgdog_text` may be a function of the proxy's port, for files that must name it.
    """
    started: list[ProxyProcess] = []

    def start(*, users: str | None = None,
              pgdog_text: str | Callable[[int], str] | None = None, wait: bool = True,
              **general: object) -> ProxyProcess:
        port = free_port()
        if callable(pgdog_text):
            pgdog_text = pgdog_text(port)
        text = pgdog_text if pgdog_text is not None else pgdog_toml(pg, port, **general)
        proxy = start_proxy(tmp_path / f"proxy{len(started)}", text,
                            users if users is not None else users_toml(), port, wait=wait)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        try:
            proxy.stop(timeout=15)
        except subprocess.TimeoutExpired:
            proxy.stop(signal.SIGKILL)


@pytest.fixture(scope="session")
def shard_clusters() -> Iterator[list[Cluster]]:
    """Three clusters, the shards of `appdb` (tests/shards.py), shared by every test file."""
    from shards import started_shards

    with started_shards() as clusters:
        yield clusters


@pytest.fixture
def proxy(proxy_factory) -> ProxyProcess:
    """A transaction-pooling proxy for user `app` on `appdb` with default settings."""
    return proxy_factory()


# --- a primary with two streaming replicas (read/write splitting, load balancing) ----------

REPLICA_USER, REPLICA_PASSWORD = "app", PG_USERS["app"][0]


def _replica_serves_app(replica: Cluster) -> bool:
    """The replica is in recovery and `app` can log in to `appdb` on it with its password."""
    if replica.sql("SELECT pg_is_in_recovery()") != "t":
        return False
    try:
        with psycopg.connect(replica.dsn(REPLICA_USER, REPLICA_PASSWORD, APP_DB),
                             connect_timeout=5) as conn:
            return conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
    except psycopg.OperationalError:
        return False


def wait_replicated(primary: Cluster, replicas: list[Cluster], timeout: float = 30) -> None:
    """Wait until every replica accepts `app` and has replayed all WAL the primary has logged.

    The clusters run with synchronous_commit = off, so a commit the client has seen may still
    sit in the primary's WAL buffers: pg_current_wal_lsn() (the write position) can stop short
    of its commit record. The insert position covers it; the WAL writer flushes it soon.
    """
    lsn = primary.sql("SELECT pg_current_wal_insert_lsn()")
    for replica in replicas:
        def caught_up(replica: Cluster = replica) -> bool:
            if not replica.is_running() or not _replica_serves_app(replica):
                return False
            return replica.sql(f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn") == "t"

        wait_for(caught_up, timeout=timeout, what=f"replica {replica.port} to replay up to {lsn}",
                 interval=0.1)


def restart_replicas(primary: Cluster, replicas: list[Cluster]) -> None:
    """Start any replica a test stopped, and wait until all of them have caught up."""
    for replica in replicas:
        replica.start()
    wait_replicated(primary, replicas)


@pytest.fixture(scope="session")
def pg_replicas() -> Iterator[tuple[Cluster, list[Cluster]]]:
    """(primary, [replica1, replica2]): a primary of its own (not `pg`) with two streaming replicas.

    User `app` (scram, password as in PG_USERS) owns database `appdb`, which holds table
    `rw_t(id int primary key, v text)`, created before the base backups were taken.
    """
    with contextlib.ExitStack() as stack:
        primary = stack.enter_context(Cluster.create())
        primary.start()
        primary.add_user(REPLICA_USER, REPLICA_PASSWORD, auth="scram-sha-256")
        primary.add_database(APP_DB, owner=REPLICA_USER)
        primary.sql("CREATE TABLE rw_t (id int PRIMARY KEY, v text); "
                    f"ALTER TABLE rw_t OWNER TO {REPLICA_USER}", dbname=APP_DB)
        replicas = [stack.enter_context(primary.create_replica()) for _ in range(2)]
        restart_replicas(primary, replicas)
        yield primary, replicas


def replica_pgdog_toml(primary: Cluster, replicas: list[Cluster], port: int, **general: object) -> str:
    """pgdog.toml for logical database `appdb`: `primary` plus `replicas`; `general` overrides."""
    settings = {"host": "127.0.0.1", "port": port, **general}
    lines = ["[general]"] + [f"{k} = {_toml(v)}" for k, v in settings.items()]
    for cluster, role in [(primary, "primary")] + [(r, "replica") for r in replicas]:
        lines += ["", "[[databases]]", f'name = "{APP_DB}"', 'host = "127.0.0.1"',
                  f"port = {cluster.port}", f'role = "{role}"']
    return "\n".join(lines) + "\n"
