"""Replication lag, learnt from a light poll of the hosts of one logical database.

Every `lag_poll_interval` the monitor asks the primary for `pg_current_wal_lsn()` and, right
after, each replica for `pg_last_wal_replay_lsn()`, each host on a connection of its own (not
a slot of the client pools). What it learns serves two features:

- read-your-writes. A poll round that *started* after a client's write committed samples a
  primary LSN at or past that commit; a replica that has replayed that LSN has the write.
  Each replica keeps `caught_up_at`: the start time of the latest round whose primary LSN it
  has replayed. A client whose last write ended at time w may read from it once
  `caught_up_at > w`. No client transaction ever waits for the poll: it compares two floats.
- replica_lag_limit. A replica further behind the primary's LSN than this many bytes is out
  of rotation until it catches up.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from .server import CONNECT_ERRORS, ServerConnection, describe_connect_error

if TYPE_CHECKING:
    from .pool import PoolSettings

log = logging.getLogger(__name__)

# Primary samples remembered, to find the latest one a replica has replayed (a replica
# further behind than this many rounds simply has not caught up with recent writes yet).
_ROUNDS = 256
# Reconnecting to a host the monitor cannot reach backs off up to this many seconds.
_MAX_BACKOFF = 5.0
_PRIMARY_SQL = "SELECT pg_current_wal_lsn()"
_REPLICA_SQL = "SELECT pg_last_wal_replay_lsn()"


def parse_lsn(text: str) -> int:
    """PostgreSQL's text form of an LSN ('16/B374D848') as a byte position."""
    high, _, low = text.partition("/")
    return int(high, 16) << 32 | int(low, 16)


class ReplicaLag:
    """What is known of one replica's replay. HostGroup.choose reads `in_rotation` and
    `caught_up_at`; `replay_lsn` and `lag_bytes` are there for an admin console."""

    __slots__ = ("caught_up_at", "host", "in_rotation", "lag_bytes", "port", "replay_lsn")

    def __init__(self, host: str, port: int, caught_up_at: float = float("-inf")):
        self.host = host
        self.port = port
        self.replay_lsn: int | None = None
        self.lag_bytes: int | None = None  # behind the primary's last sampled LSN
        self.in_rotation = True  # False while further behind than replica_lag_limit
        self.caught_up_at = caught_up_at

    def __repr__(self) -> str:
        return (f"<lag {self.host}:{self.port} replay={self.replay_lsn} bytes={self.lag_bytes} "
                f"in_rotation={self.in_rotation}>")


# A replica nobody watches: always in rotation, and never holds a read back.
UNWATCHED = ReplicaLag("", 0, caught_up_at=float("inf"))


