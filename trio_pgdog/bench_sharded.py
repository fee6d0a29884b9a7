"""The sharded target of `python -m trio_pgdog.bench`: what routing by key costs.

Two more throw-away clusters become the two shards of one database, `pgbench_accounts` sharded
on `aid`, loaded with `pgbench -i -s 1` through the sharded proxy itself (its COPY is split row
by row; VACUUM runs on each shard directly). A pgbench script that reads and updates one
account by a random key then runs against that proxy and against the plain proxy in front of
the benchmark's own cluster, which holds all the rows: in SHARD_ROUNDS rounds, alternating, at
RATIO_CLIENTS clients, in each protocol. The report gives both proxies' TPS and CPU per
transaction, and judges the TPS ratio against the target; and the cost of hashing one key,
timed with timeit. See docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import timeit
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from . import speedups
from .bench import (
    DATABASE,
    MODES,
    PASSWORD,
    POOL_SIZE,
    PREPARED,
    RATIO_CLIENTS,
    TRIO_PGDOG_SHARDED,
    USER,
    BenchError,
    Plan,
    RunResult,
    Target,
    cleanup_shielded,
    logged_problems,
    make_workdir,
    measured_run,
    pgbench_argv,
    pgbench_env,
    progress,
    spawn,
    start_cluster,
    start_trio_pgdog,
    wait_for_log,
    warm_up,
)
from .embedded import Cluster, EmbeddedError, free_port
from .router.sharding.hashing import shard_of_int, shard_of_text, shard_of_uuid
from .router.sharding.values import text_hash

SHARDS = 2
SHARD_ROUNDS = 5
ACCOUNTS = 100_000          # pgbench -i -s 1
# The target: routing by key may cost at most 10% of the unsharded proxy's TPS.
MIN_SHARDED_TPS_RATIO = 0.90
# And hashing one key, under this.
MAX_HASH_US = 2.0
# Two statements a transaction, both with the sharding key: each goes to the key's shard.
BY_KEY_SCRIPT = f"""\\set aid random(1, {ACCOUNTS})
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;
"""
LOAD_TIMEOUT = 300.0
# Prepared statements are part of the question (their Bind values carry the key): always run.
SHARDED_MODES = (*MODES, PREPARED)


@dataclass
class ShardingCost:
    """The by-key script through the plain and the sharded proxy, round by round."""

    mode: str
    pairs: list[tuple[RunResult, RunResult]] = field(default_factory=list)  # (plain, sharded)

    def _median(self, side: int, what: str) -> float:
        return statistics.median(_figure(pair[side], what) for pair in self.pairs)

    @property
    def tps(self) -> tuple[float, float]:
        return self._median(0, "tps"), self._median(1, "tps")

    @property
    def cpu(self) -> tuple[float, float]:
        return self._median(0, "cpu"), self._median(1, "cpu")

    @property
    def tps_ratio(self) -> float:
        """The median of the rounds' sharded ÷ plain TPS: each round's two runs are neighbours
        in time, so the machine's drift cancels out better than in a ratio of medians."""
        return statistics.median(_figure(s, "tps") / _figure(p, "tps") for p, s in self.pairs)

    @property
    def passes(self) -> bool:
        return self.tps_ratio >= MIN_SHARDED_TPS_RATIO


def _figure(result: RunResult, what: str) -> float:
    value = result.outcome.tps if what == "tps" else result.cpu_us_per_txn
    assert value is not None  # only complete runs are paired
    return value


@dataclass(frozen=True)
class HashCost:
    group: str      # "public" (the shard_of_* functions) or "bind" (a Bind value's key)
    call: str
    us: float

    @property
    def passes(self) -> bool:
        return self.us < MAX_HASH_US


# --- the shards ------------------------------------------------------------------------------


def sharded_files(shards: Sequence[Cluster], port: int, workdir: str) -> tuple[str, str]:
    """pgdog.toml and users.toml of the sharded proxy; their paths."""
    pgdog_toml = f"""[general]
host = "127.0.0.1"
port = {port}
pooler_mode = "transaction"
default_pool_size = {POOL_SIZE}
auth_type = "scram"
"""
    for shard, cluster in enumerate(shards):
        pgdog_toml += f"""
[[databases]]
name = "{DATABASE}"
host = "127.0.0.1"
port = {cluster.port}
shard = {shard}
"""
    # The other pgbench tables (branches, tellers, history) are omnisharded.
    pgdog_toml += f"""
[[sharded_tables]]
database = "{DATABASE}"
name = "pgbench_accounts"
column = "aid"
data_type = "bigint"
"""
    users_toml = f'[[users]]\nname = "{USER}"\ndatabase = "{DATABASE}"\npassword = "{PASSWORD}"\n'
    paths = os.path.join(workdir, "pgdog.toml"), os.path.join(workdir, "users.toml")
    for path, text in zip(paths, (pgdog_toml, users_toml), strict=True):
        with open(path, "w") as f:
            f.write(text)
    return paths


