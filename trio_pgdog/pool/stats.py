"""What a pool has served: plain int counters the data path adds to where it already is.

The relay (session/session.py) adds bytes per chunk it forwards, queries and transactions
per chunk that holds ReadyForQuery; checkouts that had to wait add their wait. Nothing here
awaits, locks or allocates per message; the admin console and the metrics endpoint read the
figures when asked (admin/, metrics/).
"""

from __future__ import annotations

import time

import attrs

# Durations are kept in microseconds (PgBouncer's unit for its *_time columns).
_US = 1_000_000


# The relay's clock: nanoseconds as one int (a builtin call, cheap to keep per request).
clock_ns = time.monotonic_ns


class PoolStats:
    """Totals since the pool was made (a reload that keeps a pool keeps its figures)."""

    __slots__ = ("_last", "averages", "bytes_received", "bytes_sent", "errors", "max_wait_us",
                 "query_count", "query_time_us", "wait_count", "wait_time_us", "xact_count",
                 "xact_time_us")

    def __init__(self) -> None:
        self.xact_count = 0      # transactions that ended (ReadyForQuery 'I')
        self.query_count = 0     # ReadyForQuery messages: queries, Syncs, function calls
        self.bytes_received = 0  # from clients, forwarded to this pool's servers
        self.bytes_sent = 0      # from this pool's servers, forwarded to clients
        self.xact_time_us = 0    # from a transaction's first statement to its last ReadyForQuery
        self.query_time_us = 0   # from a request sent to the server to its ReadyForQuery
        self.wait_time_us = 0    # clients waiting for a server connection of this pool
        self.wait_count = 0      # checkouts that had to wait
        self.max_wait_us = 0     # the longest such wait
        self.errors = 0          # ErrorResponses from servers, lost and failed connections
        # SHOW STATS' avg_* figures over the last whole stats_period (see roll).
        self.averages = Averages()
        self._last: tuple[int, ...] = (0,) * len(_COUNTED)

    def answered(self, sent: int, ready: list[bytes] | tuple[()]) -> None:
        """A server's answers relayed: `sent` bytes of them, ending `ready` (the statuses of
        their ReadyForQuery messages, each one query; an idle one ends a transaction)."""
        self.bytes_sent += sent
        if ready:
            self.query_count += len(ready)
            self.xact_count += ready.count(b"I")

    def add_relayed(self, queries: int, xacts: int, received: int, sent: int, query_us: int,
                    xact_us: int, wait_us: int = 0, waits: int = 0, max_wait_us: int = 0) -> None:
        """What the C path relayed for this pool since it last reported (session/parking.py),
        and how long its requests waited in line for a connection."""
        self.query_count += queries
        self.xact_count += xacts
        self.bytes_received += received
        self.bytes_sent += sent
        self.query_time_us += query_us
        self.xact_time_us += xact_us
        self.wait_time_us += wait_us
        self.wait_count += waits
        self.max_wait_us = max(self.max_wait_us, max_wait_us)

    def waited(self, us: int) -> None:
        """A checkout waited `us` microseconds for a connection."""
        self.wait_time_us += us
        self.wait_count += 1
        if us > self.max_wait_us:
            self.max_wait_us = us

    def roll(self, seconds: float) -> None:
        """A stats_period of `seconds` ended: its averages replace the last period's."""
        now = tuple(getattr(self, name) for name in _COUNTED)
        d = dict(zip(_COUNTED, (a - b for a, b in zip(now, self._last, strict=True)),
                     strict=True))
        self._last = now
        self.averages = Averages(
            xact_count=round(d["xact_count"] / seconds),
            query_count=round(d["query_count"] / seconds),
            received=round(d["bytes_received"] / seconds),
            sent=round(d["bytes_sent"] / seconds),
            xact_time=d["xact_time_us"] // d["xact_count"] if d["xact_count"] else 0,
            query_time=d["query_time_us"] // d["query_count"] if d["query_count"] else 0,
            wait_time=d["wait_time_us"] // d["wait_count"] if d["wait_count"] else 0)


# The counters a period's averages are taken from.
_COUNTED = ("xact_count", "query_count", "bytes_received", "bytes_sent", "xact_time_us",
            "query_time_us", "wait_time_us", "wait_count")


@attrs.frozen
class Averages:
    """One stats_period: counts and bytes per second, times in microseconds per transaction,
    query or wait (PgBouncer's avg_* columns)."""

    xact_count: int = 0
    query_count: int = 0
    received: int = 0
    sent: int = 0
    xact_time: int = 0
    query_time: int = 0
    wait_time: int = 0


# Connections that belong to no pool (lag monitors, start-up probes) count here, unread.
UNCOUNTED = PoolStats()
