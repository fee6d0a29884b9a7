"""The benchmark's hook-cost arithmetic and wording (trio_pgdog/bench.py); no PostgreSQL."""

from __future__ import annotations

from trio_pgdog import bench
from trio_pgdog.bench_memory import MemoryFigure


def test_paired_rounds_report_the_median_difference():
    cost = bench.HookCost(bench.TRIO_PGDOG_PLUGIN, "simple",
                          [(80.0, 85.0), (90.0, 88.0), (70.0, 79.0), (75.0, 100.0)])
    assert cost.extras == [-2.0, 5.0, 9.0, 25.0]
    assert cost.median == 7.0
    (line,) = bench.hook_cost_lines([cost])
    assert line == ("- simple, trio_pgdog + no-op .so plugin: +7.0 µs per statement (rounds: -2, +5, "
                    "+9, +25; medians 77.5 → 86.5 µs)")


def test_probe_subtracts_the_timers_own_clock_reads_and_judges_the_plugin():
    probe = bench.HookProbe(bench.TRIO_PGDOG_PLUGIN, "extended", 1000,
                            {"from_client": (9_000_000, 1000), "from_server": (0, 0),
                             "server_ready": (2_000_000, 1000)}, clock_ns=600.0)
    assert probe.raw_us == 11.0
    assert probe.net_us == 9.8    # 2,000 timed calls of 0.6 µs each, over 1,000 statements
    (line,) = bench.hook_probe_lines([probe])
    assert line == ("- extended, trio_pgdog + no-op .so plugin: 9.8 µs per statement (from_client 9.0, "
                    "server_ready 2.0 µs, of which 1.2 µs are the timer's own clock reads); "
                    "target < 10 µs **PASS**")
    probe.clock_ns = 0.0
    assert bench.hook_probe_lines([probe])[0].endswith("**MISS**")
    probe.target = bench.TRIO_PGDOG_LOGGER   # no target for the other hooks
    assert bench.hook_probe_lines([probe])[0].endswith("clock reads)")


def test_memory_per_idle_client_is_judged_for_trio_pgdog_only():
    ours = MemoryFigure(bench.TRIO_PGDOG, 2000, 38_000, 45_000)
    theirs = MemoryFigure(bench.PGBOUNCER, 2000, 8_400, 10_400)
    assert ours.kb_per_client == 3.5
    assert bench.memory_line(ours) == ("- trio_pgdog: 3.5 KB per idle client (RSS 37.1 MB with no "
                                       "client, 43.9 MB with 2,000); target < 4 KB **PASS**")
    assert bench.memory_line(theirs) == ("- PgBouncer: 1.0 KB per idle client (RSS 8.2 MB with no "
                                         "client, 10.2 MB with 2,000)")
    assert bench.memory_line(MemoryFigure(bench.TRIO_PGDOG, 1000, 38_000, 46_000)).endswith("**MISS**")


def test_memory_only_report_has_no_pgbench_table():
    plan = bench.plan_from_args(bench.parse_args(["--memory-only", "--idle-clients", "500"]))
    assert not plan.pgbench and plan.idle_clients == 500
    figure = MemoryFigure(bench.TRIO_PGDOG, 500, 38_000, 39_500)
    text = bench.report(bench.Findings(memory=[figure]), plan, [], "abc1234")
    assert "| target |" not in text and "Ratios" not in text
    assert f"trio_pgdog {bench.__version__} at git abc1234" in text.splitlines()[0]
    assert "- trio_pgdog: 3.0 KB per idle client" in text
