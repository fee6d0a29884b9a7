"""A throw-away PostgreSQL cluster: initdb into a temporary directory, start, query, destroy."""

from __future__ import annotations

import math
import os
import shutil
import signal
import tempfile
import time
import weakref
from collections.abc import Iterable, Mapping
from types import TracebackType

from .errors import EmbeddedError
from .pgfiles import (
    CONF_INCLUDE,
    hba_user_line,
    quote_conninfo,
    quote_ident,
    quote_literal,
    render_conf,
    render_hba,
)
from .ports import free_port
from .process import Runner

SUPERUSER = "postgres"
STOP_MODES = ("smart", "fast", "immediate")
# sun_path holds 108 bytes including the NUL; PostgreSQL refuses longer socket paths.
MAX_SOCKET_PATH = 107


def _is_running(runner: Runner, data_dir: str, base_dir: str) -> bool:
    if not os.path.isdir(data_dir):
        return False
    # pg_ctl status: 0 running, 3 not running, 4 no usable data directory.
    return runner.run("pg_ctl", "status", "-D", data_dir, cwd=base_dir).returncode == 0


def _kill_postmaster(data_dir: str) -> None:
    # Last resort when pg_ctl cannot stop it: the first line of postmaster.pid is its PID,
    # and backends exit by themselves once the postmaster is gone.
    try:
        with open(os.path.join(data_dir, "postmaster.pid")) as f:
            pid = int(f.readline())
        os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError):
        pass


def _teardown(runner: Runner, data_dir: str, base_dir: str) -> None:
    # A plain function holding no reference to the Cluster, so weakref.finalize can run it when
    # the Cluster is forgotten or the interpreter exits: no orphaned postmaster holding a port.
    if os.path.isdir(base_dir):
        try:
            for mode in ("fast", "immediate"):
                if _is_running(runner, data_dir, base_dir):
                    runner.run(
                        "pg_ctl", "stop", "-D", data_dir, "-m", mode, "-w", "-t", "30",
                        cwd=base_dir,
                    )  # fmt: skip
            still_running = _is_running(runner, data_dir, base_dir)
        except EmbeddedError:
            still_running = True
        if still_running:
            _kill_postmaster(data_dir)
    shutil.rmtree(base_dir, ignore_errors=True)


