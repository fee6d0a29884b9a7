"""COPY FROM STDIN on a sharded database: each row to its key's shard, as it arrives.

Every shard involved gets the COPY statement; the client gets one CopyInResponse. Each CopyData
the client sends is split into rows (router/sharding/copy.py) and each shard gets its rows in a
CopyData of its own at once, so the proxy holds no more than a partial row: a million-row COPY
streams through in flat memory, at the speed the slowest shard reads. The header of a CSV and
the signature and trailer of the binary format go to every shard. An omnisharded table (the
same rows on every shard) gets every row everywhere. At CopyDone each shard answers COPY n;
the client gets the total. A row whose key cannot be read stops the COPY on every shard
(CopyFail), as PostgreSQL stops at a bad row. COPY TO STDOUT is an ordinary fan-out (its rows
concatenated).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ..netio import ConnectionClosed
from ..protocol import ProxyError
from ..protocol import errors as codes
from ..protocol import messages as m
from ..router.sharding.copy import CopySplitter
from ..router.sharding.copy_statement import CopySplitError, CopyStatement, parse_copy
from ..router.sharding.keys import ShardingFacts
from . import merge, two_phase
from .failures import ClientGone
from .select_merge import check_copy_query
from .shard_link import ShardLink

if TYPE_CHECKING:
    from .sharded import ShardedRelay

_LEN = struct.Struct("!i").unpack_from
COPY_DATA, COPY_DONE, COPY_FAIL = ord("d"), ord("c"), ord("f")
_IN_COPY = frozenset(b"dHS")  # messages that leave the copy going


async def copy_in(relay: ShardedRelay, sql: str, facts: ShardingFacts, shards: frozenset[int],
                  raw: bytes) -> None:
    """A `COPY ... FROM STDIN` Query (anything else COPY is a plain fan-out)."""
    try:
        statement = parse_copy(sql)
    except (ValueError, CopySplitError):
        statement = None
    if statement is None or not statement.is_from or not statement.stdio:
        if statement is not None and statement.is_from:
            await relay._refuse(ProxyError(codes.FEATURE_NOT_SUPPORTED,
                                           "COPY FROM a server file or program cannot run on a "
                                           "sharded database: use COPY FROM STDIN"))
            return
        try:
            if statement is not None and statement.table is None and len(shards) > 1:
                check_copy_query(relay, sql, facts)
        except ProxyError as exc:
            await relay._refuse(exc)
            return
        await relay._fan_out(dict.fromkeys(shards, raw), [("Q", b"", None)], writes=facts.writes)
        return
    links = [await relay._link(shard, True) for shard in sorted(shards)]
    try:
        splitter = await _splitter(relay, statement, links)
    except ProxyError as exc:
        await relay._refuse(exc)
        return
    wrapped = relay.status == b"I" and len(links) > 1
    if wrapped:
        await relay._run_each(links, b"BEGIN")
    for link in links:
        await link.send(link.outgoing(raw))
    started = await _copy_started(links)
    if started is not None:
        await _end(relay, links, wrapped, started, same=False)
        return
    await relay._send(links[0].last_copy_in or b"")
    error = await _stream(relay, links, splitter)
    await _end(relay, links, wrapped, error, same=facts.omnisharded_write)


async def _splitter(relay: ShardedRelay, statement: CopyStatement,
                    links: list[ShardLink]) -> CopySplitter | None:
    """The splitter for a sharded table's rows; None when every row goes everywhere (an
    omnisharded table) or there is one shard."""
    key = relay.schema.key_of(statement.table or "", statement.schema)
    if key is None or len(links) == 1:
        return None
    column, data_type, _named = key
    columns = statement.columns or await _table_columns(links[0], statement)
    encoding = relay.session.settings.wanted.get("client_encoding", "UTF8")
    try:
        return CopySplitter.from_statement(statement, columns, column, relay.schema.shards,
                                           data_type, client_encoding=encoding)
    except CopySplitError as exc:
        raise ProxyError(exc.sqlstate, exc.message, hint=exc.hint) from None


async def _table_columns(link: ShardLink, statement: CopyStatement) -> list[str]:
    """A COPY without a column list: the table's columns in PostgreSQL's order (COPY data
    never holds generated ones)."""
    table = statement.table or ""
    name = f'"{statement.schema}"."{table}"' if statement.schema else f'"{table}"'
    literal = name.replace("'", "''")
    row = await link.server.query_row(
        "SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute "
        f"WHERE attrelid = '{literal}'::regclass AND attnum > 0 AND NOT attisdropped "
        "AND attgenerated = ''")
    if not row or row[0] is None:
        raise ProxyError("42P01", f'relation "{table}" does not exist')
    return row[0].split(",")


async def _copy_started(links: list[ShardLink]) -> bytes | None:
    """Each shard's CopyInResponse; the first ErrorResponse instead if one refused."""
    error = None
    for link in links:
        while True:
            message = await link.message()
            if message[:1] == b"G":
                link.last_copy_in = message
                break
            if message[:1] == b"E":
                if error is None:
                    error = merge.naming_shard(message, link.shard) if len(links) > 1 else message
                break
    if error is not None:
        for link in links:  # the shards that did start: stop them
            if link.last_copy_in:
                await link.send(m.message(b"f", b"another shard refused the COPY\x00"))
    return error


