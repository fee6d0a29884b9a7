"""A SELECT over several shards, answered as one PostgreSQL holding every row would answer.

The plan (router/sharding/merge_plan.py, once per SQL text) says what the shards run and how
their rows combine; the engine (row_merge.py) does the combining, sans-IO. This module is the
session's side: it rewrites what the shards get (the Query text, or the Bind of a prepared
statement: its statement, LIMIT/OFFSET values and result formats) and, as the shards' answers
stream in (each shard read by its own prefetch task, session/shard_link.py), feeds the engine
and writes the client one answer:

  - sorted rows: a k-way merge through a heap holding one row per shard, each shard's next
    row read only when its last one left the heap, so memory stays flat whatever the count;
  - rows in any order (DISTINCT, LIMIT without ORDER BY): shard after shard;
  - aggregates: every shard's partial groups, then the combined groups.

Once a LIMIT is reached the rest of the shards' rows are read and dropped (the shards were
given LIMIT n+m, so there are few). A merge that cannot be right (MergeError: rows out of
the merge's order, a sum out of range...) becomes the client's ErrorResponse with its
SQLSTATE, and the shards still working are cancelled, as after a shard's own error.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..protocol import ProxyError
from ..protocol import extended as ext
from ..protocol import messages as m
from ..protocol import results as r
from ..router.sharding.merge_plan import (
    MergePlan,
    plan_select,
    shard_parameters,
    shard_result_formats,
)
from ..router.sharding.row_merge import MergeError, RowMerge
from . import merge

if TYPE_CHECKING:
    from ..router.sharding.keys import FactsCache, ShardingFacts
    from .shard_link import ShardLink
    from .sharded import Execution, Message, ShardedRelay, _Merger

log = logging.getLogger(__name__)

# A client's statement as the shards run it for a merge is prepared under this derived name
# (never sent: the Tracker gives it a shared name); the client's own keeps its text, for
# executions that run on one shard.
_DERIVED = b"\x01merged:"
_BIND, _DESCRIBE, _EXECUTE = ord("B"), ord("D"), ord("E")
_ENDS = frozenset(b"CIs")  # what ends an Execute's (or a Query statement's) rows
_logged_byte_order = False


# --- plans, once per text ------------------------------------------------------------------


class PlanCache:
    """A bounded LRU of merge plans keyed by the client's exact SQL text."""

    def __init__(self, max_entries: int = 10_000, max_text_length: int = 65_536) -> None:
        self.max_entries = max_entries
        self.max_text_length = max_text_length
        self._plans: OrderedDict[str, MergePlan] = OrderedDict()

    def get(self, sql: str, facts: ShardingFacts) -> MergePlan:
        plan = self._plans.get(sql)
        if plan is not None:
            self._plans.move_to_end(sql)
            return plan
        plan = plan_select(sql, sharded_tables=facts.sharded_tables)
        if len(sql) <= self.max_text_length:
            self._plans[sql] = plan
            if len(self._plans) > self.max_entries:
                self._plans.popitem(last=False)
        return plan


# One plan cache per sharding schema (its FactsCache): the plans depend on its tables.
_caches: weakref.WeakKeyDictionary[FactsCache, PlanCache] = weakref.WeakKeyDictionary()


def plan_for(cache: FactsCache, sql: str, facts: ShardingFacts, *, select: bool = False
             ) -> MergePlan | None:
    """The merge plan of a statement that runs on several shards, None when the shards' rows
    one after the other are the answer (not a SELECT, or nothing to merge). ProxyError
    (0A000 and the reason) when no merge would be right. `select`: `sql` is known to be a
    query whatever `facts` say."""
    if facts.kind != "select" and facts.statements < 2 and not select:
        return None
    plans = _caches.get(cache)
    if plans is None:
        plans = _caches[cache] = PlanCache()
    plan = plans.get(sql, facts)
    if plan.kind == "refused":
        assert plan.refusal is not None
        raise ProxyError(*plan.refusal)
    return None if plan.kind == "concat" else plan


