"""Recovery: finishing the prepared transactions this proxy left on its shards.

At start-up and then every RECOVERY_INTERVAL seconds (while two_phase_commit is on, or the
journal still holds decisions), for every sharded database and user, on each shard's primary:

- the prepared transactions of this node (`pgdog_<node>_...`; each worker process is a node
  of its own, see Proxy.node_id) that are the user's, in that
  database, are listed (`pg_prepared_xacts`);
- each is committed (`COMMIT PREPARED`) if the journal says commit, and rolled back (`ROLLBACK
  PREPARED`) otherwise: without a decision on disk, no shard was told to commit it. Those a
  session of this process is committing right now are left alone;
- a decision none of the shards still has prepared is done: its record goes.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from ..pool.server import CONNECT_ERRORS
from ..protocol import ProxyError, ServerError
from .journal import Journal, gid_prefix

if TYPE_CHECKING:
    from ..app import Proxy
    from ..pool.pool import Pool

log = logging.getLogger(__name__)

RECOVERY_INTERVAL = 30.0
_TIMEOUT = 10.0


async def run(app: Proxy) -> None:
    """Recover now, then now and again, for as long as the proxy runs."""
    journal = app.journal
    if app.config.general.two_phase_commit:
        journal.check_writable()
    while True:
        general = app.config.general
        if journal.load() and (general.two_phase_commit or journal.decisions):
            await recover(app, journal, app.node_id)
        await trio.sleep(RECOVERY_INTERVAL)


async def recover(app: Proxy, journal: Journal, node: int) -> None:
    """One pass over every shard of every sharded database."""
    unfinished: set[str] = set()  # gids still prepared somewhere (or not known to be done)
    checked: set[tuple[str, str]] = set()
    for (user, database), first in list(app.pools.groups.items()):
        if len(first.shards) < 2:
            continue
        complete = True
        for group in first.shards:
            if group.primary is None:
                continue
            left = await _recover_shard(group.primary, journal, node)
            if left is None:
                complete = False
            else:
                unfinished |= left
        if complete:
            checked.add((user, database))
    mine = gid_prefix(node)  # (other workers of this proxy share the journal's directory)
    for gid, decision in list(journal.decisions.items()):
        if gid.startswith(mine) and gid not in unfinished and gid not in journal.in_flight \
                and (decision.user, decision.database) in checked:
            journal.done(gid)


_disabled_said: set[str] = set()  # pools whose server allows no prepared transactions


def _check_enabled(pool: Pool, setting: str | None) -> None:
    """Say once per pool that its server cannot take part in two-phase commits."""
    if setting == "0" and pool.name not in _disabled_said:
        _disabled_said.add(pool.name)
        log.error("two-phase commit: %s has max_prepared_transactions = 0: transactions that "
                  "write on several shards will fail at COMMIT until it is raised (restart "
                  "that server)", pool.name)


async def _recover_shard(pool: Pool, journal: Journal, node: int) -> set[str] | None:
    """Finish this node's prepared transactions on one shard: the gids it could not finish;
    None if the shard could not be checked."""
    left: set[str] = set()
    try:
        with trio.fail_after(_TIMEOUT):
            server = await pool.checkout()
    except (*CONNECT_ERRORS, ProxyError, trio.TooSlowError) as exc:
        log.warning("two-phase recovery: %s cannot be checked now: %s", pool.name, exc)
        return None
    reusable = False
    try:
        with trio.fail_after(_TIMEOUT):
            row = await server.query_row(
                "SELECT string_agg(gid, ' '), current_setting('max_prepared_transactions') "
                "FROM pg_prepared_xacts WHERE database = current_database() AND owner = "
                f"current_user AND gid LIKE '{gid_prefix(node).replace('_', chr(92) + '_')}%'")
            _check_enabled(pool, row[1])
            for gid in (row[0] or "").split():
                if gid in journal.in_flight or gid in journal.unreadable:
                    left.add(gid)
                    continue
                decision = journal.decisions.get(gid)
                verb = "COMMIT" if decision is not None and decision.commit else "ROLLBACK"
                try:
                    await server.execute(f"{verb} PREPARED '{gid}'")
                    log.warning("two-phase recovery: %s: %s PREPARED '%s'", pool.name, verb, gid)
                except ServerError as exc:
                    if exc.fields.get("C") != "42704":  # gone meanwhile: someone finished it
                        log.error("two-phase recovery: %s: %s PREPARED '%s' failed: %s",
                                  pool.name, verb, gid, exc.fields.get("M", exc))
                        left.add(gid)
        reusable = server.status == b"I"
    except (*CONNECT_ERRORS, trio.TooSlowError) as exc:
        log.warning("two-phase recovery: %s: %s", pool.name, exc)
        return None
    finally:
        pool.checkin(server, reusable)
    return left