def start_sharded_proxy(stack: contextlib.ExitStack, shards: Sequence[Cluster]) -> Target:
    workdir = make_workdir(stack, shards[0], "trio_pgdog-bench-sharded-")
    port = free_port()
    config, users = sharded_files(shards, port, workdir)
    log_path = os.path.join(workdir, "proxy.log")
    argv = [sys.executable, "-m", "trio_pgdog", "--config", config, "--users", users]
    proc = spawn(stack, argv, log_path, cwd=workdir, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    wait_for_log(proc, log_path, f"listening on 127.0.0.1:{port}", "trio_pgdog sharded")
    return Target(TRIO_PGDOG_SHARDED, port, proc, log_path)


def _pgbench_init(port: int, steps: str, where: str) -> None:
    done = subprocess.run(pgbench_argv(port, "-i", "-s", "1", "-q", "-I", steps), capture_output=True,
                          text=True, env=pgbench_env(), timeout=LOAD_TIMEOUT, check=False)
    if done.returncode != 0:
        raise BenchError(f"pgbench -i -I {steps} {where} failed: {done.stderr.strip()}")


def load_shards(proxy: Target, shards: Sequence[Cluster]) -> None:
    """pgbench -i -s 1 through the sharded proxy, then a check that every shard holds the
    accounts of its keys."""
    # Drop, create, generate (COPY, split by aid) and primary keys through the proxy; VACUUM
    # on each shard directly, since a VACUUM sent through the sharded proxy fails ("VACUUM
    # cannot run inside a transaction block").
    _pgbench_init(proxy.port, "dtgp", "through the sharded proxy")
    for cluster in shards:
        _pgbench_init(cluster.port, "v", f"on the shard on port {cluster.port}")
    expected = [0] * len(shards)
    for aid in range(1, ACCOUNTS + 1):
        expected[shard_of_int(aid, len(shards))] += 1
    got = [int(c.sql("SELECT count(*) FROM pgbench_accounts", dbname=DATABASE)) for c in shards]
    if got != expected:
        raise BenchError(f"after pgbench -i through the sharded proxy the shards hold {got} accounts; "
                         f"their keys' shards say {expected}")


# --- the rounds ------------------------------------------------------------------------------


def measure_sharding(plan: Plan, cluster: Cluster, problems: list[str]) -> list[ShardingCost]:
    """The plain proxy on `cluster` (all rows) against the sharded proxy on SHARDS new
    clusters, in SHARD_ROUNDS rounds of short runs (plain first in even rounds, last in odd
    ones, so that a drift of the machine favours neither)."""
    per_client = plan.per_client(RATIO_CLIENTS * SHARD_ROUNDS)
    with cleanup_shielded() as stack:
        try:
            progress(f"sharded: starting {SHARDS} more PostgreSQL clusters as shards ...")
            shards = [start_cluster(stack, pgbench_data=False) for _ in range(SHARDS)]
            sharded = start_sharded_proxy(stack, shards)
            progress(f"sharded: pgbench -i -s 1 through {sharded.name} on port {sharded.port} ...")
            load_shards(sharded, shards)
            plain = start_trio_pgdog(stack, cluster, "trio_pgdog")
        except (BenchError, EmbeddedError, subprocess.TimeoutExpired) as exc:
            problems.append(f"the sharded runs did not start: {exc}")
            return []
        workdir = make_workdir(stack, cluster, "trio_pgdog-bench-script-")
        script = os.path.join(workdir, "by_key.sql")
        with open(script, "w") as f:
            f.write(BY_KEY_SCRIPT)
        progress(f"sharded: {plain.name} (1 server) against {sharded.name} ({SHARDS} shards), "
                 f"{SHARD_ROUNDS} rounds of {per_client * RATIO_CLIENTS:,} transactions")
        for target in (plain, sharded):
            warm_up(target, plan, script)
        costs = {mode: ShardingCost(mode) for mode in SHARDED_MODES}
        for n in range(SHARD_ROUNDS):
            for mode in SHARDED_MODES:
                order = [plain, sharded] if n % 2 == 0 else [sharded, plain]
                runs = {t.name: measured_run(t, mode, RATIO_CLIENTS, per_client, plan.timeout, script)
                        for t in order}
                pair = runs[plain.name], runs[sharded.name]
                if any(r.outcome.not_done or r.outcome.tps is None or r.cpu_us_per_txn is None
                       for r in pair):
                    errors = "; ".join(e for r in pair for e in r.outcome.errors[:3])
                    problems.append(f"sharded: {mode} round {n + 1} did not complete: {errors}")
                    continue
                costs[mode].pairs.append(pair)
            progress(f"  round {n + 1}: " + ", ".join(
                f"{c.mode} {_figure(c.pairs[-1][0], 'tps'):.0f} → {_figure(c.pairs[-1][1], 'tps'):.0f} tps"
                for c in costs.values() if len(c.pairs) == n + 1))
        for target in (plain, sharded):
            problems += [f"{target.name} logged: {line}" for line in logged_problems(target.log_path)]
    return [c for c in costs.values() if c.pairs]


# --- hashing ---------------------------------------------------------------------------------


def hash_costs() -> list[HashCost]:
    """What hashing one key costs, µs per call, the best of 5 timeit repeats: the public
    shard_of_* functions, and the router's own path for a key that arrives as a text-format
    Bind value (values.text_hash: parse the text, hash it)."""
    key = uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    text_key = str(key)
    cases = [
        ("public", "shard_of_int(1234567)", lambda: shard_of_int(1234567, SHARDS)),
        ("public", "shard_of_text('customer-1234567')",
         lambda: shard_of_text("customer-1234567", SHARDS)),
        ("public", "shard_of_uuid(uuid.UUID)", lambda: shard_of_uuid(key, SHARDS)),
        ("public", "shard_of_uuid(str)", lambda: shard_of_uuid(text_key, SHARDS)),
        ("bind", "bigint b'1234567'", lambda: text_hash(b"1234567", "bigint") % SHARDS),
        ("bind", "varchar b'customer-1234567'",
         lambda: text_hash(b"customer-1234567", "varchar") % SHARDS),
        ("bind", "uuid b'a0eebc99-...'", lambda: text_hash(text_key.encode(), "uuid") % SHARDS),
    ]
    costs = []
    for group, call, run in cases:
        timer = timeit.Timer(run)
        number, _ = timer.autorange()
        # The lambda's own call is in the figure: a caller pays for one call too.
        best = min(timer.repeat(repeat=5, number=number)) / number
        costs.append(HashCost(group, call, best * 1e6))
    return costs


# --- report ----------------------------------------------------------------------------------


def sharding_lines(costs: Sequence[ShardingCost]) -> list[str]:
    lines = []
    for c in costs:
        (plain_tps, sharded_tps), (plain_cpu, sharded_cpu) = c.tps, c.cpu
        verdict = "PASS" if c.passes else "MISS"
        lines.append(
            f"- {c.mode}: TPS {plain_tps:,.0f} → {sharded_tps:,.0f} ({c.tps_ratio:.2f}x; target "
            f"≥ {MIN_SHARDED_TPS_RATIO:g}x) **{verdict}**; proxy CPU/txn {plain_cpu:.1f} → "
            f"{sharded_cpu:.1f} µs ({sharded_cpu - plain_cpu:+.1f} µs, {sharded_cpu / plain_cpu:.2f}x)")
        for side, name in ((0, "unsharded"), (1, "sharded")):
            tps = " / ".join(f"{_figure(pair[side], 'tps'):,.0f}" for pair in c.pairs)
            cpu = " / ".join(f"{_figure(pair[side], 'cpu'):.1f}" for pair in c.pairs)
            lines.append(f"  - rounds, {name}: TPS {tps}; CPU µs/txn {cpu}")
    return lines


def hash_lines(costs: Sequence[HashCost]) -> list[str]:
    where = "C speedups" if speedups.c is not None else "pure Python (no C speedups)"
    titles = {"public": f"hashing one key ({where}, timeit, best of 5)",
              "bind": "a key sent as a text-format Bind value, parsed and hashed (values.text_hash)"}
    lines = []
    for group, title in titles.items():
        mine = [c for c in costs if c.group == group]
        if not mine:
            continue
        parts = ", ".join(f"{c.call} {c.us:.2f} µs" for c in mine)
        missed = [c.call for c in mine if not c.passes]
        verdict = f"**MISS** ({', '.join(missed)})" if missed else "**PASS**"
        lines.append(f"- {title}: {parts}; target < {MAX_HASH_US:g} µs each {verdict}")
    return lines


def sharding_section(costs: Sequence[ShardingCost], hashes: Sequence[HashCost],
                     per_run: int) -> list[str]:
    if not costs and not hashes:
        return []
    head = (f"Routing by key: the script `{BY_KEY_SCRIPT.splitlines()[1]}` then the UPDATE of the "
            f"same aid (pgbench -f, {RATIO_CLIENTS} clients, {SHARD_ROUNDS} rounds of {per_run:,} "
            f"transactions, alternating) through trio_pgdog in front of one server holding all "
            f"{ACCOUNTS:,} accounts → trio_pgdog with pgbench_accounts sharded on aid over "
            f"{SHARDS} servers; medians of the rounds, the TPS ratio the median of each round's:")
    return ["", head, "", *sharding_lines(costs), *hash_lines(hashes)]
