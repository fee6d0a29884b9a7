"""A client of a sharded database: each unit of its messages goes to the shards it needs.

The client talks to trio_pgdog as to one PostgreSQL; the rows live on several (docs/
sharding.md). For each unit the client sends (a Query, or extended-protocol messages up to a
Sync or Flush) the relay finds the shards from the statements' sharding keys
(router/sharding/keys.py) and, pgDog's word, *binds* the client to one server connection per
shard it needs:

- one shard (the common case: a key was given, or one shard is enough): the unit goes to that
  shard's server as it came (statement names shared through the shard's Tracker) and the
  answer comes back as the server sent it;
- several shards: each gets what is its own (the unit, an INSERT's own rows, a COPY's own
  rows), their answers are read shard after shard and merged into one (session/merge.py;
  a SELECT's rows as one database would return them: session/select_merge.py);
  writes outside a transaction run inside one on every shard, committed only if every shard
  succeeded.

A transaction holds one connection per shard it touched: its BEGIN is answered here and sent
to each shard when the transaction first needs it; COMMIT and ROLLBACK go to all of them.
Units are handled one at a time: the next one is read once every answer to this one is out.
"""

from __future__ import annotations

import itertools
import logging
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING

import trio

from ..hooks.api import ALL_SHARDS, Action, QueryInfo
from ..netio import ConnectionClosed
from ..pool.hosts import PRIMARY, REPLICA
from ..pool.server import ServerConnection, send_cancel, try_execute
from ..pool.stats import clock_ns
from ..protocol import ProtocolError, ProxyError, ServerError
from ..protocol import errors as codes
from ..protocol import extended as ext
from ..protocol import messages as m
from ..protocol import results as r
from ..router.keywords import leading_keywords
from ..router.sharding.cursors import CursorStatement, cursor_statement
from ..router.sharding.keys import (
    ShardingError,
    ShardingFacts,
    bigint_key_shard,
    insert_rows_by_shard,
    shards_for,
)
from ..router.sharding.split import split_insert
from ..router.sharding.template import query_shape, template
from ..router.sharding.unique_id import mentions
from . import merge, two_phase
from .attach import CLEANUP_TIMEOUT, give_back
from .failures import ClientGone, shutdown_error
from .scan import ServerScan
from .select_merge import SelectRun, check_portals, extended_unit, simple_query
from .shard_copy import copy_in
from .shard_link import ShardLink, ShardLost, has_error
from .shard_plain import PLAIN_KINDS, relay_plain
from .split_binds import split_binds
from .tracker import Tracker
from .unique_ids import UniqueIdRewriter
from .units import Execution as OneExecution
from .units import one_execution, split_units

if TYPE_CHECKING:
    from ..router.sharding.keys import FactsCache
    from .session import ClientSession

log = logging.getLogger(__name__)

QUERY, PARSE, BIND, DESCRIBE, EXECUTE, CLOSE, SYNC, FLUSH = b"QPBDECSH"
FUNCTION_CALL, TERMINATE = ord("F"), ord("X")
_COPY_KINDS = frozenset(b"dcf")
_IDLE_READY = m.ready_for_query(b"I")
_KEPT_PARSES, _KEPT_PARSE_SIZE = 16, 4096  # Parse bodies a sharded session remembers (_parsed)
_LEN = struct.Struct("!i").unpack_from
_IN_FAILED = ("25P02", "current transaction is aborted, commands ignored until end of "
              "transaction block")

Message = tuple[int, bytes, bytes]  # (type, body, the whole message)
# What one client message earns in a fan-out: its type, body, and the shards it went to
# (None: every shard the unit went to).
Answer = tuple[str, bytes, frozenset[int] | None]


class Execution:
    """One statement the unit runs: a Query, or a Bind's execution of a prepared statement."""

    __slots__ = ("facts", "first", "last", "shards", "sql")

    def __init__(self, sql: str, facts: ShardingFacts, shards: frozenset[int], first: int,
                 last: int):
        self.sql, self.facts, self.shards = sql, facts, shards
        self.first, self.last = first, last  # its messages in the unit: [first, last]


