"""Two-phase commit of a transaction that wrote on several shards (`two_phase_commit`).

Without it, COMMIT goes to each shard one after the other, and a shard failing to commit
after another did (a crash, a deferred constraint) leaves the shards disagreeing. With it:

1. `PREPARE TRANSACTION '<gid>'` on every shard the transaction touched (all at once). A shard
   refusing (its error) or lost ends it: the shards that prepared get `ROLLBACK PREPARED`,
   the others' PREPARE failed and PostgreSQL rolled them back; the client gets the shard's
   error, naming it.
2. The decision goes to the journal on disk (twophase/journal.py), then `COMMIT PREPARED` on
   every shard. A shard that cannot be told now keeps its record: recovery finishes it
   (twophase/recovery.py), at the latest at the proxy's next start.

Transactions that wrote on one shard (or only read) commit plainly. "Wrote" is the router's
reading of the statements (router/classify.py): a SELECT calling a function that writes
counts as a read.

TRIO_PGDOG_TEST_TWO_PHASE_CRASH (tests only): "after_prepare" or "after_journal" kills the
proxy (SIGKILL) at that point of every two-phase commit, for the recovery tests.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import TYPE_CHECKING

from ..protocol import messages as m
from ..twophase.journal import Decision
from . import merge
from .shard_link import ShardLink, ShardLost

if TYPE_CHECKING:
    from .sharded import ShardedRelay

log = logging.getLogger(__name__)

_CRASH_AT = os.environ.get("TRIO_PGDOG_TEST_TWO_PHASE_CRASH", "")


def needed(relay: ShardedRelay) -> bool:
    """Does the client's COMMIT need two phases (the transaction wrote on several shards)?"""
    return len(relay.wrote) > 1 and relay.session.app.config.general.two_phase_commit


async def end_wrapped(relay: ShardedRelay, links: list[ShardLink], failed: bool) -> bytes | None:
    """End the transaction the proxy opened around a write on several shards: roll back if
    the write `failed`, else commit (in two phases if configured). The client's error if
    the commit failed."""
    if not failed and len(links) > 1 and relay.session.app.config.general.two_phase_commit:
        return await commit(relay, links)
    await relay._run_each(links, b"ROLLBACK" if failed else b"COMMIT")
    return None


async def commit(relay: ShardedRelay, links: list[ShardLink]) -> bytes | None:
    """Commit the transaction on `links` in two phases; None, or the error (naming its
    shard) when it was rolled back instead."""
    app, session = relay.session.app, relay.session
    journal = app.journal
    gid = journal.new_gid(app.node_id)
    journal.in_flight.add(gid)
    try:
        outcome = await _each(links, f"PREPARE TRANSACTION '{gid}'")
        _test_crash("after_prepare")
        prepared = [link for link in links if outcome[link.shard] is None]
        failed = [(link.shard, outcome[link.shard]) for link in links if link not in prepared]
        if failed:
            await _finish(relay, prepared, gid, commit=False)
            shard, error = failed[0]
            assert error is not None
            return merge.naming_shard(error, shard)
        decision = Decision(gid, session.user, session.database,
                            tuple(link.shard for link in links), commit=True)
        try:
            await journal.record(decision)
        except OSError as exc:
            await _finish(relay, prepared, gid, commit=False)
            return m.error_response("58030", f"two-phase commit: the journal in {journal.directory} "
                                    f"cannot be written ({exc}); the transaction was rolled "
                                    "back on every shard")
        _test_crash("after_journal")
        if await _finish(relay, links, gid, commit=True):
            journal.done(gid)
        return None
    finally:
        journal.in_flight.discard(gid)


async def _finish(relay: ShardedRelay, links: list[ShardLink], gid: str, *, commit: bool) -> bool:
    """COMMIT or ROLLBACK PREPARED on each link: True if every shard did it (else recovery
    will, and the failure is logged)."""
    verb = "COMMIT" if commit else "ROLLBACK"
    outcome = await _each(links, f"{verb} PREPARED '{gid}'")
    session = relay.session
    for shard, error in outcome.items():
        if error is not None:
            said = m.parse_error_fields(error[5:]).get("M", "")
            log.error("client %s (%s@%s): shard %d: %s PREPARED '%s' failed (%s): recovery will "
                      "finish it", session.addr, session.user, session.database, shard, verb,
                      gid, said)
    return all(error is None for error in outcome.values())


async def _each(links: list[ShardLink], sql: str) -> dict[int, bytes | None]:
    """Run `sql` on every link at once: each shard's ErrorResponse, or None. A lost shard
    counts as failed (its connection is not reused)."""
    statement = m.query(sql)
    sent: list[ShardLink] = []
    outcome: dict[int, bytes | None] = {}
    for link in links:
        try:
            await link.send(link.outgoing(statement))
            sent.append(link)
        except ShardLost as lost:
            outcome[link.shard] = _lost(link, lost)
    for link in sent:
        try:
            error = await link.error_until_ready()
        except ShardLost as lost:
            error = _lost(link, lost)
        outcome[link.shard] = error
    return outcome


def _lost(link: ShardLink, lost: ShardLost) -> bytes:
    link.server.broken = True  # (its unanswered statement keeps it from its pool, too)
    return m.error_response("08006", f"server connection lost during two-phase commit "
                            f"({lost.why})")


def _test_crash(point: str) -> None:
    if point == _CRASH_AT:  # tests only: a proxy dying between the phases
        os.kill(os.getpid(), signal.SIGKILL)
