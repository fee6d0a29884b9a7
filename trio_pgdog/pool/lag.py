"""Replication lag, learnt from a light poll of the hosts of one logical database.

Every `lag_poll_interval` the monitor asks the primary for its WAL positions and, right after,
each replica for `pg_last_wal_replay_lsn()`, each host on a connection of its own (not a slot
of the client pools). What it learns serves two features:

- read-your-writes. A poll round that *started* after a client's write ended samples a
  primary position at or past that commit (its target, see _Round); a replica that has
  replayed up to it has the write. Each replica keeps `caught_up_at`: the start time of the
  latest round whose target it has replayed. A client whose last write ended at time w may
  read from it once `caught_up_at > w`. No client transaction waits for the poll: choosing
  a host compares two floats.
- replica_lag_limit. A replica further behind the primary's written WAL than this many bytes
  is out of rotation until it catches up."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from .server import CONNECT_ERRORS, ServerConnection, describe_connect_error

if TYPE_CHECKING:
    from .settings import PoolSettings

log = logging.getLogger(__name__)

# Primary samples remembered, to find the latest one a replica has replayed (a replica
# further behind than this many rounds simply has not caught up with recent writes yet).
_ROUNDS = 256
# Reconnecting to a host the monitor cannot reach backs off up to this many seconds.
_MAX_BACKOFF = 5.0
_PRIMARY_SQL = ("SELECT pg_current_wal_insert_lsn(), pg_current_wal_lsn(), "
                "current_setting('wal_block_size'), "
                "(SELECT setting FROM pg_settings WHERE name = 'wal_writer_delay')")
_REPLICA_SQL = "SELECT pg_last_wal_replay_lsn()"
# Sizes of a WAL page header (short, and long at a segment's start) on 64-bit builds.
_PAGE_HEADERS = (24, 40)
# Slack on top of the WAL writer's own bound (3 x wal_writer_delay) for an asynchronous
# commit to be written.
_WRITER_SLACK = 1.0


def parse_lsn(text: str) -> int:
    """PostgreSQL's text form of an LSN ('16/B374D848') as a byte position."""
    high, _, low = text.partition("/")
    return int(high, 16) << 32 | int(low, 16)


def past_headers(lsn: int, block_size: int) -> int:
    """`lsn`, a position on the primary (insert or write), as a position a replica can
    reach: a record that ends exactly at a WAL page boundary leaves the primary's position
    past the next page's header, where no record ends, and a replica sits at the boundary.

    No record ends between a page's start and the end of its header except one that spans
    the boundary (whose end is that position), so the boundary says the same."""
    if lsn % block_size in _PAGE_HEADERS:
        return lsn - lsn % block_size
    return lsn


class _Round:
    """One primary sample: when it started, and the position that holds every commit
    acknowledged before then."""

    __slots__ = ("settled", "started", "target")

    def __init__(self, started: float, target: int):
        self.started = started
        # The insert position first: it covers commits made with synchronous_commit off,
        # whose WAL may not be written yet. WAL that is neither a commit nor followed by one
        # (e.g. a page pruned by a read) can stay unwritten on an idle primary, so once any
        # asynchronous commit has surely been written, what was written by then will do.
        self.target = target
        self.settled = False


class ReplicaLag:
    """What is known of one replica's replay. HostGroup.choose reads `in_rotation` and
    `caught_up_at`; `replay_lsn` and `lag_bytes` are there for an admin console."""

    __slots__ = ("caught_up_at", "host", "in_rotation", "lag_bytes", "port", "replay_lsn")

    def __init__(self, host: str, port: int, caught_up_at: float = float("-inf")):
        self.host = host
        self.port = port
        self.replay_lsn: int | None = None
        self.lag_bytes: int | None = None  # behind the WAL the primary had written, last sample
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
        self.primary_lsn: int | None = None  # written WAL, at the last sample
        # False while the primary does not answer the poll: a client's reads after its
        # writes then use the replicas (better a read than an error).
        self.primary_answers = True
        self._rounds: deque[_Round] = deque(maxlen=_ROUNDS)
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
                                       lambda row, lag=lag: self._replica_sampled(lag, row))

    def close(self) -> None:
        self._closed = True
        if self._scope is not None:
            self._scope.cancel()

    # --- what a sample means --------------------------------------------------------------

    def _primary_sampled(self, row: list[str | None]) -> bool:
        if not row or row[0] is None or row[1] is None:
            return False  # in recovery: not a primary
        started = self._round_started
        block = int(row[2] or 8192)
        written = past_headers(parse_lsn(row[1]), block)
        settle_after = 3 * int(row[3] or 200) / 1000 + _WRITER_SLACK
        for rnd in self._rounds:  # oldest first
            if started - rnd.started < settle_after:
                break
            if not rnd.settled:
                rnd.target = min(rnd.target, written)
                rnd.settled = True
        self._rounds.append(_Round(started, past_headers(parse_lsn(row[0]), block)))
        self.primary_lsn = written
        for _settings, lag in self._polled_replicas:
            self._catch_up(lag)
        self._polled.set()
        self._polled = trio.Event()
        return True

    def _replica_sampled(self, lag: ReplicaLag, row: list[str | None]) -> bool:
        if not row or row[0] is None:
            return False  # not replaying WAL (promoted, or not a streaming standby)
        lag.replay_lsn = replayed = parse_lsn(row[0])
        self._catch_up(lag)
        if self.primary_lsn is None:
            return True
        lag.lag_bytes = behind = max(0, self.primary_lsn - replayed)
        if not self.limit:
            return True
        if lag.in_rotation and behind > self.limit:
            lag.in_rotation = False
            log.warning("%s: replica %s:%d is %d bytes behind the primary (replica_lag_limit "
                        "%d): out of rotation until it catches up", self.name, lag.host,
                        lag.port, behind, self.limit)
        elif not lag.in_rotation and behind <= self.limit:
            lag.in_rotation = True
            log.info("%s: replica %s:%d caught up (%d bytes behind the primary): back in "
                     "rotation", self.name, lag.host, lag.port, behind)
        return True

    def _catch_up(self, lag: ReplicaLag) -> None:
        """Move `caught_up_at` to the latest round whose target the replica has replayed
        (targets never decrease from one round to the next)."""
        replayed = lag.replay_lsn
        if replayed is None:
            return
        for rnd in reversed(self._rounds):
            if rnd.target <= replayed:
                if rnd.started > lag.caught_up_at:
                    lag.caught_up_at = rnd.started
                return

    # --- polling ------------------------------------------------------------------------

    async def _watch(self, settings: PoolSettings, sql: str,
                     sampled: Callable[[list[str | None]], bool]) -> None:
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
                if not sampled(row) and not warned_null:
                    warned_null = True
                    log.warning("%s: %s reports no WAL position: is it a %s? Clients that "
                                "wrote keep reading from the primary", self.name, where,
                                "primary" if is_primary else "streaming replica")
                if is_primary:
                    await trio.sleep_until(next_round)
        finally:
            if server is not None:
                server.close()

    async def _connect(self, s: PoolSettings) -> ServerConnection:
        params = {"user": s.user, "database": s.database,
                  "application_name": "trio_pgdog lag monitor"}
        with trio.fail_after(s.connect_timeout or float("inf")):
            return await ServerConnection.connect(s.host, s.port, params, s.password, tls=s.tls)


def _login(s: PoolSettings) -> tuple[object, ...]:
    return (s.host, s.port, s.database, s.user, s.password, s.connect_timeout)
