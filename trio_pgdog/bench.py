"""`python -m trio_pgdog.bench`: pgbench -S against PostgreSQL, PgBouncer and trio_pgdog.

One run starts a throw-away PostgreSQL cluster, loads `pgbench -i -s 1`, starts every target
(PostgreSQL directly, PgBouncer in transaction mode when it is installed, trio_pgdog as a
subprocess) and drives them with `pgbench -S` in simple and extended query mode at several
client counts, in rounds: each round runs every target once at a point, in an order rotated by
one each round. It reports TPS, failed transactions and the pooler's CPU time per transaction,
read from /proc/<pid>/stat (the median of the rounds and their range), and finally the two
ratios against PgBouncer the project aims at, each the median of the rounds' ratios.
With the trio_pgdog_sharded target, the cost of routing by key: a by-key script through
trio_pgdog with one server against trio_pgdog with the table sharded over two
(trio_pgdog.bench_sharded), and the cost of hashing one key. With trio_pgdog_cross_shard,
queries without a key (count, ORDER BY ... LIMIT, GROUP BY) merged over two and three shards
against one database holding every row (trio_pgdog.bench_cross_shard).
With trio_pgdog_tls and pgbouncer_tls, both poolers with TLS towards pgbench and towards a
PostgreSQL started with ssl = on, and the CPU per transaction TLS adds (trio_pgdog.bench_tls).
Last, each pooler's memory per idle logged-in client (trio_pgdog.bench_memory; that figure
alone with --memory-only). Everything it starts (cluster, PgBouncer, proxy, temporary files)
is removed again, also on Ctrl-C, SIGTERM and errors. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import trio

from . import __version__
from .bench_memory import IdleClientError, MemoryFigure, measure_sync, raise_fd_limit
from .embedded import Cluster, EmbeddedError, find_pg_binary, free_port

if TYPE_CHECKING:  # bench_sharded, bench_cross_shard and bench_tls import this module
    from .bench_cross_shard import CrossShardRun
    from .bench_sharded import HashCost, ShardingCost
    from .bench_tls import TlsSetup

USER = PASSWORD = DATABASE = "pgdog"
POOL_SIZE = 16
CLIENT_COUNTS = (1, 16, 64)
MODES = ("simple", "extended")
PREPARED = "prepared"
# Enough server connections for 64 direct clients plus both poolers' pools at once.
MAX_CONNECTIONS = 300

DIRECT, PGBOUNCER, TRIO_PGDOG = "PostgreSQL", "PgBouncer", "trio_pgdog"
# The same proxy with a "replica" (the same server under another host name) and read/write
# splitting on: every statement is classified, so the difference is the router's cost.
TRIO_PGDOG_SPLIT = "trio_pgdog r/w split"
# The same proxy with hooks watching every statement (docs/hooks.md): the difference from
# TRIO_PGDOG is what the hook path costs per statement. Measured at RATIO_CLIENTS only, in
# HOOK_ROUNDS rounds that alternate with plain trio_pgdog (see measure_hook_costs).
TRIO_PGDOG_LOGGER = "trio_pgdog + query_logger"
TRIO_PGDOG_TABLE_ACCESS = "trio_pgdog + table_access"
TRIO_PGDOG_PLUGIN = "trio_pgdog + no-op .so plugin"
HOOK_TARGETS = {"trio_pgdog_logger": TRIO_PGDOG_LOGGER,
                "trio_pgdog_table_access": TRIO_PGDOG_TABLE_ACCESS,
                "trio_pgdog_plugin": TRIO_PGDOG_PLUGIN}
# The by-key script through the plain proxy and through the proxy with the table sharded over
# two more clusters, in rounds (trio_pgdog.bench_sharded).
TRIO_PGDOG_SHARDED = "trio_pgdog sharded"
SHARDED_KEY = "trio_pgdog_sharded"
# SELECTs without a key merged over 2 and 3 shards against one database (bench_cross_shard).
CROSS_SHARD_KEY = "trio_pgdog_cross_shard"
# The same proxy with `workers = 2` (two processes sharing the port and the pool).
TRIO_PGDOG_WORKERS = "trio_pgdog 2 workers"
# The same proxy with its /metrics scraped every second while it runs: what scraping costs.
TRIO_PGDOG_METRICS = "trio_pgdog, /metrics scraped"
METRICS_KEY = "trio_pgdog_metrics"
SCRAPE_INTERVAL = 1.0
# Each pooler with TLS towards pgbench and towards a PostgreSQL with ssl = on (bench_tls).
PGBOUNCER_TLS, TRIO_PGDOG_TLS = "PgBouncer TLS", "trio_pgdog TLS"
TLS_TARGETS = {"pgbouncer_tls": PGBOUNCER_TLS, "trio_pgdog_tls": TRIO_PGDOG_TLS}
PGBOUNCER_KEYS = ("pgbouncer", "pgbouncer_tls")
TARGET_KEYS = {"direct": DIRECT, "pgbouncer": PGBOUNCER, "pgbouncer_tls": PGBOUNCER_TLS,
               "trio_pgdog": TRIO_PGDOG, "trio_pgdog_tls": TRIO_PGDOG_TLS,
               "trio_pgdog_split": TRIO_PGDOG_SPLIT, "trio_pgdog_workers": TRIO_PGDOG_WORKERS,
               METRICS_KEY: TRIO_PGDOG_METRICS,
               **HOOK_TARGETS, SHARDED_KEY: TRIO_PGDOG_SHARDED,
               CROSS_SHARD_KEY: "trio_pgdog cross-shard"}
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER_DIR = os.path.join(CHECKOUT, "hooks", "include")
# The test suite's plugin whose pgdog_route_query decides nothing.
NOOP_PLUGIN = os.path.join(CHECKOUT, "tests", "plugins", "noop.c")

# The project's targets, compared at this client count (docs/benchmarks.md).
RATIO_CLIENTS = 16
MAX_CPU_RATIO = 1.3
MIN_TPS_RATIO = 0.95
# The main comparison runs every target once per round at each (mode, clients) point, and
# judges the median of the rounds' ratios: two runs in a row on this shared machine see the
# same load, two runs minutes apart do not.
DEFAULT_ROUNDS = 3
MAX_PLUGIN_US = 10.0   # a no-op native plugin's extra proxy CPU per statement
# Memory per idle client: the poolers' RSS with none and with this many idle logged-in clients.
IDLE_CLIENTS = 2_000
MAX_IDLE_CLIENT_KB = 4.0
# Runs of this machine differ by more than a hook costs: each hook target is measured in
# rounds, each paired with a run of plain trio_pgdog, and the median difference reported.
HOOK_ROUNDS = 5

DEFAULT_TRANSACTIONS = 40_000
QUICK_TRANSACTIONS = 2_000
WARMUP_TRANSACTIONS_PER_CLIENT = 50
START_TIMEOUT = 30.0
# A 1-minute load average above this at the start means something else is using the CPUs.
BUSY_LOAD = 0.5
STOP_TIMEOUT = 15.0
MAX_LOGGED_PROBLEMS = 10


class BenchError(Exception):
    """Something the benchmark cannot work around (a target that does not start, ...)."""


# --- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where pgbench connects, and the pooler process whose CPU time we charge (None: PostgreSQL)."""

    name: str
    port: int
    proc: subprocess.Popen[bytes] | None = None
    log_path: str = ""
    sslmode: str = "disable"   # pgbench's (libpq's) sslmode towards this target

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def exited(self) -> str | None:
        """Why the pooler is gone, with the end of its log; None while it runs."""
        if self.proc is None or self.proc.poll() is None:
            return None
        tail = "".join(f"\n    {line}" for line in log_tail(self.log_path, lines=10).splitlines())
        return f"{self.name} exited with status {self.proc.returncode}; the end of its log:{tail}"


