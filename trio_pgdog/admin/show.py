"""The admin console's SHOW commands: each builds (columns, rows) from the running proxy.

Column names follow PgBouncer's where PgBouncer has the command, so scripts written for its
console read these unchanged; trio_pgdog's own columns come after them. Everything is read
when asked: nothing here runs on the data path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import attrs
import trio

from .. import __version__
from ..config.models import General
from ..pool.pool import Pool
from ..pool.stats import clock_ns
from ..protocol.results import TEXT_OID
from .settings import CHANGEABLE

if TYPE_CHECKING:
    from ..app import Proxy
    from ..netio import Conn
    from ..pool.hosts import HostGroup
    from ..pool.server import ServerConnection
    from ..session.session import ClientSession

INT8_OID = 20
Cell = str | int | float | None
Table = tuple[list[tuple[str, int]], list[list[Cell]]]


def _columns(text: str, numbers: str = "") -> list[tuple[str, int]]:
    """Columns named in `text` (text type) then `numbers` (bigint), in the order written,
    space-separated; a name in `numbers` may also appear in `text` to fix its place."""
    ints = set(numbers.split())
    return [(name, INT8_OID if name in ints else TEXT_OID) for name in text.split()]


# --- pools -----------------------------------------------------------------------------------


def pool_groups(app: Proxy) -> dict[int, HostGroup]:
    """id(pool) -> the host group it serves in."""
    out: dict[int, HostGroup] = {}
    for first in app.pools.groups.values():
        for group in first.shards:
            for pool in group.pools:
                out[id(pool)] = group
    return out


def pools_of(app: Proxy, database: str | None = None) -> list[Pool]:
    """Every pool, or those of one logical database; AdminError-free: an unknown name gives []."""
    return [p for p in app.pools.pools.values() if database is None or p.logical_database == database]


def _pool_user(app: Proxy) -> dict[int, str]:
    return {id(pool): key[0] for key, pool in app.pools.pools.items()}


def client_counts(app: Proxy) -> dict[int, tuple[int, int]]:
    """id(pool) -> (clients linked to one of its servers, idle clients); a client between
    transactions is counted on its host group's first pool (waiting ones are not idle)."""
    groups = pool_groups(app)
    linked: dict[int, int] = {}
    idle: dict[int, int] = {}
    for session in app.sessions.values():
        server = session.linked_server
        if server is not None and server.pool is not None:
            linked[id(server.pool)] = linked.get(id(server.pool), 0) + 1
        elif session.group is not None:
            first = session.group.any_pool
            idle[id(first)] = idle.get(id(first), 0) + 1
    counts: dict[int, tuple[int, int]] = {}
    for pool in app.pools.pools.values():
        group = groups.get(id(pool))
        spare = idle.get(id(pool), 0)
        if spare and group is not None:  # waiting clients are between transactions too
            spare = max(0, spare - sum(len(p.waiters) + p.opening for p in group.pools))
        counts[id(pool)] = (linked.get(id(pool), 0), spare)
    return counts


def ban_left(pool: Pool) -> int:
    """Whole seconds until the host's ban ends; 0: not banned; -1: until UNBAN."""
    left = pool.banned_until - trio.current_time()
    if left <= 0:
        return 0
    return -1 if left == float("inf") else int(left + 0.999)


def show_pools(app: Proxy) -> Table:
    cols = _columns("database user cl_active cl_waiting sv_active sv_idle sv_used sv_login "
                    "maxwait maxwait_us pool_mode host port role shard banned paused",
                    "cl_active cl_waiting sv_active sv_idle sv_used sv_login maxwait maxwait_us "
                    "port shard banned paused")
    now = trio.current_time()
    counts = client_counts(app)
    rows: list[list[Cell]] = []
    for (user, _db, host, port, _name), pool in app.pools.pools.items():
        linked, idle = counts.get(id(pool), (0, 0))
        wait = now - pool.waiters[0].since if pool.waiters else 0.0
        used = sum(1 for s in pool.idle
                   if now - s.last_used >= pool.settings.healthcheck_interval)
        rows.append([pool.logical_database, user, linked + idle, len(pool.waiters),
                     pool.in_use - pool.opening, len(pool.idle) - used, used, pool.opening,
                     int(wait), int(wait * 1_000_000) % 1_000_000, pool.settings.pooler_mode,
                     host, port, pool.role, pool.shard, ban_left(pool), int(pool.paused)])
    return cols, rows


_STATS_TOTALS = ("xact_count", "query_count", "bytes_received", "bytes_sent", "xact_time_us",
                 "query_time_us", "wait_time_us")