class ShardedRelay:
    def __init__(self, session: ClientSession, cache: FactsCache):
        self.session = session
        self.cache = cache
        self.schema = cache.schema
        self.shards = session.group.shards if session.group is not None else []
        self.links: dict[int, ShardLink] = {}
        self._spare: dict[int, ShardLink] = {}  # links kept for the shard's next connection
        # The client's prepared statements: name -> (shared name, Parse body after the name),
        # shared by every shard's Tracker; and what routing needs of them: name -> (SQL, types).
        self.prepared: dict[bytes, tuple[bytes, bytes]] = {}
        self.statements: dict[bytes, tuple[str, tuple[int, ...]]] = {}
        self.portals: dict[bytes, frozenset[int]] = {}  # where each open portal was bound
        self.merged_portals: set[bytes] = set()  # merged SELECTs bound, not yet executed
        self.cursors: dict[str, frozenset[int]] = {}     # where each SQL cursor was declared
        self.status = b"I"                 # the client's transaction status
        self.begin: bytes | None = None    # the client's BEGIN, sent to each shard it touches
        self.joined: set[int] = set()      # shards that received it
        self.wrote: set[int] = set()       # shards it wrote on (two_phase.py)
        self.savepoints: list[bytes] = []  # SAVEPOINT statements a joining shard runs too
        self.hint_shard: int | None = None  # SET pgdog.shard / pgdog.sharding_key
        self.hint_key: str | None = None
        self.local_shard: int | None = None  # SET LOCAL: until the transaction ends
        self.local_key: str | None = None
        self._buf = b""
        self._turn = itertools.count()
        self.plain: ServerConnection | None = None  # the server of a Query on the plain path
        self.plain_scan = ServerScan()
        self._trackers: dict[int, Tracker] = {}  # per shard, for executions on the plain path
        self._parses: dict[bytes, tuple[str, tuple[int, ...]] | None] = {}  # see _parsed
        self.unique_ids = UniqueIdRewriter()  # pgdog.unique_id() -> a fresh id
        # Literals can be taken out of texts only as standard strings read them.
        self.standard_strings = session.settings.wanted.get(
            "standard_conforming_strings", "on") == "on"
        config = session.app.config
        user = config.find_user(session.user, session.database)
        # cross_shard_disabled: every statement must run on one shard.
        self.one_shard_only = user is not None and user.effective_cross_shard_disabled(
            config.general)

    # --- the loop -------------------------------------------------------------------------

    async def serve(self) -> None:
        """Units until the client leaves; every server connection goes back at the end."""
        try:
            while True:
                unit = await self._next_unit()
                if unit is None:
                    return
                try:
                    if type(unit) is bytes:  # one Query message
                        await self._one_query(unit)
                    elif type(unit) is tuple:  # one execution, read in C
                        await self._one_execution(*unit)
                    else:
                        await self._unit(unit)
                except ShardLost as lost:
                    await self._shard_lost(lost)
                if self.links and self.status == b"I" and self.session.transaction_mode:
                    await self._release_all()
        finally:
            await self._release_all(leaving=True)

    async def _next_unit(self) -> list[Message] | bytes | tuple[OneExecution, bytes] | None:
        """The client's next complete unit; None when it leaves (Terminate or EOF). The
        common cases come without the general split: one Query message as its bytes, one
        execution ([Parse] Bind [Describe] Execute Sync) as (its fields, its bytes)."""
        session, client = self.session, self.session.client
        while True:
            buf = self._buf
            if buf:
                unit = self._take_unit(buf)
                if unit is not None:
                    return unit or None  # (an empty unit: the client said Terminate)
            if session.app.shutting_down and self.status == b"I":
                raise shutdown_error()
            session._idle_on = client.sock if self.status == b"I" else None
            try:
                data = await client.recv()
            except trio.ClosedResourceError:
                raise shutdown_error() from None
            except ConnectionClosed:
                return None
            finally:
                session._idle_on = None
            self._buf += data

    def _take_unit(self, buf: bytes) -> list[Message] | bytes | tuple[OneExecution, bytes] | None:
        """The first whole unit of `buf` (taken out of it), [] for a Terminate, None if the
        unit is not all there yet."""
        if _one_query(buf):
            self._buf = b""
            return buf
        if buf[:1] in b"PB":
            execution = one_execution(buf)
            if execution is not None:
                self._buf = b""
                return execution, buf
        messages, cut = split_units(buf)
        if messages:
            end = _unit_end(messages)
            unit, rest = messages[: end + 1], messages[end + 1 :]
            self._buf = b"".join(raw for _k, _b, raw in rest) + buf[cut:]
            return [] if any(kind == TERMINATE for kind, _b, _r in unit) else unit
        return [] if buf[:1] == b"X" else None

    async def _unit(self, unit: list[Message]) -> None:
        kind = unit[-1][0]
        if kind in _COPY_KINDS and len(unit) == 1:
            return  # COPY data outside a COPY: PostgreSQL ignores it too
        try:
            unit = self.unique_ids.rewrite(unit, self.session.app.node_id)
        except ProxyError as exc:
            await self._refuse(exc, extended=kind != QUERY, syncs=_syncs(unit))
            return
        if kind == QUERY and len(unit) == 1:
            await self._query(unit[0])
            return
        await self._extended(unit)

    # --- simple protocol ------------------------------------------------------------------

    def _parsed(self, sql: str, rest: bytes) -> tuple[str, tuple[int, ...]] | None:
        """(SQL, parameter types) of a Parse body after its name, None if it calls
        pgdog.unique_id(). The last few are kept: drivers send the same unnamed Parses again
        and again."""
        parsed = self._parses
        if rest in parsed:
            return parsed[rest]
        known = None if mentions(rest) else (sql, r.parse_parameter_types(rest))
        if len(rest) <= _KEPT_PARSE_SIZE:
            if len(parsed) >= _KEPT_PARSES:
                parsed.clear()
            parsed[rest] = known
        return known

    def _at_rest(self) -> bool:
        """Between transactions, holding no server, no shard chosen by hand, no hook routing:
        a plain statement may take shard_plain.py's way."""
        session = self.session
        return (self.status == b"I" and not self.links and session.transaction_mode
                and not session.hooks.pre_query and self.hint_shard is None
                and self.hint_key is None)

    def _plain_tracker(self, shard: int) -> Tracker:
        tracker = self._trackers.get(shard)
        if tracker is None:
            tracker = self._trackers[shard] = self.shard_tracker()
        return tracker

    def forget_plain_tracker(self, shard: int) -> None:
        self._trackers.pop(shard, None)

    async def _one_query(self, raw: bytes) -> None:
        """One Query: a keyed SELECT, UPDATE or DELETE of a client at rest goes straight to
        its shard (shard_plain.py); anything else the general way."""
        if self.standard_strings and self._at_rest():
            found = query_shape(raw)
            if found is not None:
                facts = self.cache.get(found[0])
                if (facts.kind in PLAIN_KINDS and facts.statements == 1 and facts.parse_ok
                        and facts.insert_keys is None and facts.error is None):
                    shard = self._plain_shard(facts, found[1])
                    if shard is not None and await relay_plain(self, shard, raw,
                                                               writes=facts.writes):
                        return
        await self._unit([(QUERY, raw[5:], raw)])

    def _plain_shard(self, facts: ShardingFacts, values: tuple[bytes, ...]) -> int | None:
        """The one shard a statement's literal values route it to, or None."""
        schema = self.schema
        shard = bigint_key_shard(facts, schema, values)  # WHERE key = 42
        if shard is not None and shard >= 0:
            return shard
        try:
            found = shards_for(facts, schema, values, (), any_shard=self._any_shard())
        except ShardingError:
            return None  # the general path says why
        return next(iter(found)) if found is not None and len(found) == 1 else None

    async def _query(self, message: Message) -> None:
        sql = message[1].rstrip(b"\x00").decode("utf-8", "replace")
        if (b"pgdog" in message[2] or b"PGDOG" in message[2]) and \
                await self.session._role_override(message[2], self.status):
            return  # SET pgdog.role: answered by the session
        facts, values = self._facts(sql)
        if facts.setting is not None and facts.statements == 1:
            try:
                notice = self._apply_setting(facts)
            except ProxyError as exc:
                await self._refuse(exc)
                return
            await self._answer(notice, b"SET", extended=False)
            return
        if facts.kind == "transaction" and facts.statements == 1:
            await self._transaction(sql, message[2])
            return
        if self.status == b"E":
            await self._send(m.error_response(*_IN_FAILED) + m.ready_for_query(b"E"))
            return
        try:
            cursor = cursor_statement(sql)
            if cursor is not None:
                shards = self._cursor_shards(cursor)
            else:
                shards = self._route(sql, facts, values, (), (), extended=False)
        except ProxyError as exc:
            await self._refuse(exc)
            return
        if facts.kind == "copy":
            await copy_in(self, sql, facts, shards, message[2])
            return
        if len(shards) == 1:
            (shard,) = shards
            if (self.status == b"I" and not self.links and self.session.transaction_mode
                    and facts.kind in PLAIN_KINDS and facts.statements == 1
                    and await relay_plain(self, shard, message[2], writes=facts.writes)):
                return
            await self._single(shard, message[2], writes=facts.writes)
            if facts.kind == "set":
                await self._settings_changed(shard, sql)
            return
        rows, selects = None, None
        if facts.insert_keys is not None:
            rows = insert_rows_by_shard(facts, self.schema)
        if rows is not None and len(rows) > 1:
            pieces = split_insert(sql, facts, rows)
            outgoing = {shard: m.query(piece) for shard, (piece, _indexes) in pieces.items()}
        else:
            try:  # a SELECT whose rows must be merged: what the shards run instead
                query, selects = simple_query(self, sql, facts, message[2])
            except ProxyError as exc:
                await self._refuse(exc)
                return
            outgoing = dict.fromkeys(shards, query)
        await self._fan_out(outgoing, [("Q", b"", None)], writes=facts.writes,
                            same_answer=facts.omnisharded_write,
                            atomic=not _outside_transactions(message[2]), selects=selects)

    def _facts(self, sql: str) -> tuple[ShardingFacts, tuple[bytes, ...]]:
        """The sharding facts of a Query's text, and the values of its literals when the facts
        are those of its shape (router/sharding/template.py): one analysis per shape."""
        found = template(sql) if self.standard_strings else None
        if found is not None:
            shape, values = found
            facts = self.cache.get(shape)
            # An INSERT's rows are split by cutting the text: its literals must be in it.
            if facts.parse_ok and facts.insert_keys is None:
                return facts, values
        return self.cache.get(sql), ()

    async def _transaction(self, sql: str, raw: bytes) -> None:
        """BEGIN, COMMIT, ROLLBACK, SAVEPOINT... sent as a Query."""
        words = leading_keywords(raw[5:], 3)
        first = words[0] if words else ""
        if first in ("BEGIN", "START"):
            await self._send(self._begin(raw, sql) + m.ready_for_query(self.status))
        elif first in ("COMMIT", "END", "ROLLBACK", "ABORT") and "TO" not in words \
                and "PREPARED" not in words:
            answer = await self._finish(raw, first)
            await self._send(answer + m.ready_for_query(self.status))
        elif first in ("SAVEPOINT", "RELEASE", "ROLLBACK"):
            await self._savepoint(raw, words)
        else:  # PREPARE TRANSACTION, COMMIT PREPARED ...: two-phase commit is the proxy's own
            await self._refuse(ProxyError(codes.FEATURE_NOT_SUPPORTED,
                                          f"{sql.strip()[:40]}: two-phase commit statements are "
                                          "not supported on a sharded database"))

    def _begin(self, raw: bytes, sql: str) -> bytes:
        """The client's BEGIN: remembered for the shards the transaction will touch."""
        if self.status != b"I":
            return (m.error_response("25001", "there is already a transaction in progress",
                                     kind=b"N", severity="WARNING") + merge.command_complete(b"BEGIN"))
        self.status = b"T"
        self.begin = raw if raw[:1] == b"Q" else m.query(sql)
        self.joined.clear()
        self.wrote.clear()
        return merge.command_complete(b"BEGIN")

    async def _finish(self, raw: bytes, first: str) -> bytes:
        """COMMIT or ROLLBACK on every shard the transaction touched; the answer for the
        client (its ReadyForQuery is the caller's)."""
        commit = first in ("COMMIT", "END")
        tag = b"COMMIT" if commit and self.status == b"T" else b"ROLLBACK"
        if self.status == b"I":
            self._transaction_over()
            return (m.error_response("25P01", "there is no transaction in progress", kind=b"N",
                                     severity="WARNING") + merge.command_complete(tag))
        if tag == b"COMMIT" and two_phase.needed(self):
            error = await two_phase.commit(self, [self.links[s] for s in sorted(self.joined)])
            self._transaction_over()
            return error or merge.command_complete(tag)
        statement = m.query("COMMIT" if commit and self.status == b"T" else "ROLLBACK")
        outcome = await self._everywhere(sorted(self.joined), statement)
        self._transaction_over()
        failed = [(shard, error) for shard, error in outcome if error is not None]
        if failed:
            shard, error = failed[0]
            return merge.naming_shard(error, shard) if len(outcome) > 1 else error
        return merge.command_complete(tag)

    def _transaction_over(self) -> None:
        self.cursors.clear()  # (a WITH HOLD cursor outlives its transaction, not its connection)
        self.status = b"I"
        self.begin = None
        self.joined.clear()
        self.wrote.clear()
        self.savepoints.clear()
        self.local_shard = self.local_key = None

    async def _savepoint(self, raw: bytes, words: list[str]) -> None:
        """SAVEPOINT, RELEASE, ROLLBACK TO: on every shard the transaction touched, and
        replayed on those it touches later."""
        if self.status == b"I":
            await self._send(m.error_response("25P01", f"{words[0]} can only be used in "
                                              "transaction blocks") + _IDLE_READY)
            return
        if self.status == b"E" and words[0] != "ROLLBACK":
            await self._send(m.error_response(*_IN_FAILED) + m.ready_for_query(b"E"))
            return
        outcome = await self._everywhere(sorted(self.joined), raw)
        failed = [(shard, error) for shard, error in outcome if error is not None]
        if failed:
            self.status = b"E"
            await self._send(merge.naming_shard(*failed[0][::-1]) + m.ready_for_query(b"E"))
            return
        name = _savepoint_name(raw)
        names = [_savepoint_name(saved) for saved in self.savepoints]
        if words[0] == "SAVEPOINT":
            self.savepoints.append(raw)
        elif name in names:  # RELEASE drops it and those after; ROLLBACK TO keeps it
            keep = len(names) - names[::-1].index(name) - (words[0] == "RELEASE")
            self.savepoints = self.savepoints[:keep]
        if words[0] == "ROLLBACK":  # ROLLBACK TO: the transaction is usable again
            self.status = b"T"
        tag = {"SAVEPOINT": b"SAVEPOINT", "RELEASE": b"RELEASE"}.get(words[0], b"ROLLBACK")
        await self._send(merge.command_complete(tag) + m.ready_for_query(self.status))

    async def _everywhere(self, shards: list[int], statement: bytes
                          ) -> list[tuple[int, bytes | None]]:
        """Run one simple Query on each of `shards`: (shard, its ErrorResponse or None)."""
        results: list[tuple[int, bytes | None]] = []
        for shard in shards:
            link = self.links[shard]
            await link.send(link.outgoing(statement))
        for shard in shards:
            results.append((shard, await self.links[shard].error_until_ready()))
        return results

    # --- extended protocol ----------------------------------------------------------------

    async def _one_execution(self, execution: OneExecution, raw: bytes) -> None:
        """One execution for one shard, outside a failed transaction, a plain statement: to
        its shard without splitting the unit into messages (at rest, with a bigint key: the
        cheapest way, shard_plain.py). Anything else: the general way."""
        parse_name, sql, parse_rest, portal, name, bind_rest = execution
        if parse_name is not None:
            known = self._parsed(sql, parse_rest)
            if known is None:  # pgdog.unique_id(): its rewriter's way
                await self._unit(split_units(raw)[0])
                return
            self.statements[parse_name] = known
        if not (self.status == b"E" or self.merged_portals or self.session.hooks.pre_query
                or self.unique_ids.busy):
            known = self.statements.get(name)
            if known is not None:
                facts = self.cache.get(known[0])
                if facts.kind in PLAIN_KINDS:
                    try:
                        params, formats = r.bind_parameters(bind_rest)
                        if self._at_rest():
                            shard = bigint_key_shard(facts, self.schema, params, formats, known[1])
                            if shard is not None and shard >= 0:
                                self.portals[portal] = self.schema.single[shard]
                                if await relay_plain(self, shard, raw, writes=facts.writes,
                                                     tracker=self._plain_tracker(shard)):
                                    return
                        shards = self._route(known[0], facts, params, formats, known[1],
                                             extended=True)
                    except ProxyError as exc:
                        await self._refuse(exc, extended=True)
                        return
                    if len(shards) == 1:
                        self.portals[portal] = shards
                        (shard,) = shards
                        await self._single(shard, raw, writes=facts.writes)
                        return
        await self._unit(split_units(raw)[0])

    async def _extended(self, unit: list[Message]) -> None:
        try:
            executions = self._executions(unit)
            check_portals(self, unit, executions)
        except ProxyError as exc:
            await self._refuse(exc, extended=True, syncs=_syncs(unit))
            return
        control = [e for e in executions if e.facts.kind == "transaction" or e.facts.setting]
        if control:
            await self._extended_control(unit, executions, control)
            return
        if self.status == b"E":
            await self._send(m.error_response(*_IN_FAILED)
                             + m.ready_for_query(b"E") * _syncs(unit))
            return
        where: set[int] = set()
        for execution in executions:
            where |= execution.shards
        if not executions:  # Parse, Describe, Close only: one shard answers for all
            where = {self._any_shard()}
        if len(where) == 1:
            await self._single(next(iter(where)), b"".join(raw for _k, _b, raw in unit),
                               writes=any(e.facts.writes for e in executions))
        else:
            await self._extended_fan_out(unit, executions)

    def _executions(self, unit: list[Message]) -> list[Execution]:
        """Each statement the unit runs and its shards; statements it prepares are noted."""
        found: list[Execution] = []
        current: Execution | None = None
        for i, (kind, body, _raw) in enumerate(unit):
            if kind == PARSE:
                name, rest = ext.parse_name(body)
                self.statements[name] = (ext.parse_query_text(rest), r.parse_parameter_types(rest))
            elif kind == BIND:
                portal, name, rest = ext.bind_statement(body)
                known = self.statements.get(name)
                if known is None:
                    current = None  # PostgreSQL reports the unknown statement
                    continue
                sql, types = known
                facts = self.cache.get(sql)
                params, formats = r.bind_parameters(rest)
                shards = self._route(sql, facts, params, formats, types, extended=True)
                current = Execution(sql, facts, shards, i, i)
                self.portals[portal] = shards
                found.append(current)
            elif kind in (DESCRIBE, EXECUTE) and current is not None:
                current.last = i
            elif kind == QUERY:
                raise ProxyError(codes.FEATURE_NOT_SUPPORTED,
                                 "a Query inside an extended-protocol batch is not supported on "
                                 "a sharded database: send a Sync first")
        return found

    async def _extended_control(self, unit: list[Message], executions: list[Execution],
                                control: list[Execution]) -> None:
        """A batch that begins or ends a transaction or sets a hint: answered here, as
        PostgreSQL would answer it, when that is all it does."""
        if len(executions) != 1:
            await self._refuse(ProxyError(
                codes.FEATURE_NOT_SUPPORTED,
                "on a sharded database, BEGIN, COMMIT, ROLLBACK and SET pgdog.* must be sent in "
                "an extended-protocol batch of their own"), extended=True, syncs=_syncs(unit))
            return
        execution = control[0]
        facts = execution.facts
        out: list[bytes] = []
        for kind, body, _raw in unit:
            if kind == PARSE:
                out.append(r.PARSE_COMPLETE)
            elif kind == BIND:
                out.append(r.BIND_COMPLETE)
            elif kind == DESCRIBE:
                out.append((r.parameter_description([]) if body[:1] == b"S" else b"") + r.NO_DATA)
            elif kind == EXECUTE:
                out.append(await self._control_answer(execution.sql, facts))
            elif kind == CLOSE:
                out.append(r.CLOSE_COMPLETE)
            elif kind == SYNC:
                out.append(m.ready_for_query(self.status))
        await self._send(b"".join(out))

    async def _control_answer(self, sql: str, facts: ShardingFacts) -> bytes:
        if facts.setting is not None:
            try:
                return self._apply_setting(facts) or merge.command_complete(b"SET")
            except ProxyError as exc:
                return m.error_response(exc.sqlstate, exc.message)
        words = leading_keywords(sql.encode(), 3)
        first = words[0] if words else ""
        if first in ("BEGIN", "START"):
            return self._begin(m.query(sql), sql)
        if first in ("COMMIT", "END", "ROLLBACK", "ABORT") and "TO" not in words:
            return await self._finish(m.query(sql), first)
        return m.error_response(codes.FEATURE_NOT_SUPPORTED,
                                f"{first}: savepoints and two-phase commit statements must be sent "
                                "as simple queries on a sharded database")

    # --- routing --------------------------------------------------------------------------

    def _route(self, sql: str, facts: ShardingFacts, params: tuple, formats: tuple,
               types: tuple[int, ...], *, extended: bool) -> frozenset[int]:
        """The shards one statement runs on (every shard for None): the hooks' answer, else
        the hints', else the keys'."""
        hooks = self.session.hooks
        count = self.schema.shards
        if hooks.pre_query:
            shard = self._hook_shard(sql, params, formats, extended)
            if shard is not None:
                return frozenset(range(count)) if shard == ALL_SHARDS else frozenset((shard,))
        shard = self.local_shard if self.local_shard is not None else self.hint_shard
        key = self.local_key if self.local_key is not None else self.hint_key
        try:
            found = shards_for(facts, self.schema, params, formats, param_types=types,
                               shard=shard, sharding_key=key, any_shard=self._any_shard())
        except ShardingError as exc:
            raise ProxyError(exc.sqlstate, exc.message) from None
        if self.one_shard_only and (found is None or len(found) > 1):
            raise ProxyError(codes.FEATURE_NOT_SUPPORTED,
                             "this statement would run on several shards, and cross_shard_disabled "
                             "is on: give it a sharding key or a shard hint")
        return frozenset(range(count)) if found is None else found

    def _cursor_shards(self, cursor: CursorStatement) -> frozenset[int]:
        """Where a cursor statement runs: DECLARE where its query does, the others where the
        cursor was declared; a FETCH or MOVE over several shards is refused."""
        if cursor.kind == "declare":
            facts = self.cache.get(cursor.query)
            shards = self._route(cursor.query, facts, (), (), (), extended=False)
            self.cursors[cursor.name or ""] = shards
            return shards
        if cursor.name is None:  # CLOSE ALL
            self.cursors.clear()
            return frozenset(self.joined or {self._any_shard()})
        shards = self.cursors.get(cursor.name)
        if shards is None:
            return frozenset((self._any_shard(),))  # PostgreSQL says it does not exist
        if cursor.kind == "close":
            del self.cursors[cursor.name]
        elif len(shards) > 1:
            raise ProxyError(codes.FEATURE_NOT_SUPPORTED,
                             f'cursor "{cursor.name}" is open on {len(shards)} shards: a '
                             f"{cursor.kind.upper()} from it cannot return the rows one database "
                             "would (declare it with a sharding key or a shard hint)")
        return shards

    def _hook_shard(self, sql: str, params: tuple, formats: tuple, extended: bool) -> int | None:
        session = self.session
        found = session.hooks.decide(QueryInfo(
            sql=sql, lookup=session.app.parse_cache.get, database=session.database,
            user=session.user, client_addr=session.addr, parameters=params,
            parameter_formats=formats, extended=extended, in_transaction=self.status != b"I",
            shards=self.schema.shards, has_primary=True, has_replicas=False))
        if found is None:
            return None
        decision, label = found
        if decision.action == Action.BLOCK:
            raise ProxyError(decision.sqlstate or codes.INSUFFICIENT_PRIVILEGE,
                             decision.message or f"statement blocked by {label}")
        if decision.action != Action.ROUTE:
            raise ProxyError(codes.FEATURE_NOT_SUPPORTED,
                             f"hook {label} answered {decision.action.name.lower()}, which a "
                             "sharded database does not support (only route and block)")
        shard = decision.shard
        if shard is not None and shard != ALL_SHARDS and not 0 <= shard < self.schema.shards:
            raise ProxyError("58000", f"hook {label} routed to shard {shard}, but the database "
                             f"has {self.schema.shards} shards")
        return shard

    def _any_shard(self) -> int:
        """A shard for a statement any shard can answer: one the client already holds,
        else the next in turn."""
        if self.joined:
            return min(self.joined)
        if self.links:
            return min(self.links)
        return next(self._turn) % self.schema.shards

    def _apply_setting(self, facts: ShardingFacts) -> bytes:
        """SET [LOCAL] pgdog.shard / pgdog.sharding_key, RESET: the session's hints."""
        setting = facts.setting
        assert setting is not None
        value = setting.value
        if setting.name == "shard" and value is not None:
            shard = int(value)
            if not 0 <= shard < self.schema.shards:
                raise ProxyError(codes.INVALID_PARAMETER_VALUE,
                                 f"pgdog.shard must be a shard from 0 to {self.schema.shards - 1}, "
                                 f"got {shard}")
        if setting.name == "all":
            self.hint_shard = self.hint_key = self.local_shard = self.local_key = None
        elif setting.local:
            if self.status == b"I":
                return (m.error_response("25P01", "SET LOCAL can only be used in transaction "
                                         "blocks", kind=b"N", severity="WARNING")
                        + merge.command_complete(b"SET"))
            if setting.name == "shard":
                self.local_shard = None if value is None else int(value)
            else:
                self.local_key = None if value is None else str(value)
        elif setting.name == "shard":
            self.hint_shard = None if value is None else int(value)
        else:
            self.hint_key = None if value is None else str(value)
        return b""

    # --- one shard -------------------------------------------------------------------------

    async def _single(self, shard: int, data: bytes, *, writes: bool) -> None:
        """Everything to one shard's server and its answers back as they come, until the
        server owes nothing more for it."""
        link = await self._link(shard, writes)
        session = self.session
        await link.send(link.outgoing(data))
        while True:
            answers = link.take()
            if answers:
                await self._send(answers)
            if link.params:
                session.settings.reported(link.params, link.server)
                link.params = []
            if not link.owes:
                break
            await link.fill()
        if session.departure is not None:
            raise ClientGone  # answered nobody: its connections are not reused (_release_all)
        if link.server.status != b"I" or self.begin is not None:
            self.status = link.server.status
            self.joined.add(shard)
        else:
            self.status = b"I"

    async def _settings_changed(self, shard: int, sql: str) -> None:
        """A SET or RESET ran on one shard: the session's settings follow the client to the
        other shards' connections as they do across connections (session/params.py)."""
        session = self.session
        session._note_sets([sql.encode()])
        link = self.links.get(shard)
        if link is not None and self.status == b"I" and session.recheck != frozenset():
            await session._refresh_settings(link.server)

    def own_statement(self, name: bytes, sql: str, types: Sequence[int]) -> bytes:
        """Register a statement of the proxy's own under client-side `name` (a merged
        SELECT's rewrite, an INSERT's rows for one shard): each shard's Tracker prepares it
        where it is missing when a Bind names it. Returns `name`."""
        rest = sql.encode() + b"\x00" + struct.pack(f"!H{len(types)}I", len(types), *types)
        known = self.prepared.get(name)
        if known is None or known[1] != rest:
            self.prepared[name] = (self.session.app.statements.name_for(rest), rest)
        return name

    def busy_servers(self) -> list[ServerConnection]:
        """The shard connections still owing answers (the departure watch cancels them)."""
        departed = self.session.departure is not None
        busy = [link.server for link in self.links.values() if departed or link.owes]
        if self.plain is not None:
            busy.append(self.plain)
        return busy

    # --- several shards --------------------------------------------------------------------

    async def _fan_out(self, outgoing: dict[int, bytes], answers: list[Answer], *,
                       writes: bool, same_answer: bool = False, atomic: bool = True,
                       selects: list[SelectRun] | None = None) -> None:
        """The same statement (or each shard's own) on several shards, one merged answer.
        `answers`: what each client message earns and from which shards (None: all).
        Writes outside a transaction run inside one on every shard, committed only if
        every shard succeeded."""
        ends = answers[-1][0] in ("Q", "S")
        wrapped = writes and atomic and self.status == b"I" and ends
        links = [await self._link(shard, writes) for shard in sorted(outgoing)]
        if wrapped:
            await self._run_each(links, b"BEGIN")
        if writes and len(links) > 1:
            links = await self._one_after_another(links, outgoing)
        else:
            for link in links:
                await link.send(link.outgoing(outgoing[link.shard]))
        merger = _Merger(self, links, same_answer, several=len(outgoing) > 1)
        merger.selects = selects or []
        async with trio.open_nursery() as nursery:  # each shard read as its answers come
            for link in links:
                link.prefetching()
                nursery.start_soon(link.prefetch, merger.early_error)
            for kind, body, where in answers:
                await merger.answer(kind, body, where)
            nursery.cancel_scope.cancel()
        await merger.cancelled()
        if wrapped:
            failed = await two_phase.end_wrapped(self, links, merger.error is not None)
            if failed is not None:  # the commit failed: the client hears only that
                merger.out, merger.error = [x for x in merger.out if x[:1] == b"N"], failed
            merger.statuses = dict.fromkeys(merger.statuses, b"I")
        if ends:
            statuses = list(merger.statuses.values())
            self.status = merge.combined_status(statuses, merger.error is not None) \
                if statuses else self.status
            if self.status != b"I":
                self.joined.update(link.shard for link in links)
        await merger.finish(self.status if ends else None)

    async def _one_after_another(self, links: list[ShardLink], outgoing: dict[int, bytes]
                                 ) -> list[ShardLink]:
        """A write on several shards runs on one shard after the other, in shard order: two
        clients writing the same rows everywhere (an omnisharded table) then lock them on
        every shard in the same order, and cannot deadlock across shards, which no shard
        could see. A shard that fails ends it: the shards after it never run the statement.
        Returns the links that ran it (their answers read and kept for the merger)."""
        ran: list[ShardLink] = []
        for link in links:
            await link.send(link.outgoing(outgoing[link.shard]))
            ran.append(link)
            while link.owes:
                await link.fill()
            if has_error(link._buf, link._pos):
                break
        return ran

    async def _extended_fan_out(self, unit: list[Message], executions: list[Execution]) -> None:
        """An extended-protocol batch whose statements run on several shards: each message
        goes where its statement runs (Parse, Sync and Flush to every shard the batch
        touches), and the answers are merged message by message."""
        touched: set[int] = set()
        for execution in executions:
            touched |= execution.shards
        owners: list[frozenset[int]] = []
        for i, (kind, body, _raw) in enumerate(unit):
            execution = next((e for e in executions if e.first <= i <= e.last), None)
            if execution is not None:
                where = execution.shards
            elif kind == EXECUTE or (kind == DESCRIBE and body[:1] == b"P"):
                where = self.portals.get(_name(body), frozenset(touched))
            elif kind == DESCRIBE:
                where = frozenset((min(touched),))  # a statement's description: any shard
            else:
                where = frozenset(touched)
            if kind == EXECUTE and len(where) > 1 and body[-4:] != b"\x00\x00\x00\x00":
                await self._refuse(ProxyError(
                    codes.FEATURE_NOT_SUPPORTED, "an Execute with a row limit cannot run on "
                    "several shards (a cursor over a sharded table needs a sharding key)"),
                    extended=True, syncs=_syncs(unit))
                return
            owners.append(where)
        try:  # INSERT rows bound for several shards: each shard's Bind has its own rows
            binds = split_binds(self, unit, executions)
            # SELECTs whose rows must be merged: what the shards run instead
            unit, origins, kinds, selects = extended_unit(self, unit, executions)
        except ProxyError as exc:
            await self._refuse(exc, extended=True, syncs=_syncs(unit))
            return
        owners = [owners[i] for i in origins]
        outgoing = {shard: b"".join(binds[origin][shard] if origin in binds and kind == BIND
                                    else raw
                                    for (kind, _b, raw), where, origin
                                    in zip(unit, owners, origins, strict=True) if shard in where)
                    for shard in touched}
        answers: list[Answer] = [(kind, body, None if len(where) == len(touched) else where)
                                 for (_k, body, _raw), where, kind in zip(unit, owners, kinds,
                                                                          strict=True)]
        await self._fan_out(outgoing, answers, writes=any(e.facts.writes for e in executions),
                            selects=selects)

    async def _run_each(self, links: list[ShardLink], sql: bytes) -> None:
        """A statement of the proxy's own on each link (the answers are not the client's)."""
        outcome = await self._everywhere([link.shard for link in links], m.query(sql.decode()))
        for shard, error in outcome:
            if error is not None:
                raise ProxyError(codes.CONNECTION_FAILURE,
                                 f"shard {shard}: {sql.decode()} failed: "
                                 f"{m.parse_error_fields(error[5:]).get('M', '')}")

    # --- server connections ----------------------------------------------------------------

    async def _link(self, shard: int, writes: bool) -> ShardLink:
        """This client's connection to `shard`, taken from its pool when first needed; a
        transaction's BEGIN (and savepoints) go to it first."""
        if writes:
            self.wrote.add(shard)
        link = self.links.get(shard)
        if link is None:
            session = self.session
            group = session._current_group().shards[shard]
            # A session-mode client keeps its connections for writes to come: primaries.
            reads = not writes and self.status == b"I" and session.transaction_mode
            role = session.role_override or (REPLICA if reads else PRIMARY)
            server = await self._checkout(group, role)
            link = self._spare.pop(shard, None)
            if link is None:
                link = ShardLink(shard, server, self.shard_tracker())
            else:
                link.server = server
            self.links[shard] = link
            sync = session.settings.sync_sql(server)
            if sync is not None:
                await self._sync(link, sync)
        if self.begin is not None and shard not in self.joined:
            self.joined.add(shard)
            await self._everywhere_checked([shard], self.begin)
            for savepoint in self.savepoints:
                await self._everywhere_checked([shard], savepoint)
        return link

    def shard_tracker(self) -> Tracker:
        """A Tracker for a shard's connection: the client's statement names are shared by all."""
        tracker = Tracker(self.session.app.statements, rename=True)
        tracker.statements = self.prepared
        return tracker

    async def _everywhere_checked(self, shards: list[int], statement: bytes) -> None:
        for shard, error in await self._everywhere(shards, statement):
            if error is not None:
                raise ProxyError(codes.CONNECTION_FAILURE, f"shard {shard}: "
                                 f"{m.parse_error_fields(error[5:]).get('M', '')}")

    async def _checkout(self, group, role: str) -> ServerConnection:
        pools = group.choose(role)
        server = pools[0].take_idle()
        if server is None:
            started = clock_ns()
            server = await group.checkout(pools)
            server.stats.waited((clock_ns() - started) // 1000)
        return server

    async def _sync(self, link: ShardLink, sync: tuple[str | None, str | None]) -> None:
        """The client's settings on a shard's connection before it is used."""
        settings, server = self.session.settings, link.server
        reported: set[str] = set()
        try:
            with trio.fail_after(CLEANUP_TIMEOUT):
                for sql in sync:
                    if sql is not None:
                        await server.execute(sql)
                        reported |= server.reported
            settings.synced(server, reported)
        except ServerError as exc:
            log.warning("client %s (%s@%s): shard %d refused its settings: %s",
                        self.session.addr, self.session.user, self.session.database,
                        link.shard, exc)
            settings.give_up(server)
        except (ConnectionClosed, ProtocolError, OSError, trio.TooSlowError) as exc:
            raise ShardLost(link.shard, server, str(exc) or "timeout") from None

    async def _release_all(self, leaving: bool = False) -> None:
        """Every server connection back to its pool (the transaction or session is over),
        rolled back or reset as needed, or closed if it is not in a clean state."""
        links, self.links = self.links, {}
        departed = self.session.departure is not None  # a cancel may still be on its way
        for link in links.values():
            server = link.server
            clean = link.tracker.idle and link._pos >= len(link._buf) and not departed
            if not clean or server.pool is None or server.pool.closed:
                give_back(server, reusable=False)
                continue
            if server.status != b"I" or (leaving and not self.session.transaction_mode):
                with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_TIMEOUT):
                    if server.status != b"I":
                        await try_execute(server, "ROLLBACK", CLEANUP_TIMEOUT)
                    if leaving and not self.session.transaction_mode and not server.broken:
                        await try_execute(server, "DISCARD ALL", CLEANUP_TIMEOUT)
            give_back(server)
            if link.reset_for_reuse():
                self._spare[link.shard] = link
        if leaving:
            self._transaction_over()

    async def _shard_lost(self, lost: ShardLost) -> None:
        """A shard's connection failed mid-statement: the client gets 08006 and the
        transaction (on every shard) is over; the other connections are rolled back."""
        log.warning("client %s (%s@%s): %s", self.session.addr, self.session.user,
                    self.session.database, lost.error().message)
        link = self.links.pop(lost.shard, None)
        if link is not None:
            give_back(link.server, reusable=False)
        for other in self.links.values():  # their answers to this unit are not worth reading
            other.server.broken = True
        await self._release_all()
        self._transaction_over()
        exc = lost.error()
        if not self.session.transaction_mode:  # session state lived on that connection
            raise ProxyError(exc.sqlstate, exc.message + "; session state is gone, reconnect",
                             fatal=True)
        await self._send(m.error_response(exc.sqlstate, exc.message, hint=exc.hint)
                         + _IDLE_READY)

    # --- answers of the proxy's own --------------------------------------------------------

    async def _send(self, data: bytes) -> None:
        try:
            await self.session.client.send(data)
        except ConnectionClosed:
            raise ClientGone from None

    async def _answer(self, notice: bytes, tag: bytes, *, extended: bool) -> None:
        await self._send(notice + merge.command_complete(tag) + m.ready_for_query(self.status))

    async def _refuse(self, exc: ProxyError, *, extended: bool = False, syncs: int = 1) -> None:
        """An error for a statement that is not run: the transaction, if any, fails."""
        log.info("client %s (%s@%s): %s: %s", self.session.addr, self.session.user,
                 self.session.database, exc.sqlstate, exc.message)
        if self.status == b"T":
            self.status = b"E"
        await self._send(m.error_response(exc.sqlstate, exc.message, hint=exc.hint)
                         + m.ready_for_query(self.status) * max(syncs, 0 if extended else 1))


