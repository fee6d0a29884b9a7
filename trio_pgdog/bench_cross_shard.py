"""The cross-shard target of `python -m trio_pgdog.bench`: what merging a SELECT costs.

pgbench_accounts (pgbench -i -s 1, 100,000 rows) sharded on aid over 2, then 3 throw-away
clusters, loaded through the sharded proxy (trio_pgdog.bench_sharded), against the plain proxy
in front of the benchmark's own cluster, which holds all the rows. Each query below has no
sharding key, so the sharded proxy runs it on every shard and merges the answers (a sum of
counts, a k-way merge stopped at the LIMIT, combined groups). One pgbench client per run, so
the latency is 1/TPS; the proxy's CPU per query is read from /proc as for every other target.
See docs/benchmarks.md.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

from .bench import (
    MODES,
    BenchError,
    Plan,
    RunResult,
    cleanup_shielded,
    logged_problems,
    make_workdir,
    measured_run,
    progress,
    start_cluster,
    start_trio_pgdog,
    warm_up,
)
from .bench_sharded import load_shards, start_sharded_proxy
from .embedded import Cluster, EmbeddedError

SHARD_COUNTS = (2, 3)
CLIENTS = 1
QUERIES = {
    "count(*)": "SELECT count(*) FROM pgbench_accounts;",
    "ORDER BY ... LIMIT 10":
        "SELECT aid, abalance FROM pgbench_accounts ORDER BY abalance DESC, aid LIMIT 10;",
    "GROUP BY (100 groups)": "SELECT aid % 100 AS g, count(*), sum(abalance), avg(abalance) "
                             "FROM pgbench_accounts GROUP BY g ORDER BY g;",
}
PER_RUN = 200  # queries per measured run


@dataclass
class CrossShardRun:
    query: str
    mode: str
    shards: int  # 1: the plain proxy in front of the database holding every row
    result: RunResult

    @property
    def latency_ms(self) -> float | None:
        tps = self.result.outcome.tps
        return CLIENTS * 1000 / tps if tps else None


def measure_cross_shard(plan: Plan, cluster: Cluster, problems: list[str]) -> list[CrossShardRun]:
    """Every query in every mode through the plain proxy, then through the sharded one over
    each of SHARD_COUNTS."""
    runs: list[CrossShardRun] = []
    with cleanup_shielded() as outer:
        workdir = make_workdir(outer, cluster, "trio_pgdog-bench-cross-")
        scripts = {}
        for n, (name, sql) in enumerate(QUERIES.items()):
            scripts[name] = os.path.join(workdir, f"query{n}.sql")
            with open(scripts[name], "w") as f:
                f.write(sql + "\n")
        with cleanup_shielded() as stack:
            try:
                plain = start_trio_pgdog(stack, cluster, "trio_pgdog")
            except (BenchError, EmbeddedError) as exc:
                problems.append(f"cross-shard: the plain proxy did not start: {exc}")
                return []
            runs += _runs(plain, 1, plan, scripts, problems)
        for count in SHARD_COUNTS:
            with cleanup_shielded() as stack:
                try:
                    progress(f"cross-shard: {count} shards, pgbench -i -s 1 through the proxy ...")
                    shards = [start_cluster(stack, pgbench_data=False) for _ in range(count)]
                    sharded = start_sharded_proxy(stack, shards)
                    load_shards(sharded, shards)
                except (BenchError, EmbeddedError, subprocess.TimeoutExpired) as exc:
                    problems.append(f"cross-shard: {count} shards did not start: {exc}")
                    continue
                runs += _runs(sharded, count, plan, scripts, problems)
    return runs


def _runs(target, shards: int, plan: Plan, scripts: dict[str, str], problems: list[str]
          ) -> list[CrossShardRun]:
    out = []
    for name, script in scripts.items():
        warm_up(target, plan, script)
        for mode in MODES:
            result = measured_run(target, mode, CLIENTS, PER_RUN, plan.timeout, script)
            if result.outcome.not_done or result.outcome.tps is None:
                problems.append(f"cross-shard: {name} ({mode}, {shards} shards) did not complete: "
                                + "; ".join(result.outcome.errors[:3]))
                continue
            run = CrossShardRun(name, mode, shards, result)
            progress(f"  {name}, {mode}, {shards} shard(s): {run.latency_ms:.2f} ms, "
                     f"{result.cpu_us_per_txn or 0:.0f} µs proxy CPU")
            out.append(run)
    problems += [f"{target.name} logged: {line}" for line in logged_problems(target.log_path)]
    return out


def cross_shard_section(runs: list[CrossShardRun]) -> list[str]:
    if not runs:
        return []
    lines = ["", f"Queries over several shards (no sharding key; {CLIENTS} pgbench client, "
             f"{PER_RUN} queries a run): latency and proxy CPU per query, one database holding "
             "all 100,000 accounts → pgbench_accounts sharded on aid over "
             + " and ".join(map(str, SHARD_COUNTS)) + " servers:", ""]
    for name in QUERIES:
        for mode in MODES:
            mine = sorted((r for r in runs if r.query == name and r.mode == mode),
                          key=lambda r: r.shards)
            if not mine:
                continue
            parts = [f"{'one database' if r.shards == 1 else f'{r.shards} shards'} "
                     f"{r.latency_ms:.2f} ms / {r.result.cpu_us_per_txn or 0:.0f} µs"
                     for r in mine]
            lines.append(f"- `{name}`, {mode}: " + "; ".join(parts))
    return lines