def show_stats(app: Proxy) -> Table:
    cols = _columns(
        "database total_xact_count total_query_count total_received total_sent total_xact_time "
        "total_query_time total_wait_time avg_xact_count avg_query_count avg_recv avg_sent "
        "avg_xact_time avg_query_time avg_wait_time user host port role shard total_errors "
        "max_wait_time",
        "total_xact_count total_query_count total_received total_sent total_xact_time "
        "total_query_time total_wait_time avg_xact_count avg_query_count avg_recv avg_sent "
        "avg_xact_time avg_query_time avg_wait_time port shard total_errors max_wait_time")
    rows: list[list[Cell]] = []
    for (user, _db, host, port, _name), pool in app.pools.pools.items():
        s, a = pool.stats, pool.stats.averages
        rows.append([pool.logical_database, *(getattr(s, n) for n in _STATS_TOTALS),
                     *attrs.astuple(a), user, host, port, pool.role, pool.shard, s.errors,
                     s.max_wait_us])
    return cols, rows


# --- clients and servers ---------------------------------------------------------------------


def _wall(us_ago: float) -> str:
    """A wall-clock time `us_ago` microseconds before now, as PgBouncer prints it."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() - us_ago / 1e6))


def _addr(addr: str) -> tuple[str, int | None]:
    host, _, port = addr.rpartition(":")
    return (host, int(port)) if port.isdigit() else (addr, None)


def _client_state(session: ClientSession) -> str:
    if session.linked_server is not None or (session.relay is not None
                                             and session.relay.busy_servers()):
        return "active"
    return "idle"


def _tls(conn: Conn) -> str:
    """PgBouncer's tls column: the protocol version and cipher, or empty for plain TCP."""
    return conn.describe() if conn.tls else ""


