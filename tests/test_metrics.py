"""The OpenMetrics endpoint: scraped over HTTP, parsed with prometheus-client's parser, and
checked against the traffic the test sent; hooks' calls and latency; SHOW HOOKS agrees."""

from __future__ import annotations

import urllib.error
import urllib.request

import psycopg
import pytest
from conftest import APP_DB, pgdog_toml, query_in_thread, wait_for
from hookmods.recorder import read_events
from prometheus_client.parser import text_string_to_metric_families
from test_admin import ADMIN_TOML, show

from trio_pgdog.embedded import free_port


def scrape(port: int, path: str = "/metrics", accept: str | None = None) -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if accept is not None:
        request.add_header("Accept", accept)
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.read().decode()


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """(sample name, labels) -> value."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def pool_labels(pg) -> frozenset:
    return frozenset({"user": "app", "database": APP_DB, "host": "127.0.0.1", "port": str(pg.port),
                      "role": "primary", "shard": "0"}.items())


@pytest.fixture
def metrics_proxy(proxy_factory, pg):
    def start(extra: str = "", **general: object):
        port = free_port()
        proxy = proxy_factory(pgdog_text=lambda p: pgdog_toml(pg, p, openmetrics_port=port,
                                                              openmetrics_host="127.0.0.1",
                                                              **general) + extra)
        return proxy, port
    return start


def test_metrics_match_traffic(metrics_proxy, pg):
    proxy, port = metrics_proxy(default_pool_size=1)
    # (psycopg would prepare the 6th SELECT 1, whose Parse + Sync is one more query.)
    with proxy.connect(prepare_threshold=None) as conn:
        for _ in range(7):
            conn.execute("SELECT 1")
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM no_such_table")
        conn.execute("BEGIN")
        conn.execute("SELECT 2")
        thread, waiter_done = query_in_thread(proxy, "SELECT 3")
        labels = pool_labels(pg)

        def waiting() -> float:
            return samples(scrape(port))[("pgdog_clients_waiting", labels)]

        wait_for(lambda: waiting() == 1, what="a waiting client in /metrics")
        during = samples(scrape(port))
        assert during[("pgdog_servers_active", labels)] == 1
        assert during[("pgdog_wait_current_seconds", labels)] >= 0
        conn.execute("COMMIT")
        thread.join(10)
        assert waiter_done.is_set()
    after = samples(scrape(port))
    # 7 + 1 failed + BEGIN/SELECT/COMMIT + the waiter's SELECT: 12 queries, 10 transactions.
    assert after[("pgdog_queries_total", labels)] == 12
    assert after[("pgdog_transactions_total", labels)] == 10
    assert after[("pgdog_errors_total", labels)] == 1
    assert after[("pgdog_waits_total", labels)] >= 1
    assert after[("pgdog_wait_time_seconds_total", labels)] > 0
    assert after[("pgdog_received_bytes_total", labels)] > 12 * 6
    assert after[("pgdog_sent_bytes_total", labels)] > 12 * 6
    assert after[("pgdog_query_time_seconds_total", labels)] > 0
    assert after[("pgdog_clients_waiting", labels)] == 0
    assert after[("pgdog_banned", labels)] == 0
    assert after[("pgdog_clients", frozenset())] == 0
    assert any(name == "process_resident_memory_bytes" for name, _ in after)


def test_openmetrics_format_and_other_paths(metrics_proxy):
    _proxy, port = metrics_proxy()
    text = scrape(port, accept="application/openmetrics-text; version=1.0.0")
    assert text.rstrip().endswith("# EOF")
    with pytest.raises(urllib.error.HTTPError) as info:
        scrape(port, "/")
    assert info.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as info:
        scrape(port, "/metricsx")
    assert info.value.code == 404


def test_hook_calls_and_latency(metrics_proxy, tmp_path):
    hook = (f'\n[[hooks.python]]\nobject = "hookmods.recorder:Recorder"\n'
            f'options = {{ path = "{tmp_path / "events.jsonl"}", block = "forbidden" }}\n')
    proxy, port = metrics_proxy(extra=hook + ADMIN_TOML)
    with proxy.connect() as conn:
        for _ in range(4):
            conn.execute("SELECT 1")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT 'forbidden'")
    label = "python hook hookmods.recorder:Recorder"
    got = samples(scrape(port))
    hook_labels = frozenset({"hook": label}.items())
    # The recorder writes one line per call: pre_connect, after_connect per new server
    # connection, pre_query and post_query per statement (the blocked one's with its SQLSTATE).
    events = [e["event"] for e in read_events(tmp_path / "events.jsonl")]
    assert (events.count("pre_query"), events.count("post_query")) == (5, 5)
    calls = got[("pgdog_hook_calls_total", hook_labels)]
    assert calls == len(events)
    assert got[("pgdog_hook_latency_seconds_count", hook_labels)] == calls
    assert got[("pgdog_hook_latency_seconds_bucket", frozenset({"hook": label, "le": "+Inf"}.items()))] \
        == calls
    assert 0 < got[("pgdog_hook_latency_seconds_sum", hook_labels)] < calls  # well under 1 s each
    blocks = frozenset({"hook": label, "decision": "block"}.items())
    assert got[("pgdog_hook_decisions_total", blocks)] == 1
    assert got[("pgdog_hook_errors_total", hook_labels)] == 0
    (row,) = show(proxy, "HOOKS")
    assert (row["hook"], row["calls"], row["blocks"], row["errors"]) == (label, calls, 1, 0)
    assert "pre_query" in row["events"] and row["total_time_us"] > 0
