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


def _run(target: str, tps: float | None, cpu: float | None, mode: str = "simple",
         clients: int = 16, round_no: int = 1) -> bench.RunResult:
    outcome = bench.PgbenchOutcome(requested=100, processed=100, tps=tps)
    return bench.RunResult(target, mode, clients, outcome, cpu, round_no)


def _rounds(target: str, figures: list[tuple[float | None, float | None]], mode: str = "simple",
            clients: int = 16) -> list[bench.RunResult]:
    """One run per round: (TPS, CPU µs/txn) of round 1, 2, ..."""
    return [_run(target, tps, cpu, mode, clients, n) for n, (tps, cpu) in enumerate(figures, 1)]


def test_sharded_rounds_judge_the_median_of_each_rounds_tps_ratio():
    from trio_pgdog.bench_sharded import ShardingCost, sharding_lines

    plain, sharded = bench.TRIO_PGDOG, bench.TRIO_PGDOG_SHARDED
    cost = ShardingCost("simple", [(_run(plain, 1000, 100), _run(sharded, 950, 110)),
                                   (_run(plain, 800, 120), _run(sharded, 640, 130)),
                                   (_run(plain, 1200, 90), _run(sharded, 1140, 95))])
    assert cost.tps == (1000, 950) and cost.cpu == (100, 110)
    assert round(cost.tps_ratio, 2) == 0.95    # rounds: 0.95, 0.80, 0.95
    assert cost.passes
    first, unsharded, sharded_line = sharding_lines([cost])
    assert first == ("- simple: TPS 1,000 → 950 (0.95x; target ≥ 0.9x) **PASS**; proxy CPU/txn "
                     "100.0 → 110.0 µs (+10.0 µs, 1.10x)")
    assert unsharded == "  - rounds, unsharded: TPS 1,000 / 800 / 1,200; CPU µs/txn 100.0 / 120.0 / 90.0"
    assert sharded_line == "  - rounds, sharded: TPS 950 / 640 / 1,140; CPU µs/txn 110.0 / 130.0 / 95.0"
    cost.pairs[0] = (_run(plain, 1000, 100), _run(sharded, 700, 150))   # 0.70, 0.80, 0.95
    assert not cost.passes and "**MISS**" in sharding_lines([cost])[0]


def test_key_hashing_is_judged_per_call_and_names_the_slow_ones():
    from trio_pgdog.bench_sharded import HashCost, hash_lines

    fast = [HashCost("public", "shard_of_int(1)", 0.12), HashCost("public", "shard_of_uuid(str)", 1.5)]
    (line,) = hash_lines(fast)
    assert line.endswith("shard_of_int(1) 0.12 µs, shard_of_uuid(str) 1.50 µs; target < 2 µs each **PASS**")
    slow = [*fast, HashCost("bind", "uuid b'a0ee'", 2.5)]
    public, bind = hash_lines(slow)
    assert public.endswith("**PASS**")
    assert bind.endswith("uuid b'a0ee' 2.50 µs; target < 2 µs each **MISS** (uuid b'a0ee')")


def test_the_sharded_target_is_selectable_and_only_its_section_is_reported():
    plan = bench.plan_from_args(bench.parse_args(["--targets", "trio_pgdog_sharded", "--quick"]))
    assert plan.targets == ("trio_pgdog_sharded",)
    from trio_pgdog.bench_sharded import HashCost

    found = bench.Findings(hashes=[HashCost("public", "shard_of_int(1)", 0.1)])
    text = bench.report(found, plan, [], "abc1234")
    assert "| target |" not in text and "Routing by key" in text
    assert "shard_of_int(1) 0.10 µs" in text


def test_tls_targets_are_selectable_and_pgbouncer_tls_runs_no_prepared_mode():
    plan = bench.plan_from_args(bench.parse_args(
        ["--targets", "pgbouncer,pgbouncer_tls,trio_pgdog,trio_pgdog_tls", "--prepared"]))
    assert plan.targets == ("pgbouncer", "pgbouncer_tls", "trio_pgdog", "trio_pgdog_tls")
    assert plan.modes_for("pgbouncer_tls") == bench.MODES
    assert plan.modes_for("trio_pgdog_tls") == (*bench.MODES, bench.PREPARED)