async def _stream(relay: ShardedRelay, links: list[ShardLink],
                  splitter: CopySplitter | None) -> bytes | None:
    """The client's copy data to the shards until CopyDone or CopyFail; an error of the
    proxy's own (a row that cannot be split) instead of the shards' answers, if any. What
    arrived in one read goes out in one CopyData per shard, whatever its messages were."""
    by_shard = {link.shard: link for link in links}
    while True:
        rows: dict[int, list[bytes]] = {}
        for kind, body in await _client_messages(relay):
            if kind == COPY_DATA:
                if splitter is None:
                    rows.setdefault(-1, []).append(body)
                    continue
                try:
                    for shard, pieces in splitter.feed(body).items():
                        rows.setdefault(shard, []).extend(pieces)
                except CopySplitError as exc:
                    return await _abort(links, exc)
            elif kind in (ord("H"), ord("S")):
                continue  # PostgreSQL ignores them during COPY
            else:
                await _send_rows(by_shard, rows)
                return await _copy_end(links, by_shard, splitter, kind, body)
        await _send_rows(by_shard, rows)


async def _copy_end(links: list[ShardLink], by_shard: dict[int, ShardLink],
                    splitter: CopySplitter | None, kind: int, body: bytes) -> bytes | None:
    """CopyDone (the last rows, then CopyDone to every shard), CopyFail (to every shard), or
    a message that has no place in a COPY (the COPY stops with PostgreSQL's error)."""
    if kind == COPY_DONE:
        if splitter is not None:
            try:
                await _send_rows(by_shard, splitter.finish())
            except CopySplitError as exc:
                return await _abort(links, exc)
        for link in links:
            await link.send(m.message(b"c"))
        return None
    if kind == COPY_FAIL:
        for link in links:
            await link.send(m.message(b"f", body))
        return None
    return await _abort(links, CopySplitError(
        codes.PROTOCOL_VIOLATION, f"unexpected message type 0x{kind:02X} during COPY from stdin"))


async def _send_rows(by_shard: dict[int, ShardLink], rows: dict[int, list[bytes]]) -> None:
    """Each shard's rows in one CopyData (-1: every shard, the same data)."""
    for shard, pieces in rows.items():
        data = m.message(b"d", b"".join(pieces))
        for link in by_shard.values() if shard == -1 else (by_shard[shard],):
            await link.send(data)


async def _abort(links: list[ShardLink], exc: CopySplitError) -> bytes:
    """Stop the COPY on every shard; the client gets the proxy's error."""
    for link in links:
        await link.send(m.message(b"f", exc.message.encode() + b"\x00"))
    fields = m.error_response(exc.sqlstate, exc.message, hint=exc.hint)
    return fields


async def _client_messages(relay: ShardedRelay) -> list[tuple[int, bytes]]:
    """The client's whole messages that have arrived (at least one) during COPY."""
    while True:
        buf, pos, found = relay._buf, 0, []
        while len(buf) - pos >= 5:
            nxt = pos + 1 + _LEN(buf, pos + 1)[0]
            if nxt > len(buf):
                break
            kind = buf[pos]
            found.append((kind, buf[pos + 5 : nxt]))
            pos = nxt
            if kind not in _IN_COPY:
                break  # the copy ends here; what follows is the client's next unit
        if found:
            relay._buf = buf[pos:]
            return found
        try:
            data = await relay.session.client.recv()
        except ConnectionClosed:
            raise ClientGone from None
        relay._buf += data


async def _end(relay: ShardedRelay, links: list[ShardLink], wrapped: bool, error: bytes | None,
               *, same: bool) -> None:
    """Each shard's answer to the end of the copy; one CommandComplete (the total) and one
    ReadyForQuery for the client."""
    tags: list[bytes] = []
    statuses: list[bytes] = []
    for link in links:
        while True:
            message = await link.message()
            kind = message[:1]
            if kind == b"C":
                tags.append(merge.command_tag(message))
            elif kind == b"E" and error is None:
                error = merge.naming_shard(message, link.shard) if len(links) > 1 else message
            elif kind == b"Z":
                statuses.append(message[5:6])
                break
    if wrapped:
        error = await two_phase.end_wrapped(relay, links, error is not None) or error
        statuses = [b"I"]
    relay.status = merge.combined_status(statuses)
    if relay.status != b"I":
        relay.joined.update(link.shard for link in links)
    out = [error] if error is not None else [
        merge.command_complete(tags[0] if same else merge.total_tag(tags))]
    await relay._send(b"".join(out) + m.ready_for_query(relay.status))
