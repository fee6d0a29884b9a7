"""All pools of the running configuration, one per (user, database)."""

from __future__ import annotations

import logging

import trio

from ..config import Config, Database, User
from .pool import Pool, PoolSettings

log = logging.getLogger(__name__)


def _primary(entries: tuple[Database, ...]) -> Database:
    for db in entries:
        if db.role == "primary":
            return db
    return entries[0]


def pool_settings(config: Config, user: User) -> PoolSettings | None:
    entries = config.databases_named(user.database)
    if not entries:
        return None
    db = _primary(entries)
    g = config.general
    return PoolSettings(
        host=db.host,
        port=db.port,
        database=db.database_name,
        user=user.server_user or user.name,
        password=user.server_password if user.server_password is not None else user.password,
        pool_size=user.effective_pool_size(g),
        min_pool_size=g.min_pool_size,
        pooler_mode=user.effective_pooler_mode(g),
        connect_timeout=g.connect_timeout / 1000,
        checkout_timeout=g.checkout_timeout / 1000,
        idle_timeout=g.idle_timeout / 1000,
        server_lifetime=g.server_lifetime / 1000,
        statements_limit=g.prepared_statements_limit,
    )


class PoolManager:
    """Owns the pools; each pool's maintenance runs in the nursery given to `start`."""

    def __init__(self) -> None:
        self.pools: dict[tuple[str, str], Pool] = {}

    def get(self, user: str, database: str) -> Pool | None:
        return self.pools.get((user, database))

    async def apply(self, config: Config, nursery: trio.Nursery) -> None:
        """Create pools for `config`; keep pools whose settings did not change; close the rest."""
        wanted: dict[tuple[str, str], PoolSettings] = {}
        for user in config.users:
            settings = pool_settings(config, user)
            if settings is not None:
                wanted[(user.name, user.database)] = settings
        for key, pool in list(self.pools.items()):
            if wanted.get(key) != pool.settings:
                log.info("pool %s: removed or changed, draining", pool.name)
                pool.close()
                del self.pools[key]
        for key, settings in wanted.items():
            if key not in self.pools:
                pool = Pool(f"{key[0]}@{key[1]}", settings)
                self.pools[key] = pool
                await nursery.start(pool.run)

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