def test_tls_cost_is_each_tls_run_minus_its_plain_run_of_the_same_mode_and_clients():
    from trio_pgdog.bench_tls import tls_section

    results = [
        _run(bench.PGBOUNCER, 6000, 15.0), _run(bench.PGBOUNCER, 7000, 16.0, "extended"),
        _run(bench.PGBOUNCER_TLS, 5000, 27.5), _run(bench.PGBOUNCER_TLS, 6300, 29.0, "extended"),
        _run(bench.TRIO_PGDOG, 4000, 40.0), _run(bench.TRIO_PGDOG, 3000, 50.0, "extended"),
        _run(bench.TRIO_PGDOG, 2000, 60.0, clients=64),   # no TLS run at 64 clients: no line
        _run(bench.TRIO_PGDOG_TLS, 3000, 70.0), _run(bench.TRIO_PGDOG_TLS, 2700, None, "extended"),
    ]
    head, *lines = tls_section(results)[1:]
    assert head.startswith("What TLS costs: each pooler with TLS towards pgbench (sslmode=require)")
    assert lines == [
        "",
        "- PgBouncer, simple, 16 clients: +12.5 µs CPU/txn with TLS (15.0 → 27.5 µs); "
        "TPS 6,000 → 5,000 (0.83x)",
        "- PgBouncer, extended, 16 clients: +13.0 µs CPU/txn with TLS (16.0 → 29.0 µs); "
        "TPS 7,000 → 6,300 (0.90x)",
        "- trio_pgdog, simple, 16 clients: +30.0 µs CPU/txn with TLS (40.0 → 70.0 µs); "
        "TPS 4,000 → 3,000 (0.75x)",
        "- trio_pgdog, extended, 16 clients: CPU/txn n/a; TPS 3,000 → 2,700 (0.90x)",
        "- with TLS, simple, 16 clients, trio_pgdog TLS ÷ PgBouncer TLS: CPU/txn 2.55x, TPS 0.60x",
        "- with TLS, extended, 16 clients, trio_pgdog TLS ÷ PgBouncer TLS: CPU/txn n/a, TPS 0.43x",
    ]
    plan = bench.plan_from_args(bench.parse_args(["--quick"]))
    text = bench.report(bench.Findings(results=results), plan, [], "abc1234")
    assert "| trio_pgdog TLS | extended | 16 | 2,700 | - | 0 |" in text
    assert "- trio_pgdog, simple, 16 clients: +30.0 µs CPU/txn with TLS" in text
    # Without TLS rows, no such section.
    plain = [r for r in results if "TLS" not in r.target]
    assert "What TLS costs" not in bench.report(bench.Findings(results=plain), plan, [], "abc1234")
    assert tls_section(plain) == []


def test_the_tls_targets_configuration_is_what_the_proxy_accepts(tmp_path):
    """The [general] lines the trio_pgdog TLS target writes load, with every TLS key set."""
    import trustme

    from trio_pgdog.bench_tls import TlsSetup, trio_pgdog_tls_lines
    from trio_pgdog.config import load_config

    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "pooler.crt"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "pooler.key"))
    setup = TlsSetup(None, str(tmp_path / "ca.pem"), str(tmp_path / "pooler.crt"),  # type: ignore[arg-type]
                     str(tmp_path / "pooler.key"))
    cfg = tmp_path / "pgdog.toml"
    cfg.write_text(f"[general]\nport = 6432\n{trio_pgdog_tls_lines(setup)}\n[[databases]]\n"
                   'name = "pgdog"\nhost = "127.0.0.1"\n')
    general = load_config(cfg, None).general
    assert (general.tls_certificate, general.tls_private_key) == (setup.cert_file, setup.key_file)
    assert general.tls_client_required and general.tls_verify == "verify_full"
    assert general.tls_server_ca_certificate == setup.ca_file


def test_the_scraped_target_is_reported_next_to_the_plain_proxy():
    plan = bench.plan_from_args(bench.parse_args(["--targets", "trio_pgdog,trio_pgdog_metrics"]))
    assert plan.targets == ("trio_pgdog", "trio_pgdog_metrics")
    results = [_run(bench.TRIO_PGDOG, 4000, 40.0), _run(bench.TRIO_PGDOG_METRICS, 3900, 41.0),
               _run(bench.TRIO_PGDOG, 3000, 50.0, "extended")]  # no scraped extended run
    assert bench.metrics_lines(results, "simple") == [
        "- simple, 16 clients, trio_pgdog, /metrics scraped ÷ trio_pgdog: "
        "CPU/txn 40.0 → 41.0 µs, 1.02x; TPS 0.97x"]
    assert bench.metrics_lines(results, "extended") == []
    text = bench.report(bench.Findings(results=results), bench.plan_from_args(
        bench.parse_args(["--quick"])), [], "abc1234")
    assert "/metrics scraped ÷ trio_pgdog: CPU/txn 40.0 → 41.0 µs, 1.02x" in text


