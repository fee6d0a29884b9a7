"""The cheap way for the common sharded statement: one Query for one shard, outside a transaction.

A transaction-mode client at rest sends `SELECT ... WHERE key = 42`: once the relay has found
the shard, nothing about the statement needs the sharded machinery (a ShardLink and its
Tracker, which exist to rename prepared statements and to merge answers of several shards).
This relays it the way an unsharded session relays a Query: an idle server of the shard's
pool, the Query sent as it came, the answer forwarded chunk by chunk through a ServerScan
(which counts the ReadyForQuery), the server given back at `I`.

Whatever this path does not handle it declines before anything is sent (no idle server ready,
the client's settings not yet on the server): the caller then takes the general path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from ..netio import ConnectionClosed
from ..pool.hosts import PRIMARY, REPLICA
from ..pool.stats import clock_ns
from ..protocol import messages as m
from .attach import give_back
from .failures import ClientGone
from .shard_link import ShardLink, ShardLost
from .sqltext import unmark_errors

if TYPE_CHECKING:
    from ..pool.server import ServerConnection
    from .scan import ServerScan
    from .sharded import ShardedRelay
    from .tracker import Tracker

# Statement kinds (router/sharding/keys.py) a lone Query may take this path with: they end
# where they began, outside a transaction, and start no COPY.
PLAIN_KINDS = frozenset(("select", "insert", "update", "delete"))


async def relay_plain(relay: ShardedRelay, shard: int, query: bytes, *, writes: bool,
                      tracker: Tracker | None = None) -> bool:
    """Run `query` on `shard` and relay its answer; False (nothing sent) to decline. An
    extended-protocol execution comes with the shard's Tracker (statement names)."""
    session = relay.session
    group = session._current_group().shards[shard]
    role = session.role_override or (PRIMARY if writes else REPLICA)
    server = group.choose(role)[0].take_idle()
    if server is None:
        return False
    if server.needs_check or session.settings.sync_sql(server) is not None:
        give_back(server)  # a check or the client's settings first: the general path does them
        return False
    if writes:
        relay.wrote.add(shard)
    relay.plain = server
    try:
        await _relay(relay, shard, server, query, tracker)
    except BaseException:
        relay.plain = None
        give_back(server, reusable=False)
        if tracker is not None:
            relay.forget_plain_tracker(shard)  # it may be mid-answer: not to be used again
        raise
    relay.plain = None
    if session.departure is not None:  # nobody read the answer: the server is not reused
        give_back(server, reusable=False)
        raise ClientGone
    if server.status == b"I":
        give_back(server)
        return True
    # The server stayed in a transaction after all (a function that opened one?): it is
    # the shard's link now, as if the general path had run the statement.
    link = ShardLink(shard, server, relay.shard_tracker())
    relay.links[shard] = link
    relay.joined.add(shard)
    relay.status = server.status
    return True


async def _relay(relay: ShardedRelay, shard: int, server: ServerConnection, data: bytes,
                 tracker: Tracker | None) -> None:
    """Send `data`, relay the answers until the server owes nothing more. (One loop, few
    awaits: each level of coroutine costs on every wake-up.)"""
    session, stats, conn = relay.session, server.stats, server.conn
    if tracker is None:
        scan = relay.plain_scan
        scan.reset()
    else:
        data, now = tracker.from_client(data, server.statements)
        if now:  # answers the Tracker gives itself come first
            await _to_client(session, now)
    stats.bytes_received += len(data)  # the shard's pool counts as ShardLink does
    asked = clock_ns()
    try:
        sent = conn.send_nowait(data)
        if sent != len(data):
            await conn.send(data, sent)
        while True:
            chunk = await conn.recv()
            if tracker is None:
                visible, ready, more = _scanned(scan, chunk, shard, server, session)
            else:
                visible, ready, more = _tracked(tracker, chunk, shard, server, session)
            stats.answered(len(visible), ready)
            if visible:
                await _to_client(session, visible)
            if ready:
                server.status = ready[-1]
            if not more:  # a statement outside a transaction: its own transaction's time too
                took = (clock_ns() - asked) // 1000
                stats.query_time_us += took
                if server.status == b"I":
                    stats.xact_time_us += took
                return
    except ConnectionClosed as exc:
        raise ShardLost(shard, server, str(exc)) from None
    except trio.ClosedResourceError:  # the departure watch gave up on this server
        raise ShardLost(shard, server, "closed by the proxy") from None


def _scanned(scan: ServerScan, chunk: bytes, shard: int, server: ServerConnection,
             session) -> tuple[bytes, list[bytes] | tuple[()], bool]:
    """A Query's answers through the ServerScan: (for the client, ReadyForQuery statuses,
    more to come)."""
    data = scan.feed(chunk)
    if scan.fatal:
        _fatal(shard, server, scan.fatal_body)
    if scan.marked:
        data = unmark_errors(data, scan.marked)
    if scan.dropped:  # (a plain kind drops no statement, but a server's word is law)
        server.statements.dropped(scan.dropped)
    if scan.errors:
        server.stats.errors += scan.errors
        scan.errors = 0
    if scan.params:
        session.settings.reported(scan.params, server)
    return data, scan.ready, not scan.ready


def _tracked(tracker: Tracker, chunk: bytes, shard: int, server: ServerConnection,
             session) -> tuple[bytes, list[bytes], bool]:
    """Extended-protocol answers through the Tracker (renamed statements' answers cleaned),
    as a ShardLink reads them."""
    visible, ready, fatal = tracker.from_server(chunk, server.statements)
    if fatal:
        _fatal(shard, server, tracker.fatal_body)
    if tracker.errors:
        server.stats.errors += tracker.errors
        tracker.errors = 0
    if tracker.params:
        session.settings.reported(tracker.params, server)
    return visible, ready, bool(tracker.queue)


def _fatal(shard: int, server: ServerConnection, body: bytes) -> None:
    said = m.parse_error_fields(body)
    raise ShardLost(shard, server, f"FATAL {said.get('C', '?')}: {said.get('M', '')}")


async def _to_client(session, data: bytes) -> None:
    """Answers to the client (none once it has left)."""
    if session.departure is None:
        try:
            sent = session.client.send_nowait(data)
            if sent != len(data):
                await session.client.send(data, sent)
        except ConnectionClosed:
            raise ClientGone from None
