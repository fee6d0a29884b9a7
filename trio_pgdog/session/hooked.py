"""The statement-aware path, taken only when hooks watch statements (pre_query/post_query).

Client messages are held until a unit is complete — up to a Query, Sync or Flush, the points
where PostgreSQL itself answers — so that each statement's fate is known before anything
about it is sent: pre_query hooks run per Query message and per Bind (one execution of a
prepared statement, with its parameters; a statement prepared without a Bind in the same
unit is also shown to them once at its Parse, without parameters). Then:

- allow / route: forwarded as sent (route picks the server of a new transaction);
- rewrite: the new text is prepared (Parse) or sent (Query) instead;
- intercept: answered here — ParseComplete, BindComplete, RowDescription/NoData,
  DataRows, CommandComplete, ReadyForQuery — and never sent to a server;
- block: answered here when no transaction is open; inside one (or after other statements
  of the same batch ran) the server is made to raise the error itself (session/sqltext.py),
  so both sides agree the transaction is aborted.

Like the Tracker, this keeps a queue of the responses the client is owed, one entry per
message that earns one (dropped where PostgreSQL answers nothing: session/owed.py), which
lets the proxy's own answers take their place among the server's, hides the answers to
messages it added, and measures each statement for post_query (duration, rows from
CommandComplete, SQLSTATE from ErrorResponse).
"""

from __future__ import annotations

import struct
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import speedups
from ..hooks.api import Action, Decision, QueryDone, QueryInfo
from ..hooks.native import encode_text
from ..hooks.registry import HookSet, nonsense
from ..hooks.stats import clock_ns
from ..protocol import ProtocolError
from ..protocol import extended as ext
from ..protocol import messages as m
from ..protocol import results as r
from ..router.cache import ParseCache
from .owed import ENDS_READY, CopyInput, Owed, drop_copy_ends, enter_copy, skip_to_sync
from .sqltext import raise_sql

if TYPE_CHECKING:
    from ..pool.server import ServerConnection
from .units import (
    BATCH_STARTS,
    BIND,
    CLOSE,
    DESCRIBE,
    EXECUTE,
    FLUSH,
    FUNCTION_CALL,
    NAMING,
    PARSE,
    QUERY,
    READY_KINDS,
    SYNC,
    SYNC_MESSAGE,
    Message,
    Values,
    bind_values,
    first_bind,
    one_execution,
    query_text,
    split_units,
)

# Set only where the C speedups are built; HookSet.native_lane is None otherwise.
_native_lane = speedups.c.native_lane if speedups.c is not None else None

_ENDS_PARSE, _ENDS_BIND, _ENDS_CLOSE = frozenset(b"1"), frozenset(b"2"), frozenset(b"3")
_ENDS_DESCRIBE, _ENDS_EXECUTE, _ENDS_READY = frozenset(b"Tn"), frozenset(b"CIs"), ENDS_READY
_LEN = struct.Struct("!i").unpack_from
_ROUTING = (Action.ROUTE, Action.REWRITE)  # answers that may also say where the statement goes
_UNDECIDED = object()  # a message the hooks were not asked about
_ASYNC = frozenset(b"NAS")  # notices, notifications, parameter status: never owed, never hidden



class Run:
    """One statement execution, measured for post_query."""

    __slots__ = ("formats", "params", "rows", "sql", "sqlstate", "start")

    def __init__(self, sql: str, params: tuple[bytes | None, ...] = (),
                 formats: tuple[int, ...] = ()):
        self.sql = sql
        self.params = params
        self.formats = formats
        self.rows = 0
        self.sqlstate = ""
        self.start = time.perf_counter_ns()


class Expect(Owed):
    """A response the client is owed, or one the proxy gives itself (`synthetic`)."""

    __slots__ = ("hidden", "ready", "run", "synthetic")

    def __init__(self, ends: frozenset[int], *, sync: bool = False, hidden: bool = False,
                 run: Run | None = None, synthetic: bytes | None = None, ready: bool = False):
        super().__init__(ends, sync=sync)
        self.hidden = hidden        # the proxy added the message: the client sees no answer
        self.run = run              # completes a statement: post_query when it ends
        self.synthetic = synthetic  # the proxy's own answer, sent when its turn comes
        self.ready = ready          # a synthetic ReadyForQuery: its status is known only then