def test_rounds_default_to_three_and_to_one_with_quick():
    assert bench.plan_from_args(bench.parse_args([])).rounds == 3
    assert bench.plan_from_args(bench.parse_args(["--quick"])).rounds == 1
    assert bench.plan_from_args(bench.parse_args(["--quick", "--rounds", "2"])).rounds == 2
    try:
        bench.plan_from_args(bench.parse_args(["--rounds", "0"]))
    except SystemExit as exc:
        assert "--rounds must be at least 1" in str(exc)
    else:
        raise AssertionError("--rounds 0 was accepted")


def test_each_round_runs_every_target_once_at_a_point_in_a_rotated_order(monkeypatch):
    ran: list[tuple[str, str, int, int]] = []

    def fake_run(target, mode, clients, per_client, timeout, script=None, round_no=1):
        ran.append((target.name, mode, clients, round_no))
        return _run(target.name, 1000, 10.0, mode, clients, round_no)

    # The order of the runs is what this checks; pgbench itself runs in the real benchmark.
    monkeypatch.setattr(bench, "measured_run", fake_run)
    monkeypatch.setattr(bench, "warm_up", lambda target, plan: None)
    targets = {key: bench.Target(bench.TARGET_KEYS[key], port)
               for port, key in enumerate(("direct", "pgbouncer", "trio_pgdog"), 20000)}
    plan = bench.Plan(tuple(targets), (1, 16), 1000, prepared=True, timeout=60, rounds=3)
    results = bench.compare_targets(targets, plan)
    assert len(results) == len(ran) == 2 * 3 * 3 * 2 + 2 * 3 * 2   # PgBouncer runs no prepared
    first_point = [(name, n) for name, mode, clients, n in ran[:9]]
    assert first_point == [("PostgreSQL", 1), ("PgBouncer", 1), ("trio_pgdog", 1),
                           ("PgBouncer", 2), ("trio_pgdog", 2), ("PostgreSQL", 2),
                           ("trio_pgdog", 3), ("PostgreSQL", 3), ("PgBouncer", 3)]
    assert {(mode, clients) for _name, mode, clients, _n in ran[:9]} == {("simple", 1)}
    prepared = [(name, n) for name, mode, clients, n in ran if mode == "prepared" and clients == 16]
    assert prepared == [("PostgreSQL", 1), ("trio_pgdog", 1), ("trio_pgdog", 2), ("PostgreSQL", 2),
                        ("PostgreSQL", 3), ("trio_pgdog", 3)]


def test_the_table_shows_each_points_median_and_range_over_the_rounds():
    results = [*_rounds(bench.PGBOUNCER, [(5000, 15.0), (3000, 20.0), (4000, 16.0)]),
               *_rounds(bench.DIRECT, [(6000, None), (6400, None), (5800, None)]),
               _run(bench.TRIO_PGDOG, 2000, 60.0, clients=64)]   # one round only: no range
    results[1].outcome.processed = 90
    lines = bench.markdown_table(results).splitlines()[2:]
    assert lines == ["| PgBouncer | simple | 16 | 4,000 (3,000-5,000) | 16.0 (15.0-20.0) | 10 |",
                     "| PostgreSQL | simple | 16 | 6,000 (5,800-6,400) | - | 0 |",
                     "| trio_pgdog | simple | 64 | 2,000 | 60.0 | 0 |"]
    median = bench.median_run(results[:3])
    assert (median.outcome.tps, median.cpu_us_per_txn, median.outcome.not_done) == (4000, 16.0, 10)


