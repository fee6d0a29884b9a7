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
from ..protocol import messages as m
from .attach import give_back
from .failures import ClientGone
from .shard_link import ShardLink, ShardLost
from .sqltext import unmark_errors

if TYPE_CHECKING:
    from ..pool.server import ServerConnection
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
        if tracker is None:
            await _relay(relay, shard, server, query)
        else:
            await _relay_tracked(relay, shard, server, query, tracker)
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


async def _relay(relay: ShardedRelay, shard: int, server: ServerConnection, query: bytes) -> None:
    session = relay.session
    scan, stats = relay.plain_scan, server.stats
    scan.reset()
    await _send(shard, server, query)
    while True:
        data = scan.feed(await _recv(shard, server))
        if scan.fatal:
            fields = m.parse_error_fields(scan.fatal_body)
            raise ShardLost(shard, server, f"FATAL {fields.get('C', '?')}: {fields.get('M', '')}")
        if scan.marked:
            data = unmark_errors(data, scan.marked)
        if scan.dropped:  # (a plain kind drops no statement, but a server's word is law)
            server.statements.dropped(scan.dropped)
        stats.bytes_sent += len(data)
        if scan.errors:
            stats.errors += scan.errors
            scan.errors = 0
        await _to_client(session, data)
        if scan.params:
            session.settings.reported(scan.params, server)
        if scan.ready:
            server.status = scan.ready[-1]
            stats.query_count += 1
            stats.xact_count += server.status == b"I"
            return


async def _relay_tracked(relay: ShardedRelay, shard: int, server: ServerConnection, data: bytes,
                         tracker: Tracker) -> None:
    """_relay for extended-protocol messages: the Tracker renames statements on the way out
    and counts (and cleans) the answers on the way back, as a ShardLink's does."""
    session, stats = relay.session, server.stats
    data, now = tracker.from_client(data, server.statements)
    await _to_client(session, now)  # answers the Tracker gives itself come first
    await _send(shard, server, data)
    while tracker.queue:
        visible, ready, fatal = tracker.from_server(await _recv(shard, server), server.statements)
        if fatal:
            said = m.parse_error_fields(tracker.fatal_body)
            raise ShardLost(shard, server, f"FATAL {said.get('C', '?')}: {said.get('M', '')}")
        stats.bytes_sent += len(visible)
        if tracker.errors:
            stats.errors += tracker.errors
            tracker.errors = 0
        await _to_client(session, visible)
        if tracker.params:
            session.settings.reported(tracker.params, server)
        if ready:
            server.status = ready[-1]
            stats.query_count += len(ready)
            stats.xact_count += ready.count(b"I")


async def _send(shard: int, server: ServerConnection, data: bytes) -> None:
    server.stats.bytes_received += len(data)  # the shard's pool counts as ShardLink does
    try:
        sent = server.conn.send_nowait(data)
        if sent != len(data):
            await server.conn.send(data, sent)
    except ConnectionClosed as exc:
        raise ShardLost(shard, server, str(exc)) from None


async def _recv(shard: int, server: ServerConnection) -> bytes:
    try:
        return await server.conn.recv()
    except ConnectionClosed as exc:
        raise ShardLost(shard, server, str(exc)) from None
    except trio.ClosedResourceError:  # the departure watch gave up on this server
        raise ShardLost(shard, server, "closed by the proxy") from None


async def _to_client(session, data: bytes) -> None:
    """Answers to the client as they come (none once it has left)."""
    if data and session.departure is None:
        try:
            sent = session.client.send_nowait(data)
            if sent != len(data):
                await session.client.send(data, sent)
        except ConnectionClosed:
            raise ClientGone from None