def show_clients(app: Proxy) -> Table:
    cols = _columns("type user database state addr port connect_time request_time wait "
                    "wait_us id link remote_pid tls application_name",
                    "port wait wait_us id link remote_pid")
    now = clock_ns() // 1000
    rows: list[list[Cell]] = []
    for pid, session in app.sessions.items():
        host, port = _addr(session.addr)
        server = session.linked_server
        asked = session.asked_at
        rows.append(["C", session.user, session.database, _client_state(session), host, port,
                     _wall((time.time() - session.connected_at) * 1e6),
                     _wall(now - asked // 1000) if asked else None, 0, 0, pid,
                     server.id if server is not None else None,
                     server.pid if server is not None else None, _tls(session.client),
                     session.settings.wanted.get("application_name", "")])
    return cols, rows


def _servers(app: Proxy) -> Iterator[tuple[ServerConnection, Pool, str, int | None]]:
    """(server, pool, state, the client it serves) for every server connection of a pool."""
    busy: dict[int, int] = {}
    in_use: list[ServerConnection] = []
    for pid, session in app.sessions.items():
        servers = session.relay.busy_servers() if session.relay is not None else \
            [session.linked_server] if session.linked_server is not None else []
        for server in servers:
            busy[id(server)] = pid
            in_use.append(server)
    for pool in app.pools.pools.values():
        for server in pool.idle:
            yield server, pool, "idle", None
    for server in in_use:
        if isinstance(server.pool, Pool):
            yield server, server.pool, "active", busy[id(server)]


def show_servers(app: Proxy) -> Table:
    cols = _columns("type user database state addr port connect_time request_time wait "
                    "wait_us id link remote_pid tls application_name role shard",
                    "port wait wait_us id link remote_pid shard")
    now = trio.current_time()
    users = _pool_user(app)
    rows: list[list[Cell]] = []
    for server, pool, state, client in _servers(app):
        rows.append(["S", users.get(id(pool), pool.settings.user), pool.logical_database, state,
                     server.host, server.port, _wall((now - server.created_at) * 1e6),
                     _wall((now - server.last_used) * 1e6), 0, 0, server.id, client,
                     server.pid, _tls(server.conn), "trio_pgdog", pool.role, pool.shard])
    return cols, rows


# --- configuration ---------------------------------------------------------------------------


def show_databases(app: Proxy) -> Table:
    cols = _columns("name host port database pool_size pool_mode shard role current_connections "
                    "paused", "port pool_size shard current_connections paused")
    config = app.config
    g = config.general
    rows: list[list[Cell]] = []
    for db in config.databases:
        users = [u for u in config.users if u.database == db.name]
        pools = [p for p in pools_of(app, db.name)
                 if (p.settings.host, p.settings.port, p.settings.database) ==
                 (db.host, db.port, db.database_name)]
        # Pool size is set per user: the largest of this database's users.
        size = max((u.effective_pool_size(g) for u in users), default=g.default_pool_size)
        modes = sorted({u.effective_pooler_mode(g) for u in users}) or [g.pooler_mode]
        rows.append([db.name, db.host, db.port, db.database_name, size, ",".join(modes),
                     db.shard, db.role, sum(p.total for p in pools),
                     int(bool(pools) and all(p.paused for p in pools))])
    return cols, rows


def show_users(app: Proxy) -> Table:
    cols = _columns("name database pool_mode pool_size current_connections",
                    "pool_size current_connections")
    g = app.config.general
    connected: dict[tuple[str, str], int] = {}
    for session in app.sessions.values():
        key = (session.user, session.database)
        connected[key] = connected.get(key, 0) + 1
    rows: list[list[Cell]] = [
        [u.name, u.database, u.effective_pooler_mode(g), u.effective_pool_size(g),
         connected.get((u.name, u.database), 0)] for u in app.config.users]
    return cols, rows


def show_config(app: Proxy) -> Table:
    cols = _columns("key value default changeable")
    general = app.config.general
    rows: list[list[Cell]] = []
    for field in attrs.fields(General):
        default = field.default
        rows.append([field.name, _text(getattr(general, field.name)), _text(default),
                     "yes" if field.name in CHANGEABLE else "no"])
    return cols, rows


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def show_version(app: Proxy) -> Table:
    del app
    return _columns("version"), [[f"trio_pgdog {__version__}"]]


def show_lists(app: Proxy) -> Table:
    pools = list(app.pools.pools.values())
    active = sum(1 for s in app.sessions.values() if _client_state(s) == "active")
    items = [
        ("databases", len({db.name for db in app.config.databases})),
        ("users", len(app.config.users)),
        ("pools", len(pools)),
        ("used_clients", len(app.sessions)),
        ("active_clients", active),
        ("waiting_clients", sum(len(p.waiters) for p in pools)),
        ("free_servers", sum(len(p.idle) for p in pools)),
        ("used_servers", sum(p.in_use - p.opening for p in pools)),
        ("login_servers", sum(p.opening for p in pools)),
        ("query_cache_entries", len(app.parse_cache)),
        ("query_cache_hits", app.parse_cache.hits),
        ("query_cache_misses", app.parse_cache.misses),
        ("query_cache_evictions", app.parse_cache.evictions),
        ("prepared_statements", len(app.statements)),
    ]
    return _columns("list items", "items"), [list(item) for item in items]


# --- hooks and caches ------------------------------------------------------------------------


def show_hooks(app: Proxy) -> Table:
    from ..hooks.stats import KINDS

    cols = _columns("hook events databases calls errors " + " ".join(f"{k}s" for k in KINDS)
                    + " total_time_us avg_time_us",
                    "calls errors " + " ".join(f"{k}s" for k in KINDS) + " total_time_us avg_time_us")
    rows: list[list[Cell]] = []
    for entry in app.hooks.entries:
        s = entry.stats
        rows.append([entry.label, ",".join(entry.events), ",".join(sorted(entry.databases)),
                     s.calls, s.errors, *s.decisions, s.time_ns // 1000,
                     s.time_ns // 1000 // s.timed if s.timed else 0])
    return cols, rows


def show_prepared(app: Proxy) -> Table:
    cols = _columns("name statement parameters known_good", "parameters")
    registry = app.statements
    rows: list[list[Cell]] = []
    for parse_rest, name in registry.items():
        sql, _, types = parse_rest.partition(b"\x00")
        count = int.from_bytes(types[:2], "big") if len(types) >= 2 else 0
        rows.append([name.decode(), sql.decode(errors="replace"), count,
                     "yes" if name in registry.known_good else "no"])
    return cols, rows


def show_query_cache(app: Proxy) -> Table:
    """The parse cache's entries (its hit and miss totals are in SHOW LISTS)."""
    cols = _columns("query kind writes parse_ok tables")
    rows: list[list[Cell]] = []
    for sql, facts in app.parse_cache.items():
        text = sql.decode(errors="replace") if isinstance(sql, bytes) else sql
        tables = ",".join(".".join(p for p in t if p) for t in facts.tables)
        rows.append([text, facts.kind, _text(facts.writes), _text(facts.parse_ok), tables])
    return cols, rows


SHOW: dict[str, Callable[[Proxy], Table]] = {
    "POOLS": show_pools, "STATS": show_stats, "CLIENTS": show_clients, "SERVERS": show_servers,
    "DATABASES": show_databases, "USERS": show_users, "CONFIG": show_config,
    "VERSION": show_version, "LISTS": show_lists, "HOOKS": show_hooks,
    "PREPARED": show_prepared, "QUERY_CACHE": show_query_cache,
}