def check_copy_query(relay: ShardedRelay, sql: str, facts: ShardingFacts) -> None:
    """`COPY (query) TO` over several shards: COPY's rows cannot be merged, so a query whose
    rows need merging (ORDER BY, aggregates, LIMIT...) is refused (ProxyError), not
    concatenated. Read with pglast's AST (rare: the cost is no matter)."""
    from pglast import parse_sql
    from pglast.parser import ParseError
    from pglast.stream import RawStream

    try:
        query = parse_sql(sql)[0].stmt.query
    except (ParseError, AttributeError, IndexError):  # the shards say what is wrong
        return
    if query is None:
        return
    if plan_for(relay.cache, RawStream()(query), facts, select=True) is not None:
        raise ProxyError("0A000", "COPY (query) TO over several shards: the query's rows would "
                         "need merging (ORDER BY, aggregates, DISTINCT, LIMIT), which COPY "
                         "cannot do; run the query as a SELECT, or give it a sharding key")


# --- one execution ---------------------------------------------------------------------------


class SelectRun:
    """One execution of a merged SELECT: the plan, the client's Bind values, and the merge
    built from the first shard's RowDescription."""

    def __init__(self, plan: MergePlan, params: Sequence[bytes | None] = (),
                 param_formats: Sequence[int] = (), float_digits: int = 1) -> None:
        self.plan = plan
        self.params, self.param_formats = params, param_formats
        self.float_digits = float_digits
        self.merge: RowMerge | None = None
        self._columns: list[tuple[object, ...]] | None = None
        self._ended: set[int] = set()  # shards whose rows are all read
        self._ready: set[int] = set()  # shards whose ReadyForQuery was read already

    # the shards' descriptions

    async def describe(self, merger: _Merger, links: list[ShardLink], *, emit: bool) -> None:
        """Each shard's RowDescription (or error): the merge is built from the first; they
        must agree. `emit`: the client asked (Describe, Query) and gets the merged one."""
        for link in links:
            message = await merger._next(link)
            kind = message[:1]
            if kind == b"E":
                merger._failed(link, message)
                self._ended.add(link.shard)
            elif kind == b"T":
                self._description(merger, link, message)
            else:  # NoData, or no statement at all: not a SELECT's answer after all
                self._ended.add(link.shard)
                if kind == b"Z":
                    merger.statuses[link.shard] = message[5:6]
                    self._ready.add(link.shard)
                self._fail(merger, MergeError("0A000", f"shard {link.shard} answered no rows "
                                              "description for a SELECT"))
        if emit and self.merge is not None:
            merger._emit(self.merge.row_description)

    def _description(self, merger: _Merger, link: ShardLink, message: bytes) -> None:
        columns = merge.columns(message)  # (table oids differ from cluster to cluster)
        if self._columns is None:
            self._columns = columns
            try:
                self.merge = RowMerge(self.plan, message, self.params, self.param_formats,
                                      extra_float_digits=self.float_digits)
            except MergeError as exc:
                self._fail(merger, exc)
            _log_byte_order(self.merge)
        elif columns != self._columns and merger.error is None:
            merger.error = merge.disagreement(link.shard, "other columns")

    # the rows

    async def rows(self, merger: _Merger, links: list[ShardLink]) -> None:
        """Every shard's rows up to its end of statement, merged into one answer and one
        CommandComplete."""
        live = [link for link in links if link.shard not in self._ended]
        engine = self.merge
        if engine is not None and merger.error is None:
            try:
                if self.plan.kind == "sort":
                    await self._sorted(merger, live, engine)
                elif self.plan.kind == "aggregate":
                    await self._aggregate(merger, live, engine)
                else:
                    await self._streamed(merger, live, engine)
            except MergeError as exc:
                self._fail(merger, exc)
        for link in live:  # past a LIMIT or an error: the rest is read and dropped
            while await self._next_row(merger, link) is not None:
                pass
        if engine is not None:
            merger._emit(engine.command_complete())

    async def query(self, merger: _Merger, links: list[ShardLink]) -> None:
        """A simple Query's answers: description, rows, each shard's ReadyForQuery (their
        statuses kept for the caller)."""
        await self.describe(merger, links, emit=True)
        await self.rows(merger, links)
        for link in links:
            if link.shard not in self._ready:
                await merger.ready(link)

    async def _sorted(self, merger: _Merger, links: list[ShardLink], engine: RowMerge) -> None:
        arrival = itertools.count()
        heap = []
        for link in links:
            row = await self._next_row(merger, link)
            if row is not None:
                heap.append((engine.key(row), link.shard, next(arrival), row, link))
        heapq.heapify(heap)
        while heap and not engine.done and merger.error is None:
            key, shard, _n, row, link = heapq.heappop(heap)
            out = engine.output(row, key)
            if out is not None:
                merger._emit(out)
                await merger._flush_some()
            row = await self._next_row(merger, link)
            if row is not None:
                heapq.heappush(heap, (engine.key(row), shard, next(arrival), row, link))

    async def _streamed(self, merger: _Merger, links: list[ShardLink], engine: RowMerge) -> None:
        for link in links:
            while not engine.done and merger.error is None:
                row = await self._next_row(merger, link)
                if row is None:
                    break
                out = engine.output(row)
                if out is not None:
                    merger._emit(out)
                    await merger._flush_some()

    async def _aggregate(self, merger: _Merger, links: list[ShardLink], engine: RowMerge) -> None:
        for link in links:
            while (row := await self._next_row(merger, link)) is not None:
                engine.accept(link.shard, row)
        if merger.error is not None:
            return
        for out in engine.results():
            merger._emit(out)
            await merger._flush_some()

    async def _next_row(self, merger: _Merger, link: ShardLink) -> bytes | None:
        """The shard's next DataRow; None once its statement's rows are over (or failed)."""
        if link.shard in self._ended:
            return None
        while True:
            message = await merger._next(link)
            kind = message[0]
            if kind == 0x44:  # DataRow
                return message
            if kind in _ENDS:
                break
            if kind == 0x45:  # ErrorResponse
                merger._failed(link, message)
                break
        self._ended.add(link.shard)
        return None

    def _fail(self, merger: _Merger, exc: MergeError) -> None:
        """The merge cannot be right: the client's error; the shards' work is cancelled."""
        if merger.error is None:
            merger.error = m.error_response(exc.sqlstate, exc.message)
            merger.early_error(None)


