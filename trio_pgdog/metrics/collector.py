"""What /metrics shows: a prometheus-client Collector that reads the pools' and hooks'
counters (pool/stats.py, hooks/stats.py) when scraped. No metric object lives on the data
path; a scrape costs one walk over the pools and hooks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import trio
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .. import __version__
from ..admin.show import client_counts
from ..hooks.stats import BUCKETS, KINDS

if TYPE_CHECKING:
    from ..app import Proxy

POOL_LABELS = ("user", "database", "host", "port", "role", "shard")
_US = 1e6

# (name, help, pool -> value); counters get "_total" from prometheus-client.
_POOL_COUNTERS = (
    ("pgdog_transactions", "Transactions that ended (ReadyForQuery with status idle)",
     lambda s: s.xact_count),
    ("pgdog_queries", "Queries, Syncs and function calls answered (ReadyForQuery messages)",
     lambda s: s.query_count),
    ("pgdog_received_bytes", "Bytes received from clients and forwarded to servers",
     lambda s: s.bytes_received),
    ("pgdog_sent_bytes", "Bytes received from servers and forwarded to clients",
     lambda s: s.bytes_sent),
    ("pgdog_transaction_time_seconds", "Time spent in transactions", lambda s: s.xact_time_us / _US),
    ("pgdog_query_time_seconds", "Time from a request to its ReadyForQuery",
     lambda s: s.query_time_us / _US),
    ("pgdog_wait_time_seconds", "Time clients waited for a server connection",
     lambda s: s.wait_time_us / _US),
    ("pgdog_waits", "Checkouts that had to wait for a server connection", lambda s: s.wait_count),
    ("pgdog_errors", "Errors: ErrorResponses from servers, lost, failed and unhealthy connections",
     lambda s: s.errors),
)


class ProxyCollector(Collector):
    def __init__(self, app: Proxy):
        self.app = app

    def collect(self) -> Iterator[Metric]:
        self.app.settle()  # servers and counts the C path keeps, back in their pools
        yield from self._pools()
        yield from self._hooks()
        info = GaugeMetricFamily("pgdog_info", "The proxy's version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        clients = GaugeMetricFamily("pgdog_clients", "Clients connected (admin console excluded)")
        clients.add_metric([], len(self.app.sessions))
        yield clients

    def _pools(self) -> Iterator[Metric]:
        app = self.app
        gauges = {name: GaugeMetricFamily(name, text, labels=POOL_LABELS) for name, text in (
            ("pgdog_clients_active", "Clients linked to a server, or idle between transactions"),
            ("pgdog_clients_waiting", "Clients waiting for a server connection"),
            ("pgdog_servers_active", "Server connections in use"),
            ("pgdog_servers_idle", "Server connections idle in the pool"),
            ("pgdog_servers_login", "Server connections logging in"),
            ("pgdog_wait_current_seconds", "How long the longest-waiting client has waited"),
            ("pgdog_wait_max_seconds", "The longest wait for a server connection so far"),
            ("pgdog_banned", "1 while the host is banned (out of the replicas' rotation)"),
            ("pgdog_ban_seconds_left", "Seconds until the host's ban ends (+Inf: until UNBAN)"),
            ("pgdog_paused", "1 while the pool is paused (admin console PAUSE)"),
        )}
        counters = [(CounterMetricFamily(name, text, labels=POOL_LABELS), value)
                    for name, text, value in _POOL_COUNTERS]
        now = trio.current_time()
        counts = client_counts(app)
        for (user, _db, host, port, _name), pool in app.pools.pools.items():
            labels = [user, pool.logical_database, host, str(port), pool.role, str(pool.shard)]
            linked, idle = counts.get(id(pool), (0, 0))
            left = pool.banned_until - now
            for name, value in (
                    ("pgdog_clients_active", linked + idle),
                    ("pgdog_clients_waiting", len(pool.waiters)),
                    ("pgdog_servers_active", pool.in_use - pool.opening),
                    ("pgdog_servers_idle", len(pool.idle)),
                    ("pgdog_servers_login", pool.opening),
                    ("pgdog_wait_current_seconds", now - pool.waiters[0].since if pool.waiters else 0),
                    ("pgdog_wait_max_seconds", pool.stats.max_wait_us / _US),
                    ("pgdog_banned", int(left > 0)),
                    ("pgdog_ban_seconds_left", max(left, 0)),
                    ("pgdog_paused", int(pool.paused))):
                gauges[name].add_metric(labels, value)
            for family, value in counters:
                family.add_metric(labels, value(pool.stats))
        yield from gauges.values()
        for family, _value in counters:
            yield family

    def _hooks(self) -> Iterator[Metric]:
        labels = ["hook"]
        calls = CounterMetricFamily("pgdog_hook_calls", "Calls into the hook", labels=labels)
        errors = CounterMetricFamily("pgdog_hook_errors", "Calls that raised (no decision)",
                                     labels=labels)
        decisions = CounterMetricFamily("pgdog_hook_decisions", "Answers by kind (allow: none)",
                                        labels=["hook", "decision"])
        latency = HistogramMetricFamily("pgdog_hook_latency_seconds", "Time of one call",
                                        labels=labels)
        for entry in self.app.hooks.entries:
            s = entry.stats
            calls.add_metric([entry.label], s.calls)
            errors.add_metric([entry.label], s.errors)
            for kind, count in zip(KINDS, s.decisions, strict=True):
                decisions.add_metric([entry.label, kind], count)
            cumulative, buckets = 0, []
            for bound, count in zip((*map(str, BUCKETS), "+Inf"), s.buckets, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            latency.add_metric([entry.label], buckets, s.time_ns / 1e9)
        yield from (calls, errors, decisions, latency)
