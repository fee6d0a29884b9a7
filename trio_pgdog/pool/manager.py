"""All pools of the running configuration: one per (user, database, host)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from ..config import Config, Database, User
from ..tls import server_tls
from .hosts import HostGroup
from .lag import LagMonitor
from .pool import Pool
from .server import ServerConnection
from .settings import PoolSettings

log = logging.getLogger(__name__)


def pool_settings(config: Config, user: User, db: Database,
                  share: Callable[[int], int] | None = None) -> PoolSettings:
    """`share`: this process's part of a pool size (one of several workers, workers.py)."""
    g = config.general
    share = share or _whole
    return PoolSettings(
        host=db.host,
        port=db.port,
        database=db.database_name,
        user=user.server_user or user.name,
        password=user.server_password if user.server_password is not None else user.password,
        pool_size=share(user.effective_pool_size(g)),
        min_pool_size=min(share(g.min_pool_size), share(user.effective_pool_size(g))),
        pooler_mode=user.effective_pooler_mode(g),
        connect_timeout=g.connect_timeout / 1000,
        checkout_timeout=g.checkout_timeout / 1000,
        idle_timeout=g.idle_timeout / 1000,
        server_lifetime=g.server_lifetime / 1000,
        statements_limit=g.prepared_statements_limit,
        healthcheck_interval=g.healthcheck_interval / 1000,
        healthcheck_timeout=g.healthcheck_timeout / 1000,
        tls=server_tls(config),
    )


# (user, logical database, host, port, database name on the server)
PoolKey = tuple[str, str, str, int, str]


def _pool_name(key: PoolKey, db: Database) -> str:
    """user@database(host:port), with the server's database name when it is another."""
    user, database, host, port, name = key
    where = f"{host}:{port}" if name == db.name else f"{host}:{port}/{name}"
    return f"{user}@{database}({where})"


def _whole(size: int) -> int:
    return size