def _log_byte_order(engine: RowMerge | None) -> None:
    global _logged_byte_order
    if engine is None or not engine.text_order_is_bytes or _logged_byte_order:
        return
    _logged_byte_order = True
    log.info("merging text from several shards in byte order (the \"C\" collation); a database "
             "with another collation would sort it differently (docs/sharding.md, \"How values "
             "are compared\")")


# --- what the shards get -------------------------------------------------------------------


def simple_query(relay: ShardedRelay, sql: str, facts: ShardingFacts, raw: bytes
                 ) -> tuple[bytes, list[SelectRun]]:
    """The Query message for the shards and the merge of its answers, if it needs one."""
    plan = plan_for(relay.cache, sql, facts)
    if plan is None:
        return raw, []
    run = SelectRun(plan, float_digits=_float_digits(relay))
    return (m.query(plan.shard_sql) if plan.rewritten else raw), [run]


def extended_unit(relay: ShardedRelay, unit: list[Message], executions: list[Execution]
                  ) -> tuple[list[Message], list[int], list[str], list[SelectRun]]:
    """The unit as the shards get it when executions in it need merging: their Binds
    rewritten, a Describe of the portal added before an Execute that has none (its rows must
    be read with their description); returns the messages, the index in the client's unit
    each comes from, the kind of answer the merger gives each ("T": the merged description,
    "t": a description the client did not ask for, "R": merged rows), and the merges."""
    kinds = [chr(kind) for kind, _b, _r in unit]
    runs: list[SelectRun] = []
    out = list(unit)
    origins = list(range(len(unit)))
    plans = [plan_for(relay.cache, e.sql, e.facts) if len(e.shards) > 1 else None
             for e in executions]
    for execution, plan in zip(reversed(executions), reversed(plans), strict=True):
        # (from the end: insertions keep the earlier indexes)
        if plan is None:
            continue
        run, bind = _bind(relay, plan, unit[execution.first])
        out[execution.first] = bind
        runs.insert(0, run)
        described = False
        for i in range(execution.first + 1, execution.last + 1):
            kind, body, _raw = unit[i]
            if kind == _DESCRIBE and body[:1] == b"P":
                kinds[i], described = "T", True
            elif kind == _EXECUTE:
                kinds[i] = "R"
                if not described:
                    portal = ext.bind_statement(bind[1])[0]
                    describe = ext.build_target(b"D", b"P", portal)
                    out.insert(i, (_DESCRIBE, describe[5:], describe))
                    origins.insert(i, i)
                    kinds.insert(i, "t")
                break
    return out, origins, kinds, runs