class Cluster:
    """A PostgreSQL cluster in its own temporary directory, reachable on 127.0.0.1:port only.

    The superuser is ``postgres``; it is trusted over the unix socket (in ``socket_dir``) and
    over TCP, while other users authenticate over TCP as ``add_user`` says.
    Layout: ``base_dir/data`` (the data directory), ``base_dir/socket``, ``base_dir/server.log``.
    """

    def __init__(
        self,
        runner: Runner,
        base_dir: str,
        port: int,
        settings: Mapping[str, str],
        hba_user_lines: Iterable[str] = (),
    ) -> None:
        # Use Cluster.create (or create_replica); this only records where things are.
        self.runner = runner
        self.host = "127.0.0.1"
        self.port = port
        self.base_dir = base_dir
        self.data_dir = os.path.join(base_dir, "data")
        self.socket_dir = os.path.join(base_dir, "socket")
        self.log_file = os.path.join(base_dir, "server.log")
        self.settings = dict(settings)
        self._hba_user_lines = list(hba_user_lines)
        self._finalizer = weakref.finalize(self, _teardown, runner, self.data_dir, base_dir)

    # -- creation ---------------------------------------------------------------------------

    @classmethod
    def _allocate(
        cls,
        runner: Runner,
        port: int | None,
        parent_dir: str | None,
        settings: Mapping[str, str],
        hba_user_lines: Iterable[str] = (),
    ) -> Cluster:
        base_dir = tempfile.mkdtemp(prefix="trio_pgdog-", dir=parent_dir)
        cluster = cls(runner, base_dir, port or free_port(), settings, hba_user_lines)
        try:
            socket_path = os.path.join(cluster.socket_dir, f".s.PGSQL.{cluster.port}")
            if len(socket_path.encode()) > MAX_SOCKET_PATH:
                raise EmbeddedError(
                    f"unix socket path {socket_path} is too long; use a shorter base_dir"
                )
            runner.chown(base_dir)
            os.mkdir(cluster.socket_dir, 0o700)
            runner.chown(cluster.socket_dir)
        except BaseException:
            cluster.destroy()
            raise
        return cluster

    @classmethod
    def create(
        cls,
        port: int | None = None,
        *,
        base_dir: str | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> Cluster:
        """initdb a new cluster (not started) in a fresh directory inside ``base_dir``.

        ``base_dir`` is the *parent* (default: the system temp dir); the cluster gets its own
        ``trio_pgdog-*`` directory in it, which ``destroy`` removes. ``settings`` are extra
        postgresql.conf parameters and win over ours.
        """
        cluster = cls._allocate(Runner.detect(), port, base_dir, settings or {})
        try:
            cluster._initdb()
        except BaseException:
            cluster.destroy()
            raise
        return cluster

    def _initdb(self) -> None:
        done = self.runner.run(
            "initdb", "-D", self.data_dir, "-U", SUPERUSER, "--auth=trust", "--no-sync",
            "-E", "UTF8", "--locale=C", cwd=self.base_dir,
        )  # fmt: skip
        if done.returncode != 0:
            raise EmbeddedError(f"initdb failed: {done.stderr.strip() or done.stdout.strip()}")
        # Appending keeps the file's owner (postgres) even when we write it as root.
        with open(os.path.join(self.data_dir, "postgresql.conf"), "a") as f:
            f.write(f"\ninclude {quote_literal(CONF_INCLUDE)}\n")
        self._write_conf()
        self._write_hba()

    def _write(self, name: str, text: str) -> None:
        path = os.path.join(self.data_dir, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o600)
        self.runner.chown(path)

    def _write_conf(self) -> None:
        ours = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": self.socket_dir,
            "max_connections": "300",
            # Throw-away data: durability only costs time.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "64MB",
            # So that create_replica (pg_basebackup + streaming) works.
            "wal_level": "replica",
            "max_wal_senders": "10",
            # The server's stderr goes to server.log via pg_ctl -l; no collector needed.
            "logging_collector": "off",
            "log_destination": "stderr",
        }
        self._write(CONF_INCLUDE, render_conf({**ours, **self.settings}))

    def use_tls(self, cert_file: str, key_file: str) -> None:
        """Serve TLS (ssl = on) with this certificate and key, from the next start or reload on.

        PostgreSQL reads them as server.crt / server.key in the data directory, where they
        must belong to its OS user and (the key) be readable by it alone.
        """
        for src, name in ((cert_file, "server.crt"), (key_file, "server.key")):
            with open(src) as f:
                self._write(name, f.read())
        self.settings["ssl"] = "on"
        self._write_conf()

    def _write_hba(self) -> None:
        self._write("pg_hba.conf", render_hba(self._hba_user_lines))

    def create_replica(self, port: int | None = None) -> Cluster:
        """pg_basebackup this running primary into a new streaming replica (not started)."""
        if not self.is_running():
            raise EmbeddedError("create_replica needs the primary to be running")
        replica = Cluster._allocate(
            self.runner, port, os.path.dirname(self.base_dir), self.settings,
            self._hba_user_lines,
        )  # fmt: skip
        try:
            # -R writes standby.signal and primary_conninfo (TCP, matching the "host
            # replication" pg_hba line); -c fast skips waiting for a spread checkpoint.
            done = replica.runner.run(
                "pg_basebackup", "-h", self.host, "-p", str(self.port), "-U", SUPERUSER,
                "-D", replica.data_dir, "-R", "-X", "stream", "-c", "fast", "--no-sync",
                cwd=replica.base_dir, timeout=300,
            )  # fmt: skip
            if done.returncode != 0:
                raise EmbeddedError(f"pg_basebackup failed: {done.stderr.strip()}")
            # The copy carries the primary's trio_pgdog.conf: give the replica its own port.
            replica._write_conf()
        except BaseException:
            replica.destroy()
            raise
        return replica

    # -- running ------------------------------------------------------------------------------

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the server log (empty if there is none yet)."""
        try:
            with open(self.log_file, errors="replace") as f:
                return "".join(f.readlines()[-lines:]).rstrip()
        except OSError:
            return ""

    def _failure(self, what: str, detail: str) -> EmbeddedError:
        return EmbeddedError(
            f"PostgreSQL on port {self.port} {what}: {detail.strip()}\n"
            f"--- last lines of {self.log_file} ---\n{self.log_tail()}"
        )

    def is_running(self) -> bool:
        return _is_running(self.runner, self.data_dir, self.base_dir)

    def start(self, timeout: float = 30) -> None:
        """Start the server and wait until it accepts connections; no-op if it is running."""
        if self.is_running():
            return
        wait = str(max(1, math.ceil(timeout)))
        try:
            done = self.runner.run(
                "pg_ctl", "start", "-w", "-t", wait, "-D", self.data_dir, "-l", self.log_file,
                cwd=self.base_dir, timeout=timeout + 30,
            )  # fmt: skip
        except EmbeddedError as exc:
            raise self._failure("did not start", str(exc)) from exc
        if done.returncode != 0:
            raise self._failure("did not start", done.stderr or done.stdout)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (pg_ctl stop -m mode) and wait; no error if it is not running."""
        if mode not in STOP_MODES:
            raise ValueError(f"mode must be one of {', '.join(STOP_MODES)}, not {mode!r}")
        if not self.is_running():
            return
        done = self.runner.run(
            "pg_ctl", "stop", "-D", self.data_dir, "-m", mode, "-w", "-t", "60",
            cwd=self.base_dir,
        )  # fmt: skip
        if done.returncode != 0 and self.is_running():
            raise self._failure("did not stop", done.stderr or done.stdout)

    def restart(self) -> None:
        self.stop()
        self.start()

    def reload(self, timeout: float = 10) -> None:
        """Make the running server re-read its config files, and wait until it has."""
        if not self.is_running():
            return
        # pg_reload_conf only sends SIGHUP. A new session reports the postmaster's last load
        # time, so once that moves, every later connection is checked against the new rules.
        before = self.sql("SELECT pg_conf_load_time(); SELECT pg_reload_conf();").splitlines()[0]
        check = f"SELECT pg_conf_load_time() > {quote_literal(before)}::timestamptz"
        deadline = time.monotonic() + timeout
        while self.sql(check) != "t":
            if time.monotonic() > deadline:
                raise self._failure("did not reload its configuration", f"after {timeout:g}s")
            time.sleep(0.01)

    # -- SQL ----------------------------------------------------------------------------------

    def sql(self, query: str, dbname: str = "postgres") -> str:
        """Run ``query`` (one or more statements) as the superuser through psql.

        Returns psql's unaligned, tuples-only output, stripped: one line per row, columns
        separated by ``|``.
        """
        done = self.runner.run(
            "psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
            "-h", self.socket_dir, "-p", str(self.port), "-U", SUPERUSER, "-d", dbname,
            "-f", "-",
            cwd=self.base_dir, input=query,
        )  # fmt: skip
        if done.returncode != 0:
            raise EmbeddedError(f"psql failed on port {self.port}: {done.stderr.strip()}")
        return done.stdout.strip()

    def add_user(
        self,
        name: str,
        password: str | None,
        *,
        auth: str = "scram-sha-256",
        superuser: bool = False,
    ) -> None:
        """Create a login role, and make the server demand ``auth`` from it over TCP.

        ``auth`` is "scram-sha-256", "md5" (the password is also stored md5-hashed),
        "password" (cleartext on the wire) or "trust" (no password asked).
        """
        hba_line = hba_user_line(name, auth)
        statements = []
        options = "LOGIN SUPERUSER" if superuser else "LOGIN"
        if password is not None:
            # md5 auth can only check an md5-stored password; scram covers the rest.
            encryption = "md5" if auth == "md5" else "scram-sha-256"
            statements.append(f"SET password_encryption = {quote_literal(encryption)};")
            options += f" PASSWORD {quote_literal(password)}"
        statements.append(f"CREATE ROLE {quote_ident(name)} {options};")
        self.sql("\n".join(statements))
        self._hba_user_lines.append(hba_line)
        self._write_hba()
        self.reload()

    def add_database(self, name: str, owner: str) -> None:
        self.sql(f"CREATE DATABASE {quote_ident(name)} OWNER {quote_ident(owner)};")

    def dsn(self, user: str, password: str | None, dbname: str) -> str:
        """A libpq conninfo string for connecting over TCP to 127.0.0.1:port."""
        params = {"host": self.host, "port": str(self.port), "user": user, "dbname": dbname}
        if password is not None:
            params["password"] = password
        return " ".join(f"{key}={quote_conninfo(value)}" for key, value in params.items())

    # -- teardown -----------------------------------------------------------------------------

    def destroy(self) -> None:
        """Stop the server (fast, then immediate, then SIGKILL) and delete base_dir.

        Idempotent; also runs by itself when the Cluster is garbage-collected or at exit.
        """
        self._finalizer()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.destroy()

    def __repr__(self) -> str:
        return f"<Cluster {self.host}:{self.port} {self.base_dir}>"