class _Merger:
    """Reads each shard's answers to a unit, one client message at a time, and writes the
    client one answer (session/merge.py). A shard that failed skips to the Sync, as
    PostgreSQL does; after the first error only ReadyForQuery statuses are read."""

    def __init__(self, relay: ShardedRelay, links: list[ShardLink], same_answer: bool, *,
                 several: bool = True):
        self.relay = relay
        self.links = links
        self.several = several  # the statement was for several shards: errors name theirs
        self.same_answer = same_answer  # every shard answers alike (omnisharded writes)
        self.out: list[bytes] = []
        self.size = 0
        self.error: bytes | None = None  # the first error, naming its shard
        self.failed: set[int] = set()    # shards skipping to their Sync
        self.statuses: dict[int, bytes] = {}
        self._cancels: list[trio.Event] = []  # CancelRequests sent after the first error
        self._notices: set[bytes] = set()  # each shard's same notice is shown once
        self._our_cancel: bytes | None = None  # a shard's 57014 from a cancel the proxy sent
        self.selects: list[SelectRun] = []  # merged SELECTs, in the order they run

    async def answer(self, kind: str, body: bytes, where: frozenset[int] | None) -> None:
        links = [link for link in self.links if where is None or link.shard in where]
        if kind == "S":
            await self._ready(links)
            return
        if kind == "Q":
            await (self.selects[0].query(self, links) if self.selects else self._query(links))
            return
        links = [link for link in links if link.shard not in self.failed]
        if kind in ("T", "t"):  # a merged SELECT's description, asked or needed
            await self.selects[0].describe(self, links, emit=kind == "T")
        elif kind == "R":  # its rows
            await self.selects.pop(0).rows(self, links)
        elif kind in "PBC":
            await self._one_each(links)
        elif kind == "D":
            await self._describe(links, body[:1] == b"S")
        elif kind == "E":
            await self._rows(links)

    async def _one_each(self, links: list[ShardLink]) -> None:
        """ParseComplete, BindComplete, CloseComplete: one for all."""
        first = None
        for link in links:
            message = await self._next(link)
            if message[:1] == b"E":
                self._failed(link, message)
            elif first is None:
                first = message
        if first is not None:
            self._emit(first)

    async def _describe(self, links: list[ShardLink], statement: bool) -> None:
        """A description: the shards' must agree."""
        first: list[bytes] | None = None
        for link in links:
            got = [await self._next(link)]
            if statement and got[0][:1] == b"t":
                got.append(await self._next(link))
            if got[-1][:1] == b"E" or got[0][:1] == b"E":
                self._failed(link, got[-1] if got[-1][:1] == b"E" else got[0])
            elif first is None:
                first = got
            elif not merge.same_columns(first[-1], got[-1]) and self.error is None:
                self.error = merge.disagreement(link.shard, "other columns")
        for message in first or ():
            self._emit(message)

    async def _rows(self, links: list[ShardLink]) -> None:
        """An Execute's rows from every shard, then one CommandComplete."""
        tags: list[bytes] = []
        for link in links:
            while True:
                message = await self._next(link)
                kind = message[:1]
                if kind == b"D":
                    if not self.same_answer or link is links[0]:
                        self._emit(message)
                        await self._flush_some()
                elif kind in (b"C", b"I", b"s"):
                    tags.append(message)
                    break
                elif kind == b"E":
                    self._failed(link, message)
                    break
        self._complete(tags)

    async def _query(self, links: list[ShardLink]) -> None:
        """A Query's results from every shard, statement by statement, up to each shard's
        ReadyForQuery (the statuses are kept; the caller sends one ReadyForQuery)."""
        done: set[int] = set()
        while len(done) < len(links):
            description: bytes | None = None
            tags: list[bytes] = []
            copy_out = False
            for link in links:
                if link.shard in done:
                    continue
                while True:
                    message = await self._next(link)
                    kind = message[:1]
                    if kind == b"T":
                        if description is None:
                            description = message
                            self._emit(message)
                        elif not merge.same_columns(description, message) and \
                                self.error is None:
                            self.error = merge.disagreement(link.shard, "other columns")
                    elif kind in (b"D", b"d"):
                        if not self.same_answer or link is links[0]:
                            self._emit(message)
                            await self._flush_some()
                    elif kind == b"H":  # COPY TO STDOUT: one CopyOutResponse for all
                        if not copy_out:
                            self._emit(message)
                        copy_out = True
                    elif kind in (b"C", b"I"):
                        tags.append(message)
                        break
                    elif kind == b"E":
                        self._failed(link, message)
                    elif kind == b"Z":
                        self.statuses[link.shard] = message[5:6]
                        done.add(link.shard)
                        break
            if copy_out:
                self._emit(m.message(b"c"))
            self._complete(tags)

    async def _ready(self, links: list[ShardLink]) -> None:
        """Each shard's ReadyForQuery for the Sync (its status kept, none sent yet)."""
        for link in links:
            await self.ready(link)
        self.failed.clear()

    async def ready(self, link: ShardLink) -> None:
        """Read one shard's answers up to its ReadyForQuery (its status kept; an error
        noted as the shard's)."""
        while True:
            message = await self._next(link)
            if message[:1] == b"Z":
                self.statuses[link.shard] = message[5:6]
                return
            if message[:1] == b"E":
                self._failed(link, message)

    async def _next(self, link: ShardLink) -> bytes:
        """The shard's next answer; notices go to the client on the way, ParameterStatus to
        the session's settings, CopyDone and a notification are dropped."""
        while True:
            message = await link.message()
            kind = message[:1]
            if kind == b"N":
                if message not in self._notices:
                    self._notices.add(message)
                    self._emit(message)
            elif kind == b"S":
                self.relay.session.settings.reported([message[5:]], link.server)
            elif kind not in (b"c", b"A"):
                return message

    def _complete(self, tags: list[bytes]) -> None:
        if not tags:
            return
        if tags[0][:1] != b"C" or self.same_answer:
            self._emit(tags[0])
            return
        self._emit(merge.command_complete(merge.total_tag([merge.command_tag(t) for t in tags])))

    def _failed(self, link: ShardLink, message: bytes) -> None:
        self.failed.add(link.shard)
        if self.error is None:
            named = merge.naming_shard(message, link.shard) if self.several else message
            if self._cancels and m.parse_error_fields(message[5:]).get("C") == \
                    codes.QUERY_CANCELED:
                # The proxy cancelled it because another shard failed: that shard's error,
                # read later, is the client's (this one only if it never comes).
                self._our_cancel = self._our_cancel or named
                return
            self.error = named
            self.early_error(link)

    def early_error(self, failed: ShardLink | None) -> None:
        """A shard answered with an error (seen as it arrived, before the merger got there;
        None: the merge failed): the others' work is for nothing, cancel it (once)."""
        if self._cancels or len(self.links) < 2:
            return
        session = self.relay.session
        timeout = session.app.config.general.connect_timeout / 1000
        others = [link for link in self.links if link is not failed and link.owes]
        if others:
            log.info("client %s (%s@%s): %s failed: cancelling the statement on shard %s",
                     session.addr, session.user, session.database,
                     "the merge" if failed is None else f"shard {failed.shard}",
                     ", ".join(str(link.shard) for link in others))
        for link in others:
            done = trio.Event()
            self._cancels.append(done)
            session.app.spawn(_cancel, link.server, timeout, done)

    async def cancelled(self) -> None:
        """Every CancelRequest sent has reached PostgreSQL: a late one must not hit what the
        connection runs next."""
        with trio.move_on_after(CLEANUP_TIMEOUT):
            for done in self._cancels:
                await done.wait()
        if self.error is None:
            self.error = self._our_cancel

    def _emit(self, message: bytes) -> None:
        if self.error is None or message[:1] == b"N":
            self.out.append(message)
            self.size += len(message)

    async def _flush_some(self) -> None:
        if self.size > 65536:  # rows stream to the client; memory stays bounded
            data = b"".join(self.out)
            self.out, self.size = [], 0
            await self.relay._send(data)

    async def finish(self, status: bytes | None) -> None:
        """The error, if any, and the ReadyForQuery (`status`; None: the unit ended with a
        Flush and earns none)."""
        if self.error is not None:
            self.out.append(self.error)
        if status is not None:
            self.out.append(m.ready_for_query(status))
        if self.out:
            await self.relay._send(b"".join(self.out))