def check_portals(relay: ShardedRelay, unit: list[Message], executions: list[Execution]) -> None:
    """A merged portal must be executed in the batch that binds it (its merge is built
    there): an Execute or Describe in a later batch (after a Flush) is refused rather than
    answered unmerged. Remembers the merged portals this batch leaves unexecuted."""
    pending = relay.merged_portals
    if not pending and all(len(e.shards) < 2 for e in executions):
        return  # (the common case, at the cost of this test)
    plans = [plan_for(relay.cache, e.sql, e.facts) if len(e.shards) > 1 else None
             for e in executions]
    merged = [(e.first, e.last) for e, plan in zip(executions, plans, strict=True) if plan]
    bound: set[bytes] = set()
    for i, (kind, body, _raw) in enumerate(unit):
        if kind == _BIND:
            bound.add(ext.bind_statement(body)[0])
        elif (kind == _EXECUTE or (kind == _DESCRIBE and body[:1] == b"P")) and pending:
            portal = body[1:-1] if kind == _DESCRIBE else body[:-5]
            if portal in pending and portal not in bound and \
                    not any(first <= i <= last for first, last in merged):
                raise ProxyError("0A000", "a SELECT merged from several shards must be bound and "
                                 "executed in the same batch (before a Sync or Flush)")
    for execution, plan in zip(executions, plans, strict=True):
        portal = ext.bind_statement(unit[execution.first][1])[0]
        pending.discard(portal)
        if plan is not None and not any(unit[i][0] == _EXECUTE
                                        for i in range(execution.first, execution.last + 1)):
            pending.add(portal)


def _bind(relay: ShardedRelay, plan: MergePlan, message: Message) -> tuple[SelectRun, Message]:
    """The merge of one execution and the Bind the shards get for it."""
    kind, body, _raw = message
    portal, name, rest = ext.bind_statement(body)
    params, formats = r.bind_parameters(rest)
    results = r.bind_result_formats(rest)
    run = SelectRun(plan, params, formats, _float_digits(relay))
    shard_params, shard_formats = shard_parameters(plan, params, formats)
    shard_results = shard_result_formats(plan, results)
    if not plan.rewritten and shard_params is params and shard_results is results:
        return run, message
    if plan.rewritten:
        name = _derived(relay, name, plan)
    rest = r.build_bind_rest(shard_params, shard_formats, shard_results)
    bind = ext.build_bind(portal, name, rest)
    return run, (kind, bind[5:], bind)


def _derived(relay: ShardedRelay, name: bytes, plan: MergePlan) -> bytes:
    """The name the shards' version of a client statement is bound by."""
    return relay.own_statement(_DERIVED + name, plan.shard_sql, relay.statements[name][1])


def _float_digits(relay: ShardedRelay) -> int:
    try:
        return int(relay.session.settings.wanted.get("extra_float_digits", "1"))
    except ValueError:
        return 1