class Statement:
    """A statement the client prepared, and what the server holds under its name."""

    __slots__ = ("local", "rest", "server_sql", "sql")

    def __init__(self, sql: str, rest: bytes, server_sql: str | None = None):
        self.sql = sql
        self.rest = rest                      # the Parse body after the name
        self.local: Decision | None = None    # intercepted: never sent to a server
        self.server_sql = server_sql          # what the server runs under this name

    @property
    def stands_in(self) -> bool:
        """The server does not hold the client's own text under this name."""
        return self.local is not None or self.server_sql != self.sql


class Portal:
    __slots__ = ("decision", "run")

    def __init__(self, run: Run, decision: Decision | None = None):
        self.run = run
        self.decision = decision  # an intercepted execution: the rows to answer with


class Outcome:
    """What one chunk of client bytes turned into."""

    __slots__ = ("role", "starts_batch", "syncs", "to_client", "to_server")

    def __init__(self) -> None:
        self.to_server = b""
        self.to_client = b""   # the proxy's answers, due now
        self.syncs = 0         # Query/Sync messages forwarded: ReadyForQuery the server owes
        self.role: str | None = None  # a hook's route for a new transaction
        self.starts_batch = True


class HookedStream:
    """Per-client state of the statement-aware path (sans-IO)."""

    def __init__(self, hooks: HookSet, cache: ParseCache, *, user: str, database: str,
                 client_addr: str, has_replicas: bool = False,
                 on_error: Callable[[str], None] | None = None):
        self.hooks = hooks
        self.cache = cache
        # The native lane: every pre_query hook is a native plugin the C speedups call.
        self._lane = hooks.native_lane
        self._lane_args = (encode_text(database), encode_text(user), 1 | has_replicas << 1)
        self.user, self.database, self.client_addr = user, database, client_addr
        self.has_replicas = has_replicas
        self.on_error = on_error or (lambda _message: None)
        self.status = b"I"          # the client's transaction status as last reported
        self.server: ServerConnection | None = None  # the one in use, named in post_query
        self.queue: deque[Expect] = deque()
        self.statements: dict[bytes, Statement] = {}
        self.portals: dict[bytes, Portal] = {}
        self.skipping = False       # dropping client messages up to Sync after an error
        self.copy = CopyInput()     # the server reads the client's next messages as copy input
        self.batch_forwarded = False  # some message of the current batch went to the server
        self.batch_executed = False   # ... and an Execute among them
        self._cbuf = b""
        self._sbuf = b""
        self._out: list[bytes] = []
        self._role: str | None = None
        self._syncs = 0
        # Per unit: the Bind a Parse's fate follows, and each Bind's decoded parameters.
        self._first_bind: dict[int, int] = {}
        self._bind_args: dict[int, Values] = {}
        self._parsed: dict[int, tuple[bytes, str, bytes]] = {}  # Parse index -> (name, SQL, rest)
        # ReadyForQuery the server owes for units sent as they were, without queue entries.
        self.lean_ready = 0
        # Set once the proxy answered for a statement or portal, or displaced the client's
        # unnamed statement: from then on each message's names are checked.
        self.stand_ins = False

    def learn(self, prepared: dict[bytes, tuple[bytes, bytes]]) -> None:
        """Statements the client prepared before hooks watched it: name -> (server name,
        Parse body after the name), as the Tracker keeps them."""
        for name, (_shared, rest) in prepared.items():
            sql = ext.parse_query_text(rest)
            self.statements[name] = Statement(sql, rest, sql)

    @property
    def tracking(self) -> bool:
        """Answers are owed that the server's bytes must be matched against."""
        return bool(self.queue or self._sbuf)

    @property
    def idle(self) -> bool:
        return not self.queue and not self._cbuf and not self._sbuf

    @property
    def _settled(self) -> bool:
        """Between batches with nothing held, owed or being skipped: a unit may go as sent."""
        return not (self._cbuf or self.queue or self.skipping or self.batch_forwarded
                    or self.copy.open)

    # --- client to server -----------------------------------------------------------------------

    def from_client(self, data: bytes) -> Outcome:
        self._role = None
        if self._settled:  # the commonest chunks, without the general walk
            if self._lane is not None:
                database, user, flags = self._lane_args
                started = clock_ns()
                answer = _native_lane(self._lane, database, user,
                                      flags | (self.status != b"I") << 2 | self.stand_ins << 3,
                                      data, self.statements, self.portals)
                if answer is None:
                    self._lane_counted(started, len(self.hooks.pre_query))
                    return self._as_sent(data, 1)
                if answer is not False:
                    return self._lane_decided(data, *answer, started)
            if data[:1] == b"Q" and len(data) >= 5 and len(data) == 1 + _LEN(data, 1)[0]:
                return self._one_query(data)
            if data[:1] in BATCH_STARTS and data[-5:] == SYNC_MESSAGE and not self.stand_ins:
                outcome = self._one_batch(data)
                if outcome is not None:
                    return outcome
        starts_batch = not self.batch_forwarded
        buf = self._cbuf + data if self._cbuf else data
        messages, cut = split_units(buf)
        self._cbuf = buf[cut:]
        if not messages:
            return Outcome()
        decisions, lean = self._plan(messages)
        if lean:  # nothing to answer, hide or change: the bytes go as they came
            outcome = self._as_sent(buf if cut == len(buf) else buf[:cut],
                                    self._commit_lean(messages))
        else:
            outcome = self._answered(messages, decisions)
        outcome.starts_batch = starts_batch
        return outcome

    def _as_sent(self, data: bytes, syncs: int, run: Run | None = None) -> Outcome:
        """The outcome of a unit that goes to the server exactly as the client sent it.
        `run`: the one statement of a one-statement unit, timed for post_query up to its
        ReadyForQuery (an error on the way is its SQLSTATE, as for a Query)."""
        outcome = Outcome()
        outcome.to_server, outcome.syncs, outcome.role = data, syncs, self._role
        if run is None:
            self.lean_ready += syncs
        else:
            self.queue.append(Expect(_ENDS_READY, run=run))
        return outcome

    def _answered(self, messages: list[Message], decisions: list[object]) -> Outcome:
        """The outcome of a unit the proxy changes, answers in part, or tracks."""
        self._out, self._syncs = [], 0
        self._unit(messages, decisions)
        outcome = Outcome()
        outcome.to_server = b"".join(self._out)
        outcome.to_client = self._drain() if self.queue else b""
        outcome.syncs, outcome.role = self._syncs, self._role
        return outcome

    def _lane_counted(self, started: int, asked: int, action: int = 0) -> None:
        """Count the native lane's one C call for each of the `asked` first plugins (the last
        answered `action`, the others allowed); the time is a plugin's own only when it
        was asked alone."""
        calls = self.hooks.pre_query
        if asked == 1:
            calls[0][0].stats.called(started, action)
            return
        for entry, _call in calls[: asked - 1]:
            entry.stats.untimed()
        calls[asked - 1][0].stats.untimed(action)

    def _lane_decided(self, data: bytes, index: int, raw: bytes, started: int) -> Outcome:
        """The native lane's chunk when plugin `index` decided (its PgdogOutput in `raw`)."""
        entry, call = self.hooks.pre_query[index]
        try:
            decision = call.__self__.lane_decision(raw)
        except Exception as exc:   # as the registry guards every hook call
            entry.failed("pre_query", exc)
            entry.stats.errors += 1
            decision = None
        self._lane_counted(started, index + 1, decision.action if decision is not None else 0)
        if decision is not None:
            decision = self._accepted(decision, entry.label)
        if data[:1] == b"Q":
            return self._one_query(data, decision)
        outcome = self._one_batch(data, decision)
        # The lane read this chunk as one execution, as _one_batch does.
        assert outcome is not None
        return outcome

    def _one_query(self, data: bytes, decided: object = _UNDECIDED) -> Outcome:
        """A chunk that is one whole Query message, nothing owed before it."""
        sql = query_text(data[5:])
        decision = self._decide(sql, (), (), extended=False) if decided is _UNDECIDED else decided
        if _routes_only(decision):
            return self._as_sent(data, 1, Run(sql) if self.hooks.post_query else None)
        return self._answered([(data[0], data[5:], data)], [decision])

    def _one_batch(self, data: bytes, decided: object = _UNDECIDED) -> Outcome | None:
        """One execution as most drivers send it: [Parse] Bind [Describe] Execute Sync, of one
        statement. None when `data` is anything else (the general walk takes it). `decided`:
        the hooks' decision when the native lane already asked them."""
        execution = one_execution(data)
        if execution is None:
            return None
        parse_name, sql, parse_rest, portal, name, rest = execution
        if parse_name is None:
            statement = self.statements.get(name)
            if statement is None:
                return None
            sql = statement.sql
        elif parse_name != name:
            return None
        args = bind_values(rest)
        decision = self._decide(sql, *args, extended=True) if decided is _UNDECIDED else decided
        if _routes_only(decision):
            if parse_rest is not None:
                self.statements[name] = Statement(sql, parse_rest, sql)
            self.portals.pop(portal, None)
            return self._as_sent(data, 1, Run(sql, *args) if self.hooks.post_query else None)
        # A hook decided: the general path answers, with this decision (asked once).
        messages, _cut = split_units(data)
        index = 0 if parse_name is None else 1   # the Bind's
        decisions: list[object] = [_UNDECIDED] * len(messages)
        decisions[index] = decision
        self._first_bind = {0: index} if index else {}
        self._bind_args = {index: args}
        return self._answered(messages, decisions)

    def _plan(self, messages: list[Message]) -> tuple[list[object], bool]:
        """Ask the hooks about each statement of the unit, in order (not about those an
        earlier refusal makes PostgreSQL skip); and whether the unit may go to the server
        exactly as sent: no hook answer to give, nothing prepared here to stand in for."""
        decisions: list[object] = [_UNDECIDED] * len(messages)
        self._first_bind, self._bind_args, self._parsed = {}, {}, {}
        lean = (not self.hooks.post_query and not self.queue and not self.batch_forwarded
                and not self.skipping and not self.copy.open)
        parsed: dict[bytes, str] = {}   # statements parsed in this unit: name -> SQL
        skipping, open_batch = self.skipping, False
        for i, (kind, body, _raw) in enumerate(messages):
            if skipping:
                skipping = kind != SYNC
                continue
            decision: object = _UNDECIDED
            if kind == SYNC:
                open_batch = False
            elif kind == QUERY:
                decision = self._decide(query_text(body), (), (), extended=False)
            elif kind == PARSE:
                open_batch = True
                name, rest = ext.parse_name(body)  # ProtocolError when malformed
                sql = ext.parse_query_text(rest)
                parsed[name] = sql
                self._parsed[i] = (name, sql, rest)
                bind = first_bind(messages, i, name)
                if bind is None:
                    decision = self._decide(sql, (), (), extended=True)
                else:
                    self._first_bind[i] = bind[0]
                    args = self._bind_args[bind[0]] = bind_values(bind[1])
                    decision = decisions[bind[0]] = self._decide(sql, *args, extended=True)
            elif kind == BIND:
                open_batch = True
                if decisions[i] is not _UNDECIDED:
                    decision = decisions[i]  # asked at its Parse
                else:
                    decision, local = self._plan_bind(body, i, parsed)
                    lean = lean and not local
            elif kind in NAMING:
                open_batch = True
                which, name = _named(kind, body)  # ProtocolError when malformed
                lean = lean and not (self.stand_ins and self._names_local(which, name, parsed))
            elif kind == FLUSH:
                open_batch = True
            if decision is _UNDECIDED:
                continue
            decisions[i] = decision
            if decision is not None:
                action = decision.action  # type: ignore[attr-defined]
                lean = lean and action == Action.ROUTE
                skipping = action == Action.BLOCK and kind != QUERY
        return decisions, lean and not open_batch

    def _plan_bind(self, body: bytes, index: int, parsed: dict[bytes, str]) -> tuple[object, bool]:
        """A Bind that is not its statement's first in the unit: (decision, whether the
        proxy has something other than the client's statement under its name)."""
        _portal, name, rest = ext.bind_statement(body)
        sql, local = parsed.get(name), False
        if sql is None:
            statement = self.statements.get(name)
            if statement is None:
                return _UNDECIDED, False  # unknown here: PostgreSQL reports it
            sql, local = statement.sql, statement.stands_in
        args = self._bind_args[index] = bind_values(rest)
        return self._decide(sql, *args, extended=True), local

    def _names_local(self, which: bytes, name: bytes, parsed: dict[bytes, str]) -> bool:
        """Does this Describe, Close or Execute (of portal or statement `name`) name something
        only the proxy answers for?"""
        if which == b"P":
            portal = self.portals.get(name)
            return portal is not None and portal.decision is not None
        statement = None if name in parsed else self.statements.get(name)
        return statement is not None and statement.stands_in

    def _commit_lean(self, messages: list[Message]) -> int:
        """Remember what a unit sent as it came prepared, bound and closed; the number of
        ReadyForQuery it earns."""
        syncs = 0
        portals = self.portals
        for i, (kind, body, _raw) in enumerate(messages):
            if kind == PARSE and i in self._parsed:
                name, sql, rest = self._parsed[i]
                self.statements[name] = Statement(sql, rest, sql)
            elif kind in READY_KINDS:
                syncs += 1
            elif kind == CLOSE or (kind == BIND and portals):
                if kind == BIND:
                    portals.pop(ext.bind_statement(body)[0], None)
                else:
                    which, name = ext.target(body, b"C")
                    (self.statements if which == b"S" else portals).pop(name, None)
        return syncs

    def server_ready(self, statuses: list[bytes], copy_in: bool = False) -> None:
        """ReadyForQuery statuses of a server chunk that bypassed `from_server` (nothing
        tracked was owed); `copy_in`: the server now reads COPY data."""
        self.copy.open = copy_in
        if statuses:
            self.status = statuses[-1]
            self.lean_ready = max(0, self.lean_ready - len(statuses))

    def _unit(self, messages: list[Message], decisions: list[object]) -> None:
        if self.lean_ready:  # answers to earlier units come first: owe their ReadyForQuery
            self.queue.extend(Expect(_ENDS_READY) for _ in range(self.lean_ready))
            self.lean_ready = 0
        for i, (kind, body, raw) in enumerate(messages):
            if self.copy.open and self.copy.consumes(kind):
                self._out.append(raw)  # copy input: no answer of its own
                continue
            if self.skipping and kind != SYNC:
                continue
            if kind == QUERY:
                self._query(body, raw, decisions[i])
            elif kind == PARSE:
                self._parse(body, raw, decisions[self._first_bind.get(i, i)])
            elif kind == BIND:
                self._bind(body, raw, decisions[i], self._bind_args.get(i))
            elif kind == DESCRIBE:
                self._describe(body, raw)
            elif kind == EXECUTE:
                self._execute(body, raw)
            elif kind == CLOSE:
                self._close(body, raw)
            elif kind == SYNC:
                self._sync(raw)
            elif kind == FLUSH:
                if self.batch_forwarded:
                    self._out.append(raw)
            elif kind == FUNCTION_CALL:
                self._forward(raw, Expect(_ENDS_READY))
                self._syncs += 1
            else:  # COPY data and anything else: PostgreSQL answers (or complains)
                self._out.append(raw)

    def _forward(self, raw: bytes, expect: Expect | None = None, *, extended: bool = False) -> None:
        self._out.append(raw)
        if expect is not None:
            self.queue.append(expect)
        if extended:
            self.batch_forwarded = True

    def _answer(self, message: bytes, run: Run | None = None, *, ready: bool = False,
                sync: bool = False) -> None:
        self.queue.append(Expect(_ENDS_READY, sync=sync, synthetic=message, run=run, ready=ready))

    # simple protocol

    def _query(self, body: bytes, raw: bytes, decided: object) -> None:
        run = Run(query_text(body))
        decision, action = _asked(decided)
        if action == Action.INTERCEPT and self.status != b"E":
            assert decision is not None
            run.rows = len(decision.rows)
            self._answer(r.select_result(decision.columns, decision.rows, describe=True), run)
            self._answer(b"", ready=True)
            return
        if action == Action.BLOCK and self._can_answer_block():
            assert decision is not None
            run.sqlstate = decision.sqlstate
            self._answer(m.error_response(decision.sqlstate, decision.message), run)
            self._answer(b"", ready=True)
            return
        if action == Action.BLOCK:
            assert decision is not None
            raw = m.query(raise_sql(decision.sqlstate, decision.message))
        elif action == Action.REWRITE:
            assert decision is not None
            run.sql = decision.sql
            raw = m.query(decision.sql)
        self._forward(raw, Expect(_ENDS_READY, run=run))
        self._syncs += 1

    # extended protocol

    def _parse(self, body: bytes, raw: bytes, decided: object) -> None:
        name, rest = ext.parse_name(body)
        sql = ext.parse_query_text(rest)
        statement = Statement(sql, rest)
        self.statements[name] = statement
        # The statement's first execution in this unit decided its fate (_plan); one only
        # prepared here was shown to the hooks without parameters.
        decision, action = _asked(decided)
        if action == Action.INTERCEPT and self.status != b"E":
            statement.local = decision
            self.stand_ins = True
            self._answer(r.PARSE_COMPLETE)
        elif action == Action.BLOCK:
            assert decision is not None
            del self.statements[name]  # a failed Parse creates no statement
            self._block_extended(decision, Run(sql))
        elif action == Action.REWRITE:
            assert decision is not None
            statement.server_sql = decision.sql
            self.stand_ins = True
            new_rest = decision.sql.encode() + rest[rest.index(b"\x00"):]
            self._forward(ext.build_parse(name, new_rest), Expect(_ENDS_PARSE), extended=True)
        else:
            statement.server_sql = sql
            self._forward(raw, Expect(_ENDS_PARSE), extended=True)

    def _bind(self, body: bytes, raw: bytes, decided: object, args: Values | None) -> None:
        portal, name, rest = ext.bind_statement(body)
        statement = self.statements.get(name)
        if statement is None:  # never prepared here: PostgreSQL reports it
            self.portals.pop(portal, None)
            self._forward(raw, Expect(_ENDS_BIND), extended=True)
            return
        params, formats = args if args is not None else bind_values(rest)
        run = Run(statement.sql, params, formats)
        if decided is _UNDECIDED:  # not asked in _plan (a statement unknown to the proxy then)
            decided = self._decide(statement.sql, params, formats, extended=True)
        decision, action = _asked(decided)
        if action == Action.INTERCEPT and self.status != b"E":
            self.portals[portal] = Portal(run, decision)
            self.stand_ins = True
            self._answer(r.BIND_COMPLETE)
            return
        self.portals[portal] = Portal(run)
        if action == Action.BLOCK:
            assert decision is not None
            self._block_extended(decision, run)
            return
        want = decision.sql if action == Action.REWRITE and decision is not None else statement.sql
        run.sql = want
        if statement.local is not None or statement.server_sql != want:
            rest_of_parse = statement.rest[statement.rest.index(b"\x00"):]
            if statement.server_sql is None:  # intercepted so far: prepare it now
                self._forward(ext.build_parse(name, want.encode() + rest_of_parse),
                              Expect(_ENDS_PARSE, hidden=True), extended=True)
                statement.local, statement.server_sql = None, want
                self.stand_ins = self.stand_ins or want != statement.sql
            else:  # the server holds other text under this name: run `want` unnamed
                self._forward(ext.build_parse(b"", want.encode() + rest_of_parse),
                              Expect(_ENDS_PARSE, hidden=True), extended=True)
                self._clobber_unnamed(want)
                raw = ext.build_bind(portal, b"", rest)
        self._forward(raw, Expect(_ENDS_BIND), extended=True)

    def _describe(self, body: bytes, raw: bytes) -> None:
        which, name = ext.target(body, b"D")
        local: Decision | None = None
        if which == b"S" and (statement := self.statements.get(name)) is not None:
            local = statement.local
            if local is not None:
                types = r.parse_parameter_types(statement.rest)
                self._answer(r.parameter_description([t or r.TEXT_OID for t in types]))
        elif which == b"P" and (portal := self.portals.get(name)) is not None:
            local = portal.decision
        if local is not None:
            self._answer(r.row_description(local.columns))
        else:
            self._forward(raw, Expect(_ENDS_DESCRIBE), extended=True)

    def _execute(self, body: bytes, raw: bytes) -> None:
        portal = self.portals.get(ext.execute_portal(body))
        if portal is not None and portal.decision is not None:
            decision = portal.decision
            portal.run.rows = len(decision.rows)
            self._answer(r.select_result(decision.columns, decision.rows, describe=False),
                         portal.run)
            return
        self.batch_executed = True
        run = portal.run if portal is not None else Run("")
        self._forward(raw, Expect(_ENDS_EXECUTE, run=run), extended=True)

    def _close(self, body: bytes, raw: bytes) -> None:
        which, name = ext.target(body, b"C")
        local = False
        if which == b"S" and (statement := self.statements.pop(name, None)) is not None:
            local = statement.server_sql is None
        elif which == b"P" and (portal := self.portals.pop(name, None)) is not None:
            local = portal.decision is not None
        if local:
            self._answer(r.CLOSE_COMPLETE)
        else:
            self._forward(raw, Expect(_ENDS_CLOSE), extended=True)

    def _sync(self, raw: bytes) -> None:
        self.skipping = False
        if self.batch_forwarded:
            self._forward(raw, Expect(_ENDS_READY, sync=True))
            self._syncs += 1
        else:
            self._answer(b"", ready=True, sync=True)
        self.batch_forwarded = self.batch_executed = False

    def _block_extended(self, decision: Decision, run: Run) -> None:
        """Refuse a statement in an extended-protocol batch: an error in its place, then
        everything up to Sync is skipped, as PostgreSQL does."""
        self.skipping = True
        if self._can_answer_block():
            run.sqlstate = decision.sqlstate
            self._answer(m.error_response(decision.sqlstate, decision.message), run)
            return
        # The server raises it, so an open transaction (or this batch's implicit one) fails
        # there too. Its ParseComplete and BindComplete are not the client's.
        sql = raise_sql(decision.sqlstate, decision.message)
        self._forward(ext.build_parse(b"", sql.encode() + b"\x00\x00\x00"),
                      Expect(_ENDS_PARSE, hidden=True), extended=True)
        self._forward(ext.build_bind(b"", b"", b"\x00\x00\x00\x00\x00\x00"),
                      Expect(_ENDS_BIND, hidden=True), extended=True)
        self._forward(m.message(b"E", b"\x00\x00\x00\x00\x00"),
                      Expect(_ENDS_EXECUTE, run=run), extended=True)
        self._clobber_unnamed(sql)
        self.batch_executed = True

    def _can_answer_block(self) -> bool:
        """No transaction open or possibly opened: the proxy may answer a block itself."""
        return (self.status == b"I" and not self.batch_executed
                and all(e.synthetic is not None for e in self.queue))

    def _clobber_unnamed(self, sql: str) -> None:
        """The proxy prepared `sql` as the unnamed statement: the client's is displaced."""
        self.stand_ins = True
        unnamed = self.statements.get(b"")
        if unnamed is not None:
            unnamed.server_sql = sql

    # decisions

    def _decide(self, sql: str, params: tuple[bytes | None, ...], formats: tuple[int, ...], *,
                extended: bool) -> Decision | None:
        if not self.hooks.pre_query:
            return None
        info = QueryInfo(sql=sql, lookup=self.cache.get, database=self.database,
                         user=self.user, client_addr=self.client_addr, parameters=params,
                         parameter_formats=formats, extended=extended,
                         in_transaction=self.status != b"I", shards=1,
                         has_primary=True, has_replicas=self.has_replicas)
        found = self.hooks.decide(info)
        return None if found is None else self._accepted(*found)

    def _accepted(self, decision: Decision, label: str) -> Decision:
        """A hook's decision, or the error it becomes if it makes no sense; a route sets the
        role of the transaction it starts."""
        problem = nonsense(decision)
        if problem is not None:
            self.on_error(f"{label} answered {problem}")
            return Decision.block(f"trio_pgdog: hook {label} answered {problem}", "58000")
        if decision.action in _ROUTING and self._role is None:
            self._role = decision.role
        return decision

    # --- server to client -----------------------------------------------------------------------

    def from_server(self, data: bytes) -> bytes:
        """The bytes for the client: hidden answers removed, the proxy's own put in place."""
        buf = self._sbuf + data if self._sbuf else data
        out: list[bytes] = []
        queue = self.queue
        pos = start = 0
        end = len(buf)
        while pos + 5 <= end:
            kind = buf[pos]
            length = _LEN(buf, pos + 1)[0]
            if length < 4:
                raise ProtocolError(f"server sent invalid message length {length}")
            nxt = pos + 1 + length
            if nxt > end:
                break
            head = queue[0] if queue else None
            if kind == 0x44 and (head is None or not head.hidden):  # DataRow: the common case
                pos = nxt
                continue
            if head is not None and head.hidden and kind != 0x45 and kind not in _ASYNC:
                out.append(buf[start:pos])
                start = nxt
            if kind == 0x5A:  # ReadyForQuery
                self.status = buf[pos + 5 : nxt]
                self.copy.open = False
                if head is None and self.lean_ready:
                    self.lean_ready -= 1
                elif head is not None and head.ends is _ENDS_READY:
                    queue.popleft()
                    drop_copy_ends(queue)
                    self._finished(head.run)
            elif kind == 0x45:  # ErrorResponse
                self.copy.open = False
                self._error(buf[pos + 5 : nxt], head)
            elif kind == 0x47:  # CopyInResponse: what was sent behind it is copy input
                self.copy.open = enter_copy(queue)[1]
            elif head is not None:
                if kind == 0x43 and head.run is not None:  # CommandComplete: count its rows
                    head.run.rows += r.result_rows(buf[pos + 5 : nxt])
                if kind in head.ends:
                    queue.popleft()
                    drop_copy_ends(queue)
                    self._finished(head.run)
            pos = nxt
            if queue and queue[0].synthetic is not None:
                out.append(buf[start:pos])
                start = pos
                out.append(self._drain())
        out.append(buf[start:pos])
        self._sbuf = buf[pos:]
        return b"".join(out)

    def _error(self, body: bytes, head: Expect | None) -> None:
        if head is None:
            return
        sqlstate = m.parse_error_fields(body).get("C", "XX000")
        if head.ends is _ENDS_READY:
            if head.run is not None:
                head.run.sqlstate = sqlstate
            return  # a Query's error: its ReadyForQuery still comes
        # An extended-protocol error: PostgreSQL skips to Sync, and so do the answers owed.
        # The statement that failed (at its Parse, Bind or Execute) is the first one owed.
        failed = head.run
        self.queue.popleft()
        for skipped in skip_to_sync(self.queue):
            if failed is None and skipped.synthetic is None:
                failed = skipped.run
        if failed is not None:
            failed.sqlstate = sqlstate
            self._finished(failed)
        if not self.queue:
            self.skipping = True  # the batch's Sync is still to come

    def _drain(self) -> bytes:
        out: list[bytes] = []
        queue = self.queue
        while queue and queue[0].synthetic is not None:
            expect = queue.popleft()
            out.append(m.ready_for_query(self.status) if expect.ready else expect.synthetic)
            self._finished(expect.run, local=True)
        return b"".join(out)

    def _finished(self, run: Run | None, *, local: bool = False) -> None:
        if run is None or not self.hooks.post_query:
            return
        server = None if local else self.server
        self.hooks.done(QueryDone(
            sql=run.sql, database=self.database, user=self.user, client_addr=self.client_addr,
            duration_us=(time.perf_counter_ns() - run.start) // 1000, rows=run.rows,
            sqlstate=run.sqlstate,
            host="trio_pgdog" if server is None else f"{server.host}:{server.port}",
            role="" if server is None or server.pool is None else server.pool.role,
            shard=0, parameters=run.params, parameter_formats=run.formats))

    def abandon(self) -> int:
        """The server side failed (or was never reached): forget what it owed. Returns the
        ReadyForQuery messages the proxy still owed from its own answers."""
        owed = sum(1 for e in self.queue if e.ready)
        self.queue.clear()
        self._sbuf = b""
        self.lean_ready = 0
        self.skipping = self.copy.open = False
        self.batch_forwarded = self.batch_executed = False
        for statement in self.statements.values():
            if statement.local is None:
                statement.server_sql = statement.sql
        return owed


def _named(kind: int, body: bytes) -> tuple[bytes, bytes]:
    """What a Describe, Close or Execute names: (b"S" or b"P", name); ProtocolError when the
    message is malformed."""
    if kind == EXECUTE:
        return b"P", ext.execute_portal(body)
    return ext.target(body, bytes((kind,)))


def _routes_only(decision: Decision | None) -> bool:
    """No decision, or only where to run: the statement goes as the client sent it."""
    return decision is None or decision.action == Action.ROUTE


def _asked(decided: object) -> tuple[Decision | None, Action]:
    """A planned decision and its action (ALLOW when the hooks were not asked or passed)."""
    if decided is _UNDECIDED or decided is None:
        return None, Action.ALLOW
    return decided, decided.action  # type: ignore[return-value, attr-defined]