@dataclass
class PgbenchOutcome:
    """What one pgbench run printed, reduced to the numbers we report."""

    requested: int
    processed: int = 0
    failed: int = 0
    tps: float | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def not_done(self) -> int:
        """Transactions that did not succeed: failed ones plus those aborted clients never ran."""
        return max(self.requested - self.processed, self.failed)


@dataclass
class RunResult:
    target: str
    mode: str
    clients: int
    outcome: PgbenchOutcome
    cpu_us_per_txn: float | None
    round: int = 1   # of the main comparison; 0: a median over the rounds (median_run)


@dataclass
class HookProbe:
    """A hook target's hook path timed inside the proxy (trio_pgdog.bench_probe)."""

    target: str
    mode: str
    statements: int
    timed: dict[str, tuple[int, int]]   # HookedStream method -> (thread CPU ns, calls)
    clock_ns: float                     # what one timed call pays for reading the clock

    @property
    def raw_us(self) -> float:
        return sum(ns for ns, _calls in self.timed.values()) / self.statements / 1000

    @property
    def net_us(self) -> float:
        """Without the clock reads the timing itself added."""
        calls = sum(calls for _ns, calls in self.timed.values())
        return max(0.0, self.raw_us - calls * self.clock_ns / self.statements / 1000)


@dataclass
class HookCost:
    """A hook target's proxy CPU per statement against plain trio_pgdog's, round by round."""

    target: str
    mode: str
    pairs: list[tuple[float, float]] = field(default_factory=list)  # (plain, hooked) µs

    @property
    def extras(self) -> list[float]:
        return sorted(hooked - plain for plain, hooked in self.pairs)

    @property
    def median(self) -> float:
        return statistics.median(self.extras)


# --- pgbench ---------------------------------------------------------------------------------

_PROCESSED = re.compile(r"number of transactions actually processed: (\d+)/(\d+)")
_FAILED = re.compile(r"number of failed transactions: (\d+)")
_TPS = re.compile(r"tps = ([\d.]+) \(without initial connection time\)")
# "client 12" -> "client N", so that one error hitting many clients is reported once.
_CLIENT_NO = re.compile(r"\bclient \d+\b")


def parse_pgbench(stdout: str, stderr: str, requested: int) -> PgbenchOutcome:
    outcome = PgbenchOutcome(requested=requested)
    if match := _PROCESSED.search(stdout):
        outcome.processed = int(match[1])
    if match := _FAILED.search(stdout):
        outcome.failed = int(match[1])
    if match := _TPS.search(stdout):
        outcome.tps = float(match[1])
    outcome.errors = distinct_errors(stderr)
    return outcome


def distinct_errors(stderr: str) -> list[str]:
    """pgbench's error lines, each once with how often it occurred."""
    counts: dict[str, int] = {}
    for line in stderr.splitlines():
        line = line.strip()
        if "error" in line.lower() or "fatal" in line.lower():
            key = _CLIENT_NO.sub("client N", line)
            counts[key] = counts.get(key, 0) + 1
    return [f"{line} (x{n})" if n > 1 else line for line, n in counts.items()]


def pgbench_env(sslmode: str = "disable") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    # The same connection path for every plain target: no TLS or GSS negotiation round trips.
    env.update(PGPASSWORD=PASSWORD, PGSSLMODE=sslmode, PGGSSENCMODE="disable", LC_MESSAGES="C")
    return env


def pgbench_argv(port: int, *args: str) -> list[str]:
    return [find_pg_binary("pgbench"), "-h", "127.0.0.1", "-p", str(port), "-U", USER, *args, DATABASE]


def run_pgbench(port: int, mode: str, clients: int, per_client: int, timeout: float,
                script: str | None = None, sslmode: str = "disable") -> PgbenchOutcome:
    """pgbench -S, or the custom script file `script` (-f); `sslmode` is libpq's."""
    # -n: no VACUUM before the run (it would go through the pooler and is the same every time);
    # -j: two threads at most, as many as the machine has cores for pgbench to share.
    workload = ("-f", script) if script else ("-S",)
    argv = pgbench_argv(port, "-n", *workload, "-M", mode, "-c", str(clients),
                        "-j", str(min(2, clients)), "-t", str(per_client))
    requested = clients * per_client
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env=pgbench_env(sslmode), check=False)
    except subprocess.TimeoutExpired:
        return PgbenchOutcome(requested=requested, errors=[f"pgbench timed out after {timeout:g}s"])
    outcome = parse_pgbench(done.stdout, done.stderr, requested)
    if done.returncode != 0 and not outcome.errors:
        outcome.errors.append(f"pgbench exited with status {done.returncode}")
    return outcome


def init_pgbench_data(port: int) -> None:
    done = subprocess.run(pgbench_argv(port, "-i", "-s", "1", "-q"), capture_output=True, text=True,
                          env=pgbench_env(), check=False)
    if done.returncode != 0:
        raise BenchError(f"pgbench -i failed: {done.stderr.strip()}")


