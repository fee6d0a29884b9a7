"""The pools of one (user, logical database): a primary and its replicas, each host its own
pool, with load balancing over the healthy replicas and bans for hosts that fail."""

from __future__ import annotations

import itertools
import logging
import random

import trio

from ..protocol import ProxyError
from ..protocol import errors as codes
from .pool import Pool, PoolRetired
from .server import ServerConnection

log = logging.getLogger(__name__)

PRIMARY, REPLICA = "primary", "replica"


class HostGroup:
    def __init__(self, name: str, primary: Pool | None, replicas: list[Pool], *, strategy: str,
                 ban_timeout: float, read_write_split: bool):
        self.name = name
        self.primary = primary
        self.replicas = replicas
        self.strategy = strategy
        self.ban_timeout = ban_timeout
        self.read_write_split = read_write_split
        self.stale = False  # a reload replaced this group
        self._turn = itertools.count()
        self._fallback_logged = False
        self.finish()

    def finish(self) -> None:
        """Derive what choose() needs once the pools are in place."""
        primary, replicas = self.primary, self.replicas
        for pool in replicas:
            pool.on_failure = self.ban
        self.splits = bool(replicas) and self.read_write_split and primary is not None
        self._primary_only = [primary] if primary is not None else list(replicas[:1])

    @property
    def pools(self) -> list[Pool]:
        return ([self.primary] if self.primary else []) + self.replicas

    @property
    def any_pool(self) -> Pool:
        return self.pools[0]

    def choose(self, role: str) -> list[Pool]:
        """Pools to try, in order, for a transaction that needs `role`."""
        if role != REPLICA or not self.splits:
            return self._primary_only
        now = trio.current_time()
        healthy = [p for p in self.replicas if p.banned_until <= now]
        if not healthy:
            if not self._fallback_logged:
                log.warning("%s: every replica is banned; reads go to the primary", self.name)
                self._fallback_logged = True
            return self._primary_only
        self._fallback_logged = False
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
                # down, login refused) is, for a replica.
                if (exc.sqlstate == codes.TOO_MANY_CONNECTIONS or pool is self.primary
                        or isinstance(exc, PoolRetired)):
                    raise
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