class LagMonitor:
    """Polls one primary and its replicas; owned by the PoolManager, which starts `run` in
    its nursery and calls `close` when a reload replaces it or the proxy stops."""

    def __init__(self, name: str, primary: PoolSettings, replicas: list[PoolSettings], *,
                 interval: float, limit: int, timeout: float):
        self.name = name
        self.primary = primary
        self.interval = interval
        self.limit = limit  # bytes; 0: no limit
        self.timeout = timeout  # seconds a poll query may take; 0: no bound
        self.key = (_login(primary), tuple(_login(s) for s in replicas), interval, limit, timeout)
        self.replicas: dict[tuple[str, int], ReplicaLag] = {}
        self._polled_replicas: list[tuple[PoolSettings, ReplicaLag]] = []
        for settings in replicas:
            where = (settings.host, settings.port)
            if where in self.replicas:
                continue
            if where == (primary.host, primary.port):  # the primary itself: nothing to wait for
                self.replicas[where] = ReplicaLag(*where, caught_up_at=float("inf"))
                continue
            lag = self.replicas[where] = ReplicaLag(*where)
            self._polled_replicas.append((settings, lag))
        self.primary_lsn: int | None = None
        # False while the primary does not answer the poll: a client's reads after its
        # writes then use the replicas (better a read than an error).
        self.primary_answers = True
        self._rounds: deque[tuple[float, int]] = deque(maxlen=_ROUNDS)  # (started, LSN)
        self._polled = trio.Event()  # set after each primary sample, then replaced
        self._round_started = 0.0
        self._scope: trio.CancelScope | None = None
        self._closed = False

    def lag_for(self, pool_settings: PoolSettings) -> ReplicaLag:
        return self.replicas.get((pool_settings.host, pool_settings.port), UNWATCHED)

    async def run(self) -> None:
        with trio.CancelScope() as self._scope:
            if self._closed:
                return
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch, self.primary, _PRIMARY_SQL, self._primary_sampled)
                for settings, lag in self._polled_replicas:
                    nursery.start_soon(self._watch, settings, _REPLICA_SQL,
                                       lambda lsn, lag=lag: self._replica_sampled(lag, lsn))

    def close(self) -> None:
        self._closed = True
        if self._scope is not None:
            self._scope.cancel()

    # --- what a sample means --------------------------------------------------------------

    def _primary_sampled(self, lsn: int | None) -> None:
        if lsn is None:  # not a primary (in recovery): nothing to compare with
            return
        started = self._round_started
        self.primary_lsn = lsn
        self._rounds.append((started, lsn))
        for _settings, lag in self._polled_replicas:
            if lag.replay_lsn is not None and lag.replay_lsn >= lsn:
                lag.caught_up_at = max(lag.caught_up_at, started)
        self._polled.set()
        self._polled = trio.Event()

    def _replica_sampled(self, lag: ReplicaLag, lsn: int | None) -> None:
        if lsn is None:
            return  # not replaying WAL (promoted, or not a streaming standby): unknown
        lag.replay_lsn = lsn
        for started, primary_lsn in reversed(self._rounds):
            if primary_lsn <= lsn:
                lag.caught_up_at = max(lag.caught_up_at, started)
                break
        if self.primary_lsn is None:
            return
        lag.lag_bytes = behind = max(0, self.primary_lsn - lsn)
        if not self.limit:
            return
        if lag.in_rotation and behind > self.limit:
            lag.in_rotation = False
            log.warning("%s: replica %s:%d is %d bytes behind the primary (replica_lag_limit "
                        "%d): out of rotation until it catches up", self.name, lag.host,
                        lag.port, behind, self.limit)
        elif not lag.in_rotation and behind <= self.limit:
            lag.in_rotation = True
            log.info("%s: replica %s:%d caught up (%d bytes behind the primary): back in "
                     "rotation", self.name, lag.host, lag.port, behind)

    # --- polling ------------------------------------------------------------------------

    async def _watch(self, settings: PoolSettings, sql: str,
                     sampled: Callable[[int | None], None]) -> None:
        """Sample one host forever: the primary every interval, a replica right after each
        primary sample (or every interval while the primary does not answer)."""
        is_primary = sql == _PRIMARY_SQL
        where = f"{settings.host}:{settings.port}"
        server: ServerConnection | None = None
        backoff = self.interval
        failing = warned_null = False
        try:
            while True:
                if is_primary:
                    next_round = trio.current_time() + self.interval
                else:
                    with trio.move_on_after(2 * self.interval):
                        await self._polled.wait()
                try:
                    if server is None:
                        server = await self._connect(settings)
                    if is_primary:
                        # A round starts before its question leaves: a write that ended
                        # before this instant is in the answer.
                        self._round_started = trio.current_time()
                    with trio.fail_after(self.timeout or float("inf")):
                        row = await server.query_row(sql)
                except (*CONNECT_ERRORS, trio.TooSlowError) as exc:
                    if server is not None:
                        server.close()
                        server = None
                    if not failing:
                        failing = True
                        if is_primary:
                            self.primary_answers = False
                        why = ("timed out" if isinstance(exc, trio.TooSlowError)
                               else describe_connect_error(exc))
                        log.warning("%s: lag monitor cannot ask the %s %s: %s", self.name,
                                    "primary" if is_primary else "replica", where, why)
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, _MAX_BACKOFF)
                    continue
                if failing:
                    failing = False
                    backoff = self.interval
                    if is_primary:
                        self.primary_answers = True
                    log.info("%s: lag monitor reaches %s again", self.name, where)
                value = row[0] if row else None
                if value is None and not warned_null:
                    warned_null = True
                    log.warning("%s: %s answers no WAL position for %s; read_your_writes keeps "
                                "the reads of clients that wrote on the primary", self.name,
                                where, sql)
                sampled(parse_lsn(value) if value is not None else None)
                if is_primary:
                    await trio.sleep_until(next_round)
        finally:
            if server is not None:
                server.close()

    async def _connect(self, s: PoolSettings) -> ServerConnection:
        params = {"user": s.user, "database": s.database,
                  "application_name": "trio_pgdog lag monitor"}
        with trio.fail_after(s.connect_timeout or float("inf")):
            return await ServerConnection.connect(s.host, s.port, params, s.password)


def _login(s: PoolSettings) -> tuple[object, ...]:
    return (s.host, s.port, s.database, s.user, s.password, s.connect_timeout)