async def _cancel(server: ServerConnection, timeout: float, done: trio.Event) -> None:
    try:
        await send_cancel(server, timeout)
    finally:
        done.set()


def _one_query(buf: bytes) -> bool:
    """Is `buf` exactly one Query message (what most clients send)?"""
    if buf[:1] != b"Q" or len(buf) < 6:
        return False
    length = _LEN(buf, 1)[0]
    return length + 1 == len(buf) and length <= m.MAX_MESSAGE_LENGTH


def _unit_end(messages: list[Message]) -> int:
    """Where the first unit of `messages` ends (its last message's index)."""
    for i, (kind, _b, _r) in enumerate(messages):
        if kind in b"QSHFdcfX":
            return i
    return len(messages) - 1


# Statements PostgreSQL refuses inside a transaction block: sent to each shard as they are.
_NO_TRANSACTION = (["VACUUM"], ["CLUSTER"], ["REINDEX"], ["ALTER", "SYSTEM"],
                   ["CREATE", "DATABASE"], ["DROP", "DATABASE"], ["CREATE", "TABLESPACE"],
                   ["DROP", "TABLESPACE"])


def _outside_transactions(query: bytes) -> bool:
    """Must this Query run outside a transaction block (VACUUM, CREATE INDEX CONCURRENTLY...)?"""
    words = leading_keywords(query[5:], 4)
    return words[:1] in _NO_TRANSACTION or words[:2] in _NO_TRANSACTION or "CONCURRENTLY" in words


def _savepoint_name(raw: bytes) -> str:
    """The savepoint a SAVEPOINT, RELEASE [SAVEPOINT] or ROLLBACK [WORK] TO [SAVEPOINT]
    Query names (upper-cased, as unquoted names compare)."""
    words = leading_keywords(raw[5:], 6)
    rest = [w for w in words[1:] if w not in ("SAVEPOINT", "WORK", "TRANSACTION", "TO")]
    return rest[0] if rest else ""


def _syncs(unit: list[Message]) -> int:
    return sum(1 for kind, _b, _r in unit if kind == SYNC)


def _name(body: bytes) -> bytes:
    """The name in a Describe/Execute body (after the type byte for Describe)."""
    start = 1 if body[:1] in (b"S", b"P") else 0
    return body[start : body.index(b"\x00", start)]
