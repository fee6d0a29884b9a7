"""The admin console's commands that change something: PAUSE, RESUME, RECONNECT, RELOAD,
SHUTDOWN, BAN, UNBAN, KILL, KILL_CLIENT and SET. Each returns the CommandComplete tag."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ..pool.hosts import REPLICA
from ..pool.pool import Pool
from ..protocol import errors as codes
from .commands import AdminError, Command
from .settings import with_setting
from .show import pools_of

if TYPE_CHECKING:
    from ..app import Proxy

log = logging.getLogger(__name__)


def _pools(app: Proxy, database: str | None) -> list[Pool]:
    """The pools of `database` (every pool without one); 3D000 for a database not configured."""
    if database is not None and not app.config.databases_named(database):
        raise AdminError(codes.UNDEFINED_DATABASE, f'no database "{database}" in trio_pgdog')
    return pools_of(app, database)


async def pause(app: Proxy, cmd: Command) -> str:
    """Hold new transactions, and return once the ones under way have ended."""
    pools = _pools(app, cmd.args[0] if cmd.args else None)
    for pool in pools:
        pool.pause()
    log.info("admin: PAUSE %s: waiting for transactions under way to end", _which(cmd))
    for pool in pools:
        await pool.wait_drained()
    return "PAUSE"


async def resume(app: Proxy, cmd: Command) -> str:
    for pool in _pools(app, cmd.args[0] if cmd.args else None):
        pool.resume()
    log.info("admin: RESUME %s", _which(cmd))
    return "RESUME"


async def reconnect(app: Proxy, cmd: Command) -> str:
    for pool in _pools(app, cmd.args[0] if cmd.args else None):
        pool.reconnect()
    log.info("admin: RECONNECT %s: server connections are replaced as they come back", _which(cmd))
    return "RECONNECT"


async def reload(app: Proxy, cmd: Command) -> str:
    if app.config.pgdog_path is None:
        raise AdminError(codes.FEATURE_NOT_SUPPORTED,
                         "the configuration did not come from files: nothing to reload")
    if not app.reload():
        raise AdminError(codes.INVALID_PARAMETER_VALUE,
                         "reload failed, the running configuration is kept (the proxy's log says why)")
    return "RELOAD"


async def shutdown(app: Proxy, cmd: Command) -> str:
    log.info("admin: SHUTDOWN (waiting up to %d ms for in-flight transactions)",
             app.config.general.shutdown_timeout)
    app.shutdown()
    return "SHUTDOWN"


def _hosts(app: Proxy, where: str) -> list[Pool]:
    """Pools of the host `where` ("host" or "host:port"); 42704 if none matches."""
    host, _, port = where.rpartition(":")
    if not host or not port.isdigit():
        host, port = where, ""
    found = [p for p in app.pools.pools.values()
             if p.settings.host == host and (not port or p.settings.port == int(port))]
    if not found:
        raise AdminError(codes.UNDEFINED_OBJECT, f"no server {where!r} in trio_pgdog "
                         "(SHOW DATABASES lists host and port)")
    return found


async def ban(app: Proxy, cmd: Command) -> str:
    """Take a replica out of rotation until UNBAN (a primary takes the writes: never banned)."""
    replicas = [p for p in _hosts(app, cmd.args[0]) if p.role == REPLICA]
    if not replicas:
        raise AdminError(codes.FEATURE_NOT_SUPPORTED,
                         f"{cmd.args[0]} is a primary: only replicas can be banned")
    for pool in replicas:
        pool.banned_until = float("inf")
    log.warning("admin: BAN %s: no reads go there until UNBAN", cmd.args[0])
    return "BAN"


async def unban(app: Proxy, cmd: Command) -> str:
    for pool in _hosts(app, cmd.args[0]):
        pool.banned_until = float("-inf")
    log.info("admin: UNBAN %s", cmd.args[0])
    return "UNBAN"


async def kill(app: Proxy, cmd: Command) -> str:
    """Close every client of a database and replace its server connections."""
    database = cmd.args[0]
    pools = _pools(app, database)
    for session in [s for s in app.sessions.values() if s.database == database]:
        session.kill("terminated by the admin console (KILL)")
    for pool in pools:
        pool.reconnect()
    log.warning("admin: KILL %s", database)
    return "KILL"


async def kill_client(app: Proxy, cmd: Command) -> str:
    word = cmd.args[0]
    session = app.sessions.get(int(word)) if word.isdigit() else None
    if session is None:
        raise AdminError(codes.UNDEFINED_OBJECT, f"no client {word} (SHOW CLIENTS lists their id)")
    session.kill("terminated by the admin console (KILL_CLIENT)")
    log.warning("admin: KILL_CLIENT %s (%s@%s from %s)", word, session.user, session.database,
                session.addr)
    return "KILL_CLIENT"


async def set_setting(app: Proxy, cmd: Command) -> str:
    key, value = cmd.args
    app.install(with_setting(app.config, key, value))
    log.info("admin: SET %s = %s", key, value)
    return "SET"


def _which(cmd: Command) -> str:
    return cmd.args[0] if cmd.args else "every database"


ACTIONS: dict[str, Callable[[Proxy, Command], Awaitable[str]]] = {
    "PAUSE": pause, "RESUME": resume, "RECONNECT": reconnect, "RELOAD": reload,
    "SHUTDOWN": shutdown, "BAN": ban, "UNBAN": unban, "KILL": kill, "KILL_CLIENT": kill_client,
    "SET": set_setting,
}
