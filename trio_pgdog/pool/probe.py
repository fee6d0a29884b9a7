"""Log in to each configured server once, to find mistakes before a client does.

The running proxy does it at start-up (one WARNING per failure, app.py) and
`python -m trio_pgdog check-config` does it for every user (one line per login).
A probe is an ordinary login as the proxy's pools make it, then a Terminate; it does not
ban a host that fails: a server still starting up should get traffic as soon as it can
take it, and the pools ban a failing host themselves when clients need it.
"""

from __future__ import annotations

import os

import attrs
import trio

from ..config import Config, Database
from .manager import pool_settings
from .server import CONNECT_ERRORS, ServerConnection
from .settings import PoolSettings

__all__ = ["Outcome", "Target", "probe_all", "targets", "unused_databases"]

# How long a probe may take when connect_timeout is 0 (no limit for the pools).
_FALLBACK_TIMEOUT = 5.0


@attrs.frozen
class Target:
    """One login to try: a [[databases]] entry, as one user of users.toml."""

    entry: Database
    user: str               # the users.toml name the login is for
    settings: PoolSettings  # host, port, database and the server-side credentials

    def describe(self) -> str:
        """e.g. "appdb (replica) 10.0.0.2:5432 database appdb_prod as app"."""
        db, s = self.entry, self.settings
        role = db.role if db.shard == 0 else f"{db.role}, shard {db.shard}"
        on = f" database {s.database}" if s.database != db.name else ""
        as_user = self.user if s.user == self.user else f"{self.user} (server user {s.user})"
        return f"{db.name} ({role}) {s.host}:{s.port}{on} as {as_user}"


@attrs.frozen
class Outcome:
    target: Target
    error: str | None       # None: logged in
    server_version: str = ""


def targets(config: Config, *, every_user: bool) -> list[Target]:
    """The logins to try: for each [[databases]] entry, its first user, or `every_user`.
    Users with the same server-side credentials share one login."""
    found: list[Target] = []
    seen: set[tuple[object, ...]] = set()
    for db in config.databases:
        for user in config.users:
            if user.database != db.name:
                continue
            settings = pool_settings(config, user, db)
            key = (settings.host, settings.port, settings.database, settings.user, settings.password)
            if key in seen:
                continue
            seen.add(key)
            found.append(Target(db, user.name, settings))
            if not every_user:
                break
    return found


def unused_databases(config: Config) -> list[Database]:
    """[[databases]] entries no user of users.toml may connect to."""
    names = {user.database for user in config.users}
    return [db for db in config.databases if db.name not in names]


async def probe(target: Target) -> Outcome:
    s = target.settings
    timeout = s.connect_timeout or _FALLBACK_TIMEOUT
    try:
        with trio.fail_after(timeout):
            server = await ServerConnection.connect(s.host, s.port, s.startup_params(), s.password,
                                                    s.statements_limit, s.tls)
    except trio.TooSlowError:
        return Outcome(target, f"no answer within {timeout * 1000:.0f} ms (connect_timeout)")
    except CONNECT_ERRORS as exc:
        return Outcome(target, _reason(exc))
    server.close()
    return Outcome(target, None, server.params.get("server_version", ""))


async def probe_all(found: list[Target]) -> list[Outcome]:
    """Every probe at once; the outcomes in the order of `found`."""
    outcomes: list[Outcome | None] = [None] * len(found)

    async def one(i: int) -> None:
        outcomes[i] = await probe(found[i])

    async with trio.open_nursery() as nursery:
        for i in range(len(found)):
            nursery.start_soon(one, i)
    return [o for o in outcomes if o is not None]


def _reason(exc: BaseException) -> str:
    fields = getattr(exc, "fields", None)
    if isinstance(fields, dict) and "M" in fields:  # PostgreSQL said no
        code = f" (SQLSTATE {fields['C']})" if "C" in fields else ""
        return f"{fields['M']}{code}"
    if isinstance(exc, OSError) and exc.errno is not None and exc.errno > 0:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__