# --- CPU accounting --------------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int) -> int:
    """utime + stime of process `pid` (all its threads) and of its running children (a
    proxy's workers), in clock ticks."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(child) for child in f.read().split()]
    except OSError:
        children = []
    return _own_cpu_ticks(pid) + sum(_own_cpu_ticks(child) for child in children)


def _own_cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # Field 2 (comm) is in parentheses and may hold spaces: count fields after its ')'.
    # That list starts with field 3, so fields 14 and 15 are at indexes 11 and 12.
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def measured_run(target: Target, mode: str, clients: int, per_client: int, timeout: float,
                 script: str | None = None, round_no: int = 1) -> RunResult:
    pid = target.pid
    before = cpu_ticks(pid) if pid else 0
    outcome = run_pgbench(target.port, mode, clients, per_client, timeout, script, target.sslmode)
    cpu_us = None
    # An exited but not yet reaped pooler still has its /proc entry, so this read is safe.
    if pid and outcome.processed:
        cpu_us = (cpu_ticks(pid) - before) / CLOCK_TICKS * 1e6 / outcome.processed
    return RunResult(target.name, mode, clients, outcome, cpu_us, round_no)


# --- processes -------------------------------------------------------------------------------


@contextlib.contextmanager
def cleanup_shielded() -> Iterator[contextlib.ExitStack]:
    """An ExitStack whose cleanup a second Ctrl-C or a SIGTERM cannot cut short."""
    stack = contextlib.ExitStack()
    try:
        yield stack
    finally:
        # Interrupting the cleanup would leave a cluster or a pooler running behind us.
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            stack.close()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def log_tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:]).rstrip()
    except OSError:
        return ""


_LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d [\d:.,]+ (UTC )?(\[\d+\] )?")
_ADDRESS = re.compile(r"\b(\d{1,3}(?:\.\d{1,3}){3}):\d+\b")
_PROBLEM_WORDS = ("WARNING", "ERROR", "FATAL", "Traceback")


def logged_problems(log_path: str, limit: int = MAX_LOGGED_PROBLEMS) -> list[str]:
    """A pooler's warnings and errors, each distinct line once with how often it occurred."""
    counts: dict[str, int] = {}
    for line in log_tail(log_path, lines=100_000).splitlines():
        if any(word in line for word in _PROBLEM_WORDS):
            # Without timestamp and client port, the same event from many clients is one line.
            key = _ADDRESS.sub(r"\1:PORT", _LOG_PREFIX.sub("", line.strip()))
            counts[key] = counts.get(key, 0) + 1
    lines = [f"{line} (x{n})" if n > 1 else line for line, n in counts.items()]
    if len(lines) > limit:
        lines = [*lines[:limit], f"... and {len(lines) - limit} other distinct lines"]
    return lines