def test_ratios_are_the_median_of_each_rounds_ratio_against_the_new_targets():
    # Round by round the CPU ratios are 1.20, 1.25 and 1.375: median 1.25, a PASS; the ratio
    # of the two medians (22 ÷ 16 = 1.375) would mix rounds run under different loads.
    results = [*_rounds(bench.PGBOUNCER, [(5000, 15.0), (3000, 20.0), (4000, 16.0)]),
               *_rounds(bench.TRIO_PGDOG, [(4000, 18.0), (2950, 25.0), (3000, 22.0)])]
    assert bench.round_ratios(results, bench.TRIO_PGDOG, bench.PGBOUNCER, "simple",
                              bench.cpu_of) == [1.2, 1.25, 1.375]
    cpu, tps, extended_cpu, extended_tps = bench.ratio_lines(results)
    assert cpu == ("- simple, 16 clients, CPU/txn trio_pgdog ÷ PgBouncer: 1.25x (rounds 1.20 / 1.25 "
                   "/ 1.38); target ≤ 1.3x **PASS**")
    assert tps == ("- simple, 16 clients, TPS trio_pgdog ÷ PgBouncer: 0.80x (rounds 0.80 / 0.98 / "
                   "0.75); target ≥ 0.95x **MISS**")
    assert extended_cpu == ("- extended, 16 clients, CPU/txn trio_pgdog ÷ PgBouncer: n/a (no PgBouncer "
                            "or trio_pgdog figure)")
    assert extended_tps.endswith(": n/a (no PgBouncer or trio_pgdog figure)")
    # A round one side has no figure for is left out; one round left: no list of rounds.
    results[3].cpu_us_per_txn = results[4].cpu_us_per_txn = None
    assert bench.ratio_lines(results)[0] == ("- simple, 16 clients, CPU/txn trio_pgdog ÷ PgBouncer: "
                                             "1.38x; target ≤ 1.3x **MISS**")


def test_two_workers_are_set_against_pgbouncer_and_one_worker_round_by_round():
    results = [*_rounds(bench.PGBOUNCER, [(5000, 15.0), (4000, 16.0)]),
               *_rounds(bench.TRIO_PGDOG, [(4000, 30.0), (3800, 31.0)]),
               *_rounds(bench.TRIO_PGDOG_WORKERS, [(4500, 40.0), (3800, 42.0)]),
               *_rounds(bench.TRIO_PGDOG, [(3000, 40.0), (3100, 41.0)], "extended")]
    assert bench.workers_lines(results, "simple") == [
        "- simple, 16 clients, TPS trio_pgdog 2 workers ÷ PgBouncer: 0.93x (rounds 0.90 / 0.95)",
        "- simple, 16 clients, TPS trio_pgdog 2 workers ÷ trio_pgdog: 1.06x (rounds 1.12 / 1.00)"]
    assert bench.workers_lines(results, "extended") == []   # workers did not run extended


def test_a_report_over_rounds_says_so_and_judges_the_rounds():
    results = [*_rounds(bench.PGBOUNCER, [(5000, 15.0), (4000, 16.0)]),
               *_rounds(bench.TRIO_PGDOG, [(4900, 18.0), (3900, 20.0)]),
               *_rounds(bench.PGBOUNCER, [(5000, 15.0), (4000, 16.0)], "extended"),
               *_rounds(bench.TRIO_PGDOG, [(4000, 30.0), (3000, 31.0)], "extended")]
    results[2].outcome.errors = ["pgbench exited with status 2"]
    results[3].outcome.errors = ["pgbench exited with status 2"]
    plan = bench.plan_from_args(bench.parse_args(["--rounds", "2", "--clients", "16"]))
    text = bench.report(bench.Findings(results=results), plan, [], "abc1234")
    assert "2 rounds: in each, every target ran once at each point" in text
    assert "| trio_pgdog | simple | 16 | 4,400 (3,900-4,900) | 19.0 (18.0-20.0) | 0 |" in text
    assert "Ratios at 16 clients, each round's runs against each other, and the median" in text
    assert "CPU/txn trio_pgdog ÷ PgBouncer: 1.23x (rounds 1.20 / 1.25); target ≤ 1.3x **PASS**" in text
    assert "- simple, 16 clients, TPS trio_pgdog ÷ PgBouncer: 0.98x (rounds 0.98 / 0.97)" in text
    assert "- extended, 16 clients, TPS trio_pgdog ÷ PgBouncer: 0.78x (rounds 0.80 / 0.75); " \
           "target ≥ 0.95x **MISS**" in text
    # The same error in two rounds is one line.
    assert text.count("- trio_pgdog simple 16 clients: pgbench exited with status 2") == 1
