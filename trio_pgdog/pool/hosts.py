"""The pools of one (user, logical database): a primary and its replicas, each host its own
pool, with load balancing over the healthy replicas and bans for hosts that fail."""

from __future__ import annotations

import itertools
import logging
import random

import trio

from ..protocol import ProxyError
from ..protocol import errors as codes
from .lag import UNWATCHED, LagMonitor
from .pool import Pool, PoolRetired
from .server import ServerConnection

log = logging.getLogger(__name__)

PRIMARY, REPLICA = "primary", "replica"


class HostGroup:
    def __init__(self, name: str, primary: Pool | None, replicas: list[Pool], *, strategy: str,
                 ban_timeout: float, read_write_split: bool, read_your_writes: bool = False):
        self.name = name
        self.primary = primary
        self.replicas = replicas
        self.strategy = strategy
        self.ban_timeout = ban_timeout
        self.read_write_split = read_write_split
        self.wants_read_your_writes = read_your_writes
        self.monitor: LagMonitor | None = None  # replication lag of the replicas, if watched
        self.stale = False  # a reload replaced this group
        # A sharded logical database has one group per shard; each knows them all.
        self.shard = 0
        self.shards: list[HostGroup] = [self]
        self._turn = itertools.count()
        self._fallback_logged = False
        self.finish()

    def finish(self) -> None:
        """Derive what choose() needs once the pools are in place."""
        primary, replicas = self.primary, self.replicas
        for pool in replicas:
            pool.on_failure = self.ban
        self.splits = bool(replicas) and self.read_write_split and primary is not None
        self.read_your_writes = self.splits and self.wants_read_your_writes
        self._primary_only = [primary] if primary is not None else list(replicas[:1])

    @property
    def pools(self) -> list[Pool]:
        return ([self.primary] if self.primary else []) + self.replicas

    @property
    def any_pool(self) -> Pool:
        return self.pools[0]

    def watch(self, monitor: LagMonitor | None) -> None:
        """Read the replicas' lag from `monitor` (None: nobody watches it)."""
        self.monitor = monitor
        for pool in self.replicas:
            pool.lag = UNWATCHED if monitor is None else monitor.lag_for(pool.settings)

    def caught_up(self, wrote_at: float) -> bool:
        """Has every replica replayed what was committed before `wrote_at` (trio time)?"""
        return all(p.lag.caught_up_at > wrote_at for p in self.replicas)

    def choose(self, role: str, wrote_at: float | None = None) -> list[Pool]:
        """Pools to try, in order, for a transaction that needs `role`; for a read of a
        client whose last write ended at `wrote_at`, only replicas known to have it."""
        if role != REPLICA or not self.splits:
            return self._primary_only
        now = trio.current_time()
        healthy = [p for p in self.replicas if p.banned_until <= now and p.lag.in_rotation]
        if not healthy:
            if not self._fallback_logged:
                log.warning("%s: every replica is banned or further behind than "
                            "replica_lag_limit; reads go to the primary", self.name)
                self._fallback_logged = True
            return self._primary_only
        self._fallback_logged = False
        if wrote_at is not None and self.read_your_writes and self.monitor is not None \
                and self.monitor.primary_answers:
            fresh = [p for p in healthy if p.lag.caught_up_at > wrote_at]
            if not fresh:
                # The primary has the write; should it fail to connect, a replica's answer
                # (maybe without the write) is better than none.
                return self._primary_only + healthy
            healthy = fresh
        if self.strategy == "random":
            first = random.choice(healthy)
        elif self.strategy == "least_active_connections":
            first = min(healthy, key=lambda p: p.in_use)
        else:
            first = healthy[next(self._turn) % len(healthy)]
        # The other replicas, then the primary: a failed connect is retried before any byte
        # reaches the client.
        return [first] + [p for p in healthy if p is not first] + self._primary_only

    async def checkout(self, pools: list[Pool]) -> ServerConnection:
        for i, pool in enumerate(pools):
            try:
                return await pool.checkout()
            except ProxyError as exc:
                # A busy pool is not a sick host, nor one a reload retired (the caller
                # picks again from its new hosts); any failure to connect (refused, shutting
                # down, login refused) is, for a replica. The primary is last in the list or
                # alone, except for a read after a write (choose).
                if exc.sqlstate == codes.TOO_MANY_CONNECTIONS or isinstance(exc, PoolRetired):
                    raise
                if pool is not self.primary:  # never banned: writes have nowhere else to go
                    self.ban(pool, exc.message)
                if i == len(pools) - 1:
                    raise
        raise ProxyError(codes.CONNECTION_FAILURE, f"no host available for {self.name}")

    def ban(self, pool: Pool, why: str) -> None:
        if self.ban_timeout <= 0:
            return
        pool.banned_until = trio.current_time() + self.ban_timeout
        log.warning("%s: banning %s:%d for %.0f s: %s", self.name, pool.settings.host,
                    pool.settings.port, self.ban_timeout, why)

    async def startup_params(self) -> dict[str, str]:
        """ParameterStatus values from the first host that answers (the primary first)."""
        error: ProxyError | None = None
        for pool in self.pools:
            try:
                return await pool.startup_params()
            except PoolRetired:
                raise  # the caller asks the new hosts
            except ProxyError as exc:
                error = exc
        assert error is not None
        raise error