def wait_for_log(proc: subprocess.Popen[bytes], log_path: str, needle: str, what: str) -> None:
    """Wait until `proc` logs `needle` (its "ready" line); fail if it exits or takes too long."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if needle in log_tail(log_path, lines=200):
            return
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with status {proc.returncode}:\n{log_tail(log_path)}")
        time.sleep(0.05)
    raise BenchError(f"{what} did not log {needle!r} within {START_TIMEOUT:g}s:\n{log_tail(log_path)}")


def spawn(stack: contextlib.ExitStack, argv: list[str], log_path: str,
          **popen: object) -> subprocess.Popen[bytes]:
    """Start a server process whose stop is registered on `stack` before anything else happens."""
    with open(log_path, "wb") as log_file:
        # A session of its own: the terminal's Ctrl-C reaches only us, and we stop it in order.
        proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, **popen)
    stack.callback(stop_process, proc)
    return proc


def make_workdir(stack: contextlib.ExitStack, cluster: Cluster, prefix: str) -> str:
    workdir = tempfile.mkdtemp(prefix=prefix)
    stack.callback(shutil.rmtree, workdir, ignore_errors=True)
    # PgBouncer runs as the cluster's OS user when we are root, and must read its files.
    cluster.runner.chown(workdir)
    return workdir


# --- targets ---------------------------------------------------------------------------------


def start_cluster(stack: contextlib.ExitStack, pgbench_data: bool = True) -> Cluster:
    cluster = Cluster.create(free_port(), settings={"max_connections": str(MAX_CONNECTIONS)})
    stack.callback(cluster.destroy)
    cluster.start()
    cluster.add_user(USER, PASSWORD, auth="scram-sha-256")
    cluster.add_database(DATABASE, owner=USER)
    if pgbench_data:
        init_pgbench_data(cluster.port)
    return cluster


def pgbouncer_files(cluster: Cluster, port: int, workdir: str, max_client_conn: int = 500,
                    extra: dict[str, str] | None = None) -> str:
    """Write pgbouncer.ini and its userlist into `workdir`; return the ini's path. `extra`:
    more [pgbouncer] settings (bench_tls's TLS keys)."""
    # The role's SCRAM secret: PgBouncer checks clients with it and, since the client proved
    # it knows the password, logs in to PostgreSQL with the same keys.
    secret = cluster.sql(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{USER}'")
    userlist = os.path.join(workdir, "userlist.txt")
    ini = os.path.join(workdir, "pgbouncer.ini")
    settings = {
        "listen_addr": "127.0.0.1",
        "listen_port": str(port),
        "unix_socket_dir": "",
        "auth_type": "scram-sha-256",
        "auth_file": userlist,
        "pool_mode": "transaction",
        "default_pool_size": str(POOL_SIZE),
        "max_client_conn": str(max_client_conn),
        # trio_pgdog logs connections at DEBUG only; keep logging cost out of the comparison.
        "log_connections": "0",
        "log_disconnections": "0",
        **(extra or {}),
    }
    files = {
        userlist: f'"{USER}" "{secret}"\n',
        ini: f"[databases]\n{DATABASE} = host=127.0.0.1 port={cluster.port} dbname={DATABASE}\n\n"
             "[pgbouncer]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()),
    }
    for path, text in files.items():
        with open(path, "w") as f:
            f.write(text)
        cluster.runner.chown(path)
    return ini


def start_pgbouncer(stack: contextlib.ExitStack, cluster: Cluster, binary: str,
                    max_client_conn: int = 500, extra: dict[str, str] | None = None) -> Target:
    workdir = make_workdir(stack, cluster, "trio_pgdog-bench-pgbouncer-")
    port = free_port()
    ini = pgbouncer_files(cluster, port, workdir, max_client_conn, extra)
    log_path = os.path.join(workdir, "pgbouncer.log")
    as_user = cluster.runner.as_user
    # PgBouncer refuses to run as root. Popen(user=...) rather than runuser, so that the pid we
    # measure is PgBouncer's own and not that of a runuser parent.
    ids = {} if as_user is None else {"user": as_user.pw_uid, "group": as_user.pw_gid, "extra_groups": []}
    proc = spawn(stack, [binary, ini], log_path, cwd=workdir, **ids)
    wait_for_log(proc, log_path, f"listening on 127.0.0.1:{port}", "PgBouncer")
    return Target(PGBOUNCER, port, proc, log_path)


def trio_pgdog_files(cluster: Cluster, port: int, workdir: str, key: str = "trio_pgdog",
                     general: str = "") -> tuple[str, str]:
    """pgdog.toml and users.toml for target `key`; `general`: more [general] lines."""
    pgdog_toml = f"""[general]
host = "127.0.0.1"
port = {port}
pooler_mode = "transaction"
default_pool_size = {POOL_SIZE}
auth_type = "scram"
{general}
[[databases]]
name = "{DATABASE}"
host = "127.0.0.1"
port = {cluster.port}
role = "primary"
"""
    if key == "trio_pgdog_workers":
        pgdog_toml = pgdog_toml.replace("\n\n[[databases]]", "\nworkers = 2\n\n[[databases]]", 1)
    pgdog_toml += hook_config(key, workdir)
    if key == "trio_pgdog_split":
        pgdog_toml += f"""
[[databases]]
name = "{DATABASE}"
host = "localhost"
port = {cluster.port}
role = "replica"
"""
    users_toml = f"""[[users]]
name = "{USER}"
database = "{DATABASE}"
password = "{PASSWORD}"
"""
    paths = os.path.join(workdir, "pgdog.toml"), os.path.join(workdir, "users.toml")
    for path, text in zip(paths, (pgdog_toml, users_toml), strict=True):
        with open(path, "w") as f:
            f.write(text)
    return paths


def hook_config(key: str, workdir: str) -> str:
    """The pgdog.toml lines that enable the hook a hook target measures."""
    if key == "trio_pgdog_logger":
        return '\n[hooks.query_logger]\nenabled = true\nformat = "json"\npath = "queries.log"\n'
    if key == "trio_pgdog_table_access":
        return '\n[hooks.table_access]\nenabled = true\ntables = ["secrets", "pg_catalog.pg_authid"]\n'
    if key == "trio_pgdog_plugin":
        return f'\n[[plugins]]\nname = "{build_noop_plugin(workdir)}"\n'
    return ""


def build_noop_plugin(workdir: str) -> str:
    """Compile the no-op native plugin into `workdir`; its path."""
    library = os.path.join(workdir, "libnoop.so")
    done = subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-I", HEADER_DIR, "-o", library, NOOP_PLUGIN],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"could not build the no-op plugin with gcc: {done.stderr.strip()}")
    return library


def start_trio_pgdog(stack: contextlib.ExitStack, cluster: Cluster, key: str = "trio_pgdog",
                     probe_out: str | None = None, general: str = "") -> Target:
    """`probe_out`: run it under trio_pgdog.bench_probe, which writes its hook path's CPU time
    to that file when it exits. `general`: more [general] lines for pgdog.toml."""
    workdir = make_workdir(stack, cluster, "trio_pgdog-bench-proxy-")
    port = free_port()
    metrics_port = free_port() if key == METRICS_KEY else None
    if metrics_port is not None:
        general += f'openmetrics_host = "127.0.0.1"\nopenmetrics_port = {metrics_port}\n'
    config, users = trio_pgdog_files(cluster, port, workdir, key, general)
    log_path = os.path.join(workdir, "proxy.log")
    # The proxy exactly as a user runs it, so its CPU time is the whole process's.
    module = "trio_pgdog" if probe_out is None else "trio_pgdog.bench_probe"
    argv = [sys.executable, "-m", module, "--config", config, "--users", users]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if probe_out is not None:
        env["TRIO_PGDOG_PROBE_OUT"] = probe_out
    proc = spawn(stack, argv, log_path, cwd=workdir, env=env)
    wait_for_log(proc, log_path, f"listening on 127.0.0.1:{port}", "trio_pgdog")
    if key == "trio_pgdog_workers":
        wait_for_log(proc, log_path, f"[worker 1] trio_pgdog.app: listening on 127.0.0.1:{port}",
                     "trio_pgdog")
        wait_for_log(proc, log_path, f"[worker 0] trio_pgdog.app: listening on 127.0.0.1:{port}",
                     "trio_pgdog")
    if metrics_port is not None:
        scrape_while_open(stack, metrics_port)
    return Target(TARGET_KEYS[key], port, proc, log_path)


def scrape_while_open(stack: contextlib.ExitStack, port: int) -> None:
    """GET /metrics every SCRAPE_INTERVAL seconds in a thread, until `stack` closes, as a
    Prometheus server would; a failed scrape is a problem of the run (logged, counted)."""
    stop = threading.Event()

    def scrape() -> None:
        while not stop.wait(SCRAPE_INTERVAL):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    r.read()
            except OSError as exc:
                progress(f"  /metrics scrape failed: {exc}")

    thread = threading.Thread(target=scrape, name="bench-scraper", daemon=True)
    thread.start()
    stack.callback(thread.join)
    stack.callback(stop.set)


def find_pgbouncer() -> str | None:
    # Debian installs it in /usr/sbin, which a non-root PATH often lacks.
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/local/sbin")


def start_target(key: str, stack: contextlib.ExitStack, cluster: Cluster, pgbouncer: str | None,
                 max_client_conn: int = 500, tls: TlsSetup | None = None) -> Target:
    """`tls`: the TLS targets' PostgreSQL and certificates (required for those targets)."""
    if key == "direct":
        return Target(DIRECT, cluster.port)
    if key in TLS_TARGETS:
        from .bench_tls import start_tls_target

        assert tls is not None
        return start_tls_target(key, stack, tls, pgbouncer)
    if key == "pgbouncer":
        assert pgbouncer is not None
        return start_pgbouncer(stack, cluster, pgbouncer, max_client_conn)
    return start_trio_pgdog(stack, cluster, key)


# --- the plan --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    targets: tuple[str, ...]
    clients: tuple[int, ...]
    transactions: int
    prepared: bool
    timeout: float
    pgbench: bool = True          # False: the memory figure alone
    idle_clients: int = IDLE_CLIENTS  # for the memory figure; 0: none
    rounds: int = 1               # of the main comparison

    def modes_for(self, target_key: str) -> tuple[str, ...]:
        # PgBouncer 1.18 keeps no prepared statements across transactions in transaction mode.
        if self.prepared and target_key not in PGBOUNCER_KEYS:
            return (*MODES, PREPARED)
        return MODES

    def per_client(self, clients: int) -> int:
        """pgbench -t: the same total number of transactions whatever the client count."""
        return max(1, math.ceil(self.transactions / clients))


def warm_up(target: Target, plan: Plan, script: str | None = None) -> None:
    """A run not reported: fills the pool and Python's caches so that the first measured run
    does not pay for opening server connections."""
    run_pgbench(target.port, "simple", RATIO_CLIENTS, WARMUP_TRANSACTIONS_PER_CLIENT, plan.timeout,
                script, target.sslmode)


def start_targets(keys: Sequence[str], stack: contextlib.ExitStack, cluster: Cluster,
                  pgbouncer: str | None, tls: TlsSetup | None,
                  problems: list[str]) -> dict[str, Target]:
    """The main comparison's targets, all started at once (on `stack`), by key; one that does
    not start is a problem of the run."""
    started = {}
    for key in keys:
        try:
            started[key] = start_target(key, stack, cluster, pgbouncer, tls=tls)
        except (BenchError, EmbeddedError) as exc:
            problems.append(f"{TARGET_KEYS[key]} did not start: {exc}")
            continue
        progress(f"{started[key].name} on port {started[key].port}")
    return started


def rotated(items: Sequence[str], n: int) -> list[str]:
    """`items` starting at its n-th: each round another target runs first."""
    k = n % len(items) if items else 0
    return [*items[k:], *items[:k]]


def compare_targets(targets: dict[str, Target], plan: Plan) -> list[RunResult]:
    """Each (mode, clients) point in plan.rounds rounds, every running target once a round,
    in an order rotated by one each round; all targets keep running meanwhile, so that the
    runs of one round see the same machine."""
    for target in targets.values():
        warm_up(target, plan)
    alive = list(targets)
    results = []
    for mode, clients in itertools.product((*MODES, PREPARED), plan.clients):
        for n in range(plan.rounds):
            results += run_round(targets, alive, plan, mode, clients, n)
    return results


def run_round(targets: dict[str, Target], alive: list[str], plan: Plan, mode: str, clients: int,
              n: int) -> list[RunResult]:
    """Round n + 1 at one point: a run of each target in `alive` that has `mode`; a target
    that exits is taken out of `alive`."""
    results = []
    for key in rotated([k for k in alive if mode in plan.modes_for(k)], n):
        result = measured_run(targets[key], mode, clients, plan.per_client(clients), plan.timeout,
                              round_no=n + 1)
        progress(format_progress(result, plan.rounds))
        results.append(result)
        if death := targets[key].exited():
            # Its remaining runs would only repeat "connection refused".
            result.outcome.errors.append(death)
            alive.remove(key)
    return results


@dataclass
class Findings:
    results: list[RunResult] = field(default_factory=list)
    costs: list[HookCost] = field(default_factory=list)
    probes: list[HookProbe] = field(default_factory=list)
    memory: list[MemoryFigure] = field(default_factory=list)
    sharding: list[ShardingCost] = field(default_factory=list)
    hashes: list[HashCost] = field(default_factory=list)
    cross_shard: list[CrossShardRun] = field(default_factory=list)


def run_plan(plan: Plan, problems: list[str]) -> Findings:
    pgbouncer = find_pgbouncer()
    keys = [k for k in plan.targets
            if (k not in PGBOUNCER_KEYS or pgbouncer) and k not in HOOK_TARGETS
            and k not in (SHARDED_KEY, CROSS_SHARD_KEY)]
    hook_keys = [k for k in plan.targets if k in HOOK_TARGETS] if plan.pgbench else []
    if set(PGBOUNCER_KEYS) & set(plan.targets) and not pgbouncer:
        problems.append("PgBouncer is not installed (apt-get install -y pgbouncer): its rows are skipped.")
    found = Findings()
    with cleanup_shielded() as stack:
        if not plan.pgbench:
            progress("starting a throw-away PostgreSQL ...")
            cluster = start_cluster(stack, pgbench_data=False)
            found.memory = measure_memory(plan, keys, cluster, pgbouncer, problems)
            return found
        progress("starting a throw-away PostgreSQL and loading pgbench -i -s 1 ...")
        cluster = start_cluster(stack)
        tls = None
        if set(TLS_TARGETS) & set(keys):
            from .bench_tls import check_server_tls, start_tls_setup

            # One PostgreSQL with ssl = on for both TLS targets; None: a problem says why.
            tls = start_tls_setup(stack, problems)
            keys = [k for k in keys if k not in TLS_TARGETS or tls]
        # The compared targets stop before the hook, sharding and memory runs start theirs.
        with cleanup_shielded() as targets_stack:
            targets = start_targets(keys, targets_stack, cluster, pgbouncer, tls, problems)
            found.results = compare_targets(targets, plan)
            for key, target in targets.items():
                if tls and key in TLS_TARGETS:
                    problems += check_server_tls(tls, target)
                # Read before the work directory (and the log with it) is removed.
                problems += [f"{target.name} logged: {line}" for line in logged_problems(target.log_path)]
        found.costs = measure_hook_costs(plan, hook_keys, cluster, problems) if hook_keys else []
        found.probes = [probe for key in hook_keys for mode in plan.modes_for("trio_pgdog")
                        if (probe := probe_hook_path(plan, key, mode, cluster, problems)) is not None]
        if SHARDED_KEY in plan.targets:
            from .bench_sharded import hash_costs, measure_sharding

            found.sharding = measure_sharding(plan, cluster, problems)
            found.hashes = hash_costs()
        if CROSS_SHARD_KEY in plan.targets:
            from .bench_cross_shard import measure_cross_shard

            found.cross_shard = measure_cross_shard(plan, cluster, problems)
        found.memory = measure_memory(plan, keys, cluster, pgbouncer, problems)
    return found


def measure_memory(plan: Plan, keys: Sequence[str], cluster: Cluster, pgbouncer: str | None,
                   problems: list[str]) -> list[MemoryFigure]:
    """Each pooler's RSS with no clients and with plan.idle_clients idle logged-in ones, each
    in a fresh process (trio_pgdog.bench_memory)."""
    clients = plan.idle_clients
    if not clients:
        return []
    # Our clients' sockets, and the pooler's (it inherits the limit), plus some to spare.
    limit = raise_fd_limit(clients + 1000)
    if limit < clients + 100:
        problems.append(f"memory per idle client: the file descriptor limit is {limit}; "
                        f"{clients:,} clients need more (ulimit -n)")
        return []
    figures = []
    for key in [k for k in keys if k in ("pgbouncer", "trio_pgdog")]:
        with cleanup_shielded() as stack:
            try:
                target = start_target(key, stack, cluster, pgbouncer, max_client_conn=clients + 100)
                assert target.pid is not None
                figure = measure_sync(target.name, target.pid, target.port, clients,
                                      USER, PASSWORD, DATABASE)
            except (BenchError, EmbeddedError, OSError, IdleClientError, trio.TooSlowError) as exc:
                problems.append(f"memory per idle client: {TARGET_KEYS[key]}: {exc!r}")
                continue
            progress(f"  {memory_line(figure)}")
            figures.append(figure)
            problems += [f"{target.name} logged: {line}" for line in logged_problems(target.log_path)]
    return figures


def probe_hook_path(plan: Plan, key: str, mode: str, cluster: Cluster,
                    problems: list[str]) -> HookProbe | None:
    """One run of hook target `key` at RATIO_CLIENTS with its hook path timed from inside."""
    with cleanup_shielded() as stack:
        workdir = make_workdir(stack, cluster, "trio_pgdog-bench-probe-")
        out = os.path.join(workdir, "probe.json")
        try:
            target = start_trio_pgdog(stack, cluster, key, probe_out=out)
        except (BenchError, EmbeddedError) as exc:
            problems.append(f"the probe of {TARGET_KEYS[key]} did not start: {exc}")
            return None
        warm_up(target, plan)
        outcome = run_pgbench(target.port, mode, RATIO_CLIENTS, plan.per_client(RATIO_CLIENTS),
                              plan.timeout)
        assert target.proc is not None
        stop_process(target.proc)   # the probe writes its file as the proxy exits
        try:
            with open(out) as f:
                report = json.load(f)
        except (OSError, ValueError) as exc:
            problems.append(f"the probe of {target.name} {mode} wrote no result: {exc}")
            return None
    # The warm-up's statements went through the hook path too: count them.
    statements = outcome.processed + RATIO_CLIENTS * WARMUP_TRANSACTIONS_PER_CLIENT
    if not outcome.processed or outcome.not_done:
        problems.append(f"the probe of {target.name} {mode} did not complete")
        return None
    timed = {name: (v["ns"], v["calls"]) for name, v in report.items() if name != "clock_ns"}
    probe = HookProbe(target.name, mode, statements, timed, report["clock_ns"])
    progress(f"  probe: {target.name} {mode}: {probe.net_us:.1f} µs per statement "
             f"({probe.raw_us:.1f} µs with the clock reads)")
    return probe


def measure_hook_costs(plan: Plan, hook_keys: Sequence[str], cluster: Cluster,
                       problems: list[str]) -> list[HookCost]:
    """Each hook target against plain trio_pgdog, all running at once, in HOOK_ROUNDS rounds
    of short runs at RATIO_CLIENTS: plain, then each hook target (the reverse order every
    other round, so that a drift of the machine does not favour one side)."""
    per_client = plan.per_client(RATIO_CLIENTS * HOOK_ROUNDS)
    with cleanup_shielded() as stack:
        try:
            plain = start_target("trio_pgdog", stack, cluster, None)
            hooked = [start_target(key, stack, cluster, None) for key in hook_keys]
        except (BenchError, EmbeddedError) as exc:
            problems.append(f"the hook cost runs did not start: {exc}")
            return []
        progress(f"hook cost: {len(hooked)} hook target(s) against {plain.name}, "
                 f"{HOOK_ROUNDS} rounds of {per_client * RATIO_CLIENTS:,} transactions")
        for target in (plain, *hooked):
            warm_up(target, plan)
        modes = plan.modes_for("trio_pgdog")
        costs = {(t.name, mode): HookCost(t.name, mode) for t in hooked for mode in modes}
        for n in range(HOOK_ROUNDS):
            for mode in modes:
                order = [plain, *hooked] if n % 2 == 0 else [*hooked, plain]
                cpu = {t.name: measured_run(t, mode, RATIO_CLIENTS, per_client, plan.timeout)
                       for t in order}
                for t in hooked:
                    pair = (cpu[plain.name].cpu_us_per_txn, cpu[t.name].cpu_us_per_txn)
                    if None in pair or cpu[t.name].outcome.not_done:
                        problems.append(f"hook cost: {t.name} {mode} round {n + 1} did not complete")
                        continue
                    costs[t.name, mode].pairs.append(pair)  # type: ignore[arg-type]
            progress(f"  round {n + 1}: " + ", ".join(
                f"{c.target} {c.mode} {c.pairs[-1][1] - c.pairs[-1][0]:+.1f} µs"
                for c in costs.values() if len(c.pairs) == n + 1))
        for target in (plain, *hooked):
            problems += [f"{target.name} logged: {line}" for line in logged_problems(target.log_path)]
    return [c for c in costs.values() if c.pairs]


# --- report ----------------------------------------------------------------------------------


def progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def format_progress(r: RunResult, rounds: int = 1) -> str:
    tps = f"{r.outcome.tps:.0f} tps" if r.outcome.tps is not None else "no tps"
    cpu = f", {r.cpu_us_per_txn:.1f} µs CPU/txn" if r.cpu_us_per_txn is not None else ""
    failed = f", {r.outcome.not_done} failed" if r.outcome.not_done else ""
    which = f"round {r.round}/{rounds}: " if rounds > 1 else ""
    return f"  {which}{r.target} {r.mode} {clients_label(r.clients)}: {tps}{cpu}{failed}"


def clients_label(n: int) -> str:
    return f"{n} client" + ("s" if n != 1 else "")


Point = tuple[str, str, int]   # (target, mode, clients)


def by_point(results: Sequence[RunResult]) -> dict[Point, list[RunResult]]:
    """Each point's runs, one a round, the points in the order they first ran."""
    groups: dict[Point, list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.target, r.mode, r.clients), []).append(r)
    return groups


def tps_of(r: RunResult) -> float | None:
    return r.outcome.tps


def cpu_of(r: RunResult) -> float | None:
    return r.cpu_us_per_txn


def known(runs: Sequence[RunResult], figure: Callable[[RunResult], float | None]) -> list[float]:
    return sorted(x for r in runs if (x := figure(r)) is not None)


def median_run(runs: Sequence[RunResult]) -> RunResult:
    """One point's rounds as one run: median TPS and CPU µs/txn, transactions summed."""
    tps, cpu = known(runs, tps_of), known(runs, cpu_of)
    outcome = PgbenchOutcome(requested=sum(r.outcome.requested for r in runs),
                             processed=sum(r.outcome.processed for r in runs),
                             failed=sum(r.outcome.failed for r in runs),
                             tps=statistics.median(tps) if tps else None)
    first = runs[0]
    return RunResult(first.target, first.mode, first.clients, outcome,
                     statistics.median(cpu) if cpu else None, round=0)


def medians(results: Sequence[RunResult]) -> list[RunResult]:
    return [median_run(runs) for runs in by_point(results).values()]


def spread_cell(values: Sequence[float], spec: str) -> str:
    """The median, and with several rounds their range: "5,210 (4,980-5,400)"."""
    if not values:
        return "-"
    median = format(statistics.median(values), spec)
    if len(values) == 1:
        return median
    return f"{median} ({format(min(values), spec)}-{format(max(values), spec)})"


def markdown_table(results: Sequence[RunResult]) -> str:
    lines = ["| target | mode | clients | TPS | CPU µs/txn | failed |",
             "|---|---|---:|---:|---:|---:|"]
    for (target, mode, clients), runs in by_point(results).items():
        tps = spread_cell(known(runs, tps_of), ",.0f")
        cpu = spread_cell(known(runs, cpu_of), ".1f")
        failed = sum(r.outcome.not_done for r in runs)
        lines.append(f"| {target} | {mode} | {clients} | {tps} | {cpu} | {failed} |")
    return "\n".join(lines)


def find(results: Sequence[RunResult], target: str, mode: str, clients: int) -> RunResult | None:
    return next((r for r in results if (r.target, r.mode, r.clients) == (target, mode, clients)), None)


def round_ratios(results: Sequence[RunResult], ours: str, theirs: str, mode: str,
                 figure: Callable[[RunResult], float | None]) -> list[float]:
    """ours ÷ theirs at RATIO_CLIENTS, one ratio a round: the two runs of a round ran one
    shortly after the other, under the same load, which runs minutes apart do not share."""
    points = by_point(results)
    mine, other = ({r.round: figure(r) for r in points.get((target, mode, RATIO_CLIENTS), [])}
                   for target in (ours, theirs))
    return [x / y for n, x in mine.items() if x is not None and (y := other.get(n))]


def ratio_text(ratios: Sequence[float]) -> str:
    """The median ratio, and with several rounds each round's: "0.97x (rounds 0.95 / 0.99)"."""
    median = f"{statistics.median(ratios):.2f}x"
    if len(ratios) == 1:
        return median
    return f"{median} (rounds {' / '.join(f'{x:.2f}' for x in ratios)})"


def ratio_line(what: str, ratios: Sequence[float], passes: Callable[[float], bool], goal: str) -> str:
    if not ratios:
        return f"- {what}: n/a (no {PGBOUNCER} or {TRIO_PGDOG} figure)"
    verdict = "PASS" if passes(statistics.median(ratios)) else "MISS"
    return f"- {what}: {ratio_text(ratios)}; target {goal} **{verdict}**"


def ratio_lines(results: Sequence[RunResult]) -> list[str]:
    lines = []
    for mode in MODES:
        where = f"{mode}, {RATIO_CLIENTS} clients"
        cpu = round_ratios(results, TRIO_PGDOG, PGBOUNCER, mode, cpu_of)
        tps = round_ratios(results, TRIO_PGDOG, PGBOUNCER, mode, tps_of)
        lines.append(ratio_line(f"{where}, CPU/txn {TRIO_PGDOG} ÷ {PGBOUNCER}", cpu,
                                lambda x: x <= MAX_CPU_RATIO, f"≤ {MAX_CPU_RATIO:g}x"))
        lines.append(ratio_line(f"{where}, TPS {TRIO_PGDOG} ÷ {PGBOUNCER}", tps,
                                lambda x: x >= MIN_TPS_RATIO, f"≥ {MIN_TPS_RATIO:g}x"))
        lines += workers_lines(results, mode)
        lines += metrics_lines(results, mode)
    return lines


def metrics_lines(results: Sequence[RunResult], mode: str) -> list[str]:
    """The proxy with /metrics scraped every second next to the same proxy unscraped (the
    issue's bar: within noise, so no PASS or MISS)."""
    rows = medians(results)
    scraped = find(rows, TRIO_PGDOG_METRICS, mode, RATIO_CLIENTS)
    plain = find(rows, TRIO_PGDOG, mode, RATIO_CLIENTS)
    if scraped is None or plain is None:
        return []
    parts = []
    if cpu := round_ratios(results, TRIO_PGDOG_METRICS, TRIO_PGDOG, mode, cpu_of):
        parts.append(f"CPU/txn {plain.cpu_us_per_txn:.1f} → {scraped.cpu_us_per_txn:.1f} µs, "
                     f"{ratio_text(cpu)}")
    if tps := round_ratios(results, TRIO_PGDOG_METRICS, TRIO_PGDOG, mode, tps_of):
        parts.append(f"TPS {ratio_text(tps)}")
    return [f"- {mode}, {RATIO_CLIENTS} clients, {TRIO_PGDOG_METRICS} ÷ {TRIO_PGDOG}: "
            + "; ".join(parts)] if parts else []


def workers_lines(results: Sequence[RunResult], mode: str) -> list[str]:
    """TPS with `workers = 2` next to PgBouncer and next to one worker, round by round (no
    target yet)."""
    lines = []
    for other in (PGBOUNCER, TRIO_PGDOG):
        if ratios := round_ratios(results, TRIO_PGDOG_WORKERS, other, mode, tps_of):
            lines.append(f"- {mode}, {RATIO_CLIENTS} clients, TPS {TRIO_PGDOG_WORKERS} ÷ "
                         f"{other}: {ratio_text(ratios)}")
    return lines


def hook_cost_lines(costs: Sequence[HookCost]) -> list[str]:
    """Proxy CPU per statement that each hook adds (pgbench -S: one statement a transaction)."""
    lines = []
    for c in costs:
        plain = statistics.median(p for p, _h in c.pairs)
        hooked = statistics.median(h for _p, h in c.pairs)
        lines.append(f"- {c.mode}, {c.target}: {c.median:+.1f} µs per statement (rounds: "
                     f"{', '.join(f'{x:+.0f}' for x in c.extras)}; medians {plain:.1f} → {hooked:.1f} µs)")
    return lines


def plugin_verdict(target: str, extra_us: float) -> str:
    """The no-op plugin's target ("" for other hooks)."""
    if target != TRIO_PGDOG_PLUGIN:
        return ""
    return f"; target < {MAX_PLUGIN_US:g} µs **{'PASS' if extra_us < MAX_PLUGIN_US else 'MISS'}**"


def hook_probe_lines(probes: Sequence[HookProbe]) -> list[str]:
    lines = []
    for p in probes:
        parts = ", ".join(f"{name} {ns / p.statements / 1000:.1f}" for name, (ns, calls) in p.timed.items()
                          if calls)
        lines.append(f"- {p.mode}, {p.target}: {p.net_us:.1f} µs per statement ({parts} µs, of which "
                     f"{p.raw_us - p.net_us:.1f} µs are the timer's own clock reads)"
                     + plugin_verdict(p.target, p.net_us))
    return lines


def error_lines(results: Sequence[RunResult]) -> list[str]:
    lines = [f"- {r.target} {r.mode} {clients_label(r.clients)}: {error}"
             for r in results for error in r.outcome.errors]
    return list(dict.fromkeys(lines))   # the same error in several rounds: once


def busy_machine_note(load_before: float) -> str | None:
    # pgbench, PostgreSQL and the pooler already share the cores; anything else running skews
    # TPS most, and CPU per transaction a little (cache misses, context switches).
    if load_before < BUSY_LOAD:
        return None
    return (f"The 1-minute load average was {load_before:.2f} at the start: other programs (or a run "
            "that just ended) were using the CPUs, so TPS may be lower and noisier than on an idle machine.")


def source_revision() -> str:
    """The git commit the proxy ran from ("-dirty": with uncommitted changes), or "" if unknown."""
    # Others edit the proxy while benchmarks run: a table is only comparable with its revision.
    try:
        done = subprocess.run(["git", "-C", CHECKOUT, "describe", "--always", "--dirty"],
                              capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def memory_line(f: MemoryFigure) -> str:
    verdict = ""
    if f.target == TRIO_PGDOG:
        passes = f.kb_per_client < MAX_IDLE_CLIENT_KB
        verdict = f"; target < {MAX_IDLE_CLIENT_KB:g} KB **{'PASS' if passes else 'MISS'}**"
    return (f"- {f.target}: {f.kb_per_client:.1f} KB per idle client (RSS {f.rss_before_kb / 1024:.1f} MB "
            f"with no client, {f.rss_after_kb / 1024:.1f} MB with {f.clients:,}){verdict}")


RATIOS_OVER_ROUNDS = ", each round's runs against each other, and the median of those ratios"


def rounds_note(rounds: int) -> list[str]:
    if rounds == 1:
        return []
    return ["", f"{rounds} rounds: in each, every target ran once at each point, in an order rotated "
            "by one a round; the table shows the median of the rounds and their range (min-max)."]


def report(found: Findings, plan: Plan, problems: Sequence[str], revision: str) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    version = f"trio_pgdog {__version__}" + (f" at git {revision}" if revision else "")
    results, costs, probes = found.results, found.costs, found.probes
    parts = []
    if plan.pgbench and results:
        parts += [
            f"pgbench -S, scale 1, {plan.transactions:,} transactions per run (-t = that ÷ clients), "
            f"pool size {POOL_SIZE}, {os.cpu_count()} cores, {when}, {version}",
            *rounds_note(plan.rounds),
            "",
            markdown_table(results),
            "",
            f"Ratios at {RATIO_CLIENTS} clients{RATIOS_OVER_ROUNDS if plan.rounds > 1 else ''}:",
            "",
            *ratio_lines(results),
        ]
        if {r.target for r in results} & set(TLS_TARGETS.values()):
            from .bench_tls import tls_section

            parts += tls_section(medians(results))
    else:
        parts += [f"{os.cpu_count()} cores, {when}, {version}"]
    if hook_lines := hook_cost_lines(costs):
        parts += ["", f"Hook cost over plain {TRIO_PGDOG}: proxy CPU per statement at {RATIO_CLIENTS} "
                  f"clients, the median of {HOOK_ROUNDS} rounds each paired with a plain run (the "
                  "whole cost, but runs on a shared machine move by 10-30 µs):", "", *hook_lines]
    if probe_lines := hook_probe_lines(probes):
        parts += ["", f"The hook path measured inside the proxy (thread CPU time of its entry points, "
                  f"{RATIO_CLIENTS} clients, one run each; the no-op plugin's target is judged on "
                  "this):", "", *probe_lines]
    if found.sharding or found.hashes:
        from .bench_sharded import SHARD_ROUNDS, sharding_section

        per_run = plan.per_client(RATIO_CLIENTS * SHARD_ROUNDS) * RATIO_CLIENTS
        parts += sharding_section(found.sharding, found.hashes, per_run)
    if found.cross_shard:
        from .bench_cross_shard import cross_shard_section

        parts += cross_shard_section(found.cross_shard)
    if found.memory:
        parts += ["", f"Memory per idle client: the pooler's RSS (VmRSS) with no client and with "
                  f"{found.memory[0].clients:,} logged-in idle clients (SCRAM, one login first):", "",
                  *map(memory_line, found.memory)]
    if notes := [*(f"- {p}" for p in problems), *error_lines(results)]:
        parts += ["", "Problems:", "", *notes]
    return "\n".join(parts) + "\n"


# --- command line ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m trio_pgdog.bench",
        description="pgbench -S through PostgreSQL, PgBouncer and trio_pgdog: TPS and pooler CPU "
                    "per transaction, compared against the project's targets.")
    p.add_argument("--transactions", type=int, default=None, metavar="N",
                   help="transactions per pgbench run, split over the clients "
                        f"(default {DEFAULT_TRANSACTIONS:,}; with --quick {QUICK_TRANSACTIONS:,})")
    p.add_argument("--quick", action="store_true", help="a short smoke run (one round)")
    p.add_argument("--rounds", type=int, default=None, metavar="N",
                   help="rounds of the main comparison, each running every target once at each "
                        f"mode and client count (default {DEFAULT_ROUNDS}; with --quick 1)")
    p.add_argument("--clients", default=",".join(map(str, CLIENT_COUNTS)), metavar="LIST",
                   help="client counts, comma-separated (default: %(default)s)")
    p.add_argument("--targets", default=",".join(TARGET_KEYS), metavar="LIST",
                   help=f"which of {','.join(TARGET_KEYS)} to run (default: all)")
    p.add_argument("--prepared", action="store_true",
                   help="also run -M prepared against PostgreSQL and trio_pgdog")
    p.add_argument("--timeout", type=float, default=600, metavar="SECONDS",
                   help="give up on one pgbench run after this long (default: %(default)s)")
    p.add_argument("--idle-clients", type=int, default=IDLE_CLIENTS, metavar="N",
                   help="idle logged-in clients for the memory figure (default %(default)s; 0: skip it)")
    p.add_argument("--memory-only", action="store_true",
                   help="only the memory per idle client of PgBouncer and trio_pgdog (about 30 s)")
    p.add_argument("--markdown", metavar="FILE", help="also write the report to FILE")
    return p.parse_args(argv)


def plan_from_args(args: argparse.Namespace) -> Plan:
    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    unknown = [t for t in targets if t not in TARGET_KEYS]
    if unknown:
        raise SystemExit(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(TARGET_KEYS)}")
    try:
        clients = tuple(int(c) for c in args.clients.split(","))
    except ValueError:
        raise SystemExit(f"--clients: expected numbers separated by commas, got {args.clients!r}") from None
    transactions = args.transactions or (QUICK_TRANSACTIONS if args.quick else DEFAULT_TRANSACTIONS)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else DEFAULT_ROUNDS)
    if transactions < 1 or min(clients) < 1 or rounds < 1:
        raise SystemExit("--transactions, --clients and --rounds must be at least 1")
    if args.idle_clients < 0 or (args.memory_only and not args.idle_clients):
        raise SystemExit("--idle-clients must be at least 1 with --memory-only, and never negative")
    return Plan(targets, clients, transactions, args.prepared, args.timeout,
                pgbench=not args.memory_only, idle_clients=args.idle_clients, rounds=rounds)


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = plan_from_args(args)
    # SIGTERM unwinds like Ctrl-C, so the cleanup runs for both.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    revision = source_revision()
    problems: list[str] = []
    if plan.pgbench and (note := busy_machine_note(os.getloadavg()[0])):
        progress(note)
        problems.append(note)
    try:
        found = run_plan(plan, problems)
    except KeyboardInterrupt:
        progress("interrupted; everything the benchmark started has been stopped and removed")
        return 130
    except (BenchError, EmbeddedError) as exc:
        progress(f"benchmark failed: {exc}")
        return 1
    text = report(found, plan, problems, revision)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
