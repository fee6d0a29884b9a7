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


def _run(target: str, tps: float, cpu: float | None, mode: str = "simple",
         clients: int = 16) -> bench.RunResult:
    outcome = bench.PgbenchOutcome(requested=100, processed=100, tps=tps)
    return bench.RunResult(target, mode, clients, outcome, cpu)


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
    assert bench.metrics_lines(results, "simple", results[0]) == [
        "- simple, 16 clients, trio_pgdog, /metrics scraped ÷ trio_pgdog: "
        "CPU/txn 1.02x (40.0 → 41.0 µs), TPS 0.97x"]
    assert bench.metrics_lines(results, "extended", results[2]) == []
    text = bench.report(bench.Findings(results=results), bench.plan_from_args(
        bench.parse_args(["--quick"])), [], "abc1234")
    assert "/metrics scraped ÷ trio_pgdog: CPU/txn 1.02x" in text
