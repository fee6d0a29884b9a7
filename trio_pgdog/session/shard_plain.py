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

# Statement kinds (router/sharding/keys.py) a lone Query may take this path with: they end
# where they began, outside a transaction, and start no COPY.
PLAIN_KINDS = frozenset(("select", "insert", "update", "delete"))


async def relay_plain(relay: ShardedRelay, shard: int, query: bytes, *, writes: bool) -> bool:
    """Run `query` on `shard` and relay its answer; False (nothing sent) to decline."""
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
        await _relay(relay, shard, server, query)
    except BaseException:
        relay.plain = None
        give_back(server, reusable=False)
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
    conn, session = server.conn, relay.session
    scan, stats = relay.plain_scan, server.stats
    scan.reset()
    stats.bytes_received += len(query)  # the shard's pool counts as ShardLink does
    try:
        sent = conn.send_nowait(query)
        if sent != len(query):
            await conn.send(query, sent)
    except ConnectionClosed as exc:
        raise ShardLost(shard, server, str(exc)) from None
    client = session.client
    while True:
        try:
            data = await conn.recv()
        except ConnectionClosed as exc:
            raise ShardLost(shard, server, str(exc)) from None
        except trio.ClosedResourceError:  # the departure watch gave up on this server
            raise ShardLost(shard, server, "closed by the proxy") from None
        data = scan.feed(data)
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
        if data and session.departure is None:
            try:
                sent = client.send_nowait(data)
                if sent != len(data):
                    await client.send(data, sent)
            except ConnectionClosed:
                raise ClientGone from None
        if scan.params:
            session.settings.reported(scan.params, server)
        if scan.ready:
            server.status = scan.ready[-1]
            stats.query_count += 1
            stats.xact_count += server.status == b"I"
            return
