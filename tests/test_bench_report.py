"""The benchmark's hook-cost arithmetic and wording (trio_pgdog/bench.py); no PostgreSQL."""

from __future__ import annotations

from trio_pgdog import bench


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