class PoolManager:
    """Owns the pools (one per user, database and host) and groups them per (user, logical
    database); each pool's maintenance runs in the nursery given to `apply`."""

    def __init__(self, on_connect: Callable[[Pool, ServerConnection], Awaitable[None]] | None = None,
                 share: Callable[[int], int] | None = None) -> None:
        self.share = share  # this worker's part of each pool size (workers.py)
        self.pools: dict[PoolKey, Pool] = {}
        self.groups: dict[tuple[str, str], HostGroup] = {}
        self.monitors: dict[str, LagMonitor] = {}  # per logical database with replicas
        self.on_connect = on_connect  # after_connect hooks, for every new server connection
        self.reclaim: Callable[[], None] | None = None  # app.settle, with the C path on
        # Hands a connection to a request waiting in the C path (reactor.offer), if any.
        self.offer: Callable[[Pool, ServerConnection | None, float | None], bool] | None = None

    def get(self, user: str, database: str) -> HostGroup | None:
        return self.groups.get((user, database))

    def apply(self, config: Config, nursery: trio.Nursery) -> None:
        """Install `config`'s pools and groups in one step, without a checkpoint: a client
        sees the old set or the new one, never a gap. Pools whose settings did not change
        keep their connections; the others are retired after the swap (see Pool.retire)."""
        wanted: dict[PoolKey, tuple[PoolSettings, Database]] = {}
        for user in config.users:
            for db in config.databases_named(user.database):
                # The server's database too: two shards may live on one server.
                key = (user.name, user.database, db.host, db.port, db.database_name)
                wanted[key] = (pool_settings(config, user, db, self.share), db)
        pools: dict[PoolKey, Pool] = {}
        fresh: list[Pool] = []
        for key, (settings, db) in wanted.items():
            old = self.pools.get(key)
            if old is not None and old.settings == settings:
                pools[key] = old
                continue
            pool = pools[key] = Pool(_pool_name(key, db), settings)
            pool.logical_database, pool.role, pool.shard = db.name, db.role, db.shard
            pool.on_connect = self.on_connect
            pool.reclaim = self.reclaim
            pool.offer = self.offer
            if old is not None and _same_server(old.settings, settings):
                # New logins need not wait for a server connection to learn its parameters.
                pool.server_params = old.server_params
            fresh.append(pool)
        retired = [(key, pool) for key, pool in self.pools.items() if pools.get(key) is not pool]
        self.pools = pools
        self._regroup(config, wanted)
        self._watch_lag(config, nursery)
        for pool in fresh:
            nursery.start_soon(pool.run)
        for key, pool in retired:
            log.info("pool %s: %s by a reload, draining", pool.name,
                     "changed" if key in pools else "removed")
            pool.retire(pools.get(key))

    def _regroup(self, config: Config, wanted: dict) -> None:
        """One host group per (user, logical database, shard): its primary and replicas.
        `groups` maps (user, database) to shard 0's group; `group.shards` lists them all."""
        g = config.general
        sharded: dict[tuple[str, str], dict[int, HostGroup]] = {}
        for key, (_settings, db) in wanted.items():
            user, database = key[0], key[1]
            by_shard = sharded.setdefault((user, database), {})
            group = by_shard.get(db.shard)
            if group is None:
                entry = config.find_user(user, database)
                assert entry is not None
                name = f"{user}@{database}" + (f" shard {db.shard}" if config.shards(database) > 1
                                               else "")
                group = by_shard[db.shard] = HostGroup(
                    name, None, [], strategy=g.load_balancing_strategy,
                    ban_timeout=g.ban_timeout / 1000, read_write_split=g.read_write_split,
                    read_your_writes=entry.effective_read_your_writes(g))
                group.shard = db.shard
            pool = self.pools[key]
            if db.role == "primary" and group.primary is None:
                group.primary = pool
            else:
                group.replicas.append(pool)
        groups: dict[tuple[str, str], HostGroup] = {}
        for key, by_shard in sharded.items():
            shards = [by_shard[n] for n in sorted(by_shard)]
            for group in shards:
                group.shards = shards
                group.finish()
            groups[key] = shards[0]
        for key, old in self.groups.items():
            if groups.get(key) is not old:
                for group in old.shards:
                    group.stale = True
        self.groups = groups

    def _watch_lag(self, config: Config, nursery: trio.Nursery) -> None:
        """One lag monitor per logical database whose reads go to replicas, when
        read_your_writes or replica_lag_limit needs to know their lag. It logs in as the
        database's first user; a monitor whose hosts and settings a reload kept stays."""
        g = config.general
        monitors: dict[str, LagMonitor] = {}
        for (_user, database), first in self.groups.items():
            for group in first.shards:
                if not group.splits or not (group.read_your_writes or g.replica_lag_limit):
                    group.watch(None)
                    continue
                name = database if len(first.shards) == 1 else f"{database} shard {group.shard}"
                monitor = monitors.get(name)
                if monitor is None:
                    assert group.primary is not None
                    monitor = LagMonitor(
                        name, group.primary.settings, [p.settings for p in group.replicas],
                        interval=g.lag_poll_interval / 1000, limit=g.replica_lag_limit,
                        timeout=g.healthcheck_timeout / 1000)
                    old = self.monitors.get(name)
                    if old is not None and old.key == monitor.key:
                        monitor = old
                    else:
                        nursery.start_soon(monitor.run)
                    monitors[name] = monitor
                group.watch(monitor)
        for database, old in self.monitors.items():
            if monitors.get(database) is not old:
                old.close()
        self.monitors = monitors

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
        for monitor in self.monitors.values():
            monitor.close()


def _same_server(a: PoolSettings, b: PoolSettings) -> bool:
    """Do both pools log in to the same server database as the same user?"""
    return (a.host, a.port, a.database, a.user) == (b.host, b.port, b.database, b.user)
