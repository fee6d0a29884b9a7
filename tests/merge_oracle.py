"""PostgreSQL as the oracle of the cross-shard merge (used by tests/test_row_merge.py).

A table is split into three "shards" (schemas merge_s0..2, each with a table t holding some
of the rows) and kept whole in merge_whole. A query runs on each shard as the plan says
(shard SQL, shard parameters, result formats, through the raw protocol: tests/pgwire.py),
the engine merges the raw DataRow messages the way the session will (a heap for sorted
plans, accept/results for aggregates), and the answer is compared byte for byte with the
same query run directly on the whole table.
"""

from __future__ import annotations

import heapq
import itertools
import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio
from pgwire import Wire

from trio_pgdog.router.sharding.merge_plan import (
    MergePlan,
    plan_select,
    shard_parameters,
    shard_result_formats,
)
from trio_pgdog.router.sharding.row_merge import MergeError, RowMerge, parse_row_description

SHARDS = ("merge_s0", "merge_s1", "merge_s2")
WHOLE = "merge_whole"
TIMEZONE = "America/St_Johns"  # offsets of -03:30, -02:30 and, before 1935, -03:30:52

COLUMNS = (
    "id int PRIMARY KEY, g int, i2 int2, i4 int4, i8 int8, n numeric, f4 real, f8 float8, "
    "tx text, vc varchar(8), bp char(3), b bool, d date, tm time, ts timestamp, "
    "tz timestamptz, u uuid, iv interval, nm name"
)
NAMES = [c.split()[0] for c in COLUMNS.split(", ")]

_I32 = struct.Struct("!i")
_H = struct.Struct("!h")


def setup_sql() -> str:
    """DDL for the shards and the whole table (run once, as the superuser)."""
    parts = []
    for schema in (*SHARDS, WHOLE):
        parts.append(f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; "
                     f"CREATE TABLE {schema}.t ({COLUMNS}); "
                     f"GRANT ALL ON SCHEMA {schema} TO PUBLIC; "
                     f"GRANT ALL ON ALL TABLES IN SCHEMA {schema} TO PUBLIC;")
    return "\n".join(parts)


def literal(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int,)):
        return str(value)
    if isinstance(value, float):
        return f"'{value!r}'"
    text = str(value).replace("'", "''")
    return f"'{text}'"


def load_sql(rows: Sequence[dict[str, object]], shard_of: Sequence[int]) -> dict[str, str]:
    """schema -> the statements that fill its table."""
    out = {}
    for number, schema in enumerate((*SHARDS, WHOLE)):
        mine = [row for row, shard in zip(rows, shard_of, strict=True)
                if schema == WHOLE or shard == number]
        text = f"TRUNCATE {schema}.t;"
        if mine:
            values = ", ".join("(" + ", ".join(literal(row.get(name)) for name in NAMES) + ")"
                               for row in mine)
            text += f" INSERT INTO {schema}.t ({', '.join(NAMES)}) VALUES {values};"
        out[schema] = text
    return out


# --- the raw protocol ---------------------------------------------------------------------


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + _I32.pack(len(body) + 4) + body


def extended(sql: str, params: Sequence[bytes | None] = (), param_formats: Sequence[int] = (),
             result_formats: Sequence[int] = ()) -> bytes:
    bind = b"\x00\x00" + _H.pack(len(param_formats)) + b"".join(_H.pack(f) for f in param_formats)
    bind += _H.pack(len(params))
    for value in params:
        bind += b"\xff\xff\xff\xff" if value is None else _I32.pack(len(value)) + value
    bind += _H.pack(len(result_formats)) + b"".join(_H.pack(f) for f in result_formats)
    return (_message(b"P", b"\x00" + sql.encode() + b"\x00" + _H.pack(0))
            + _message(b"B", bind) + _message(b"D", b"P\x00")
            + _message(b"E", b"\x00" + _I32.pack(0)) + _message(b"S", b""))


@dataclass
class Answer:
    description: bytes | None = None  # RowDescription body
    rows: list[bytes] = field(default_factory=list)  # whole DataRow messages
    tag: bytes = b""
    error: dict[str, str] | None = None


async def run_batch(wire: Wire, requests: Sequence[bytes]) -> list[Answer]:
    """Each request (one extended-protocol statement ending in Sync), pipelined."""
    answers: list[Answer] = []

    async def send() -> None:
        await wire.send(b"".join(requests))

    async def receive() -> None:
        for _ in requests:
            answer = Answer()
            while True:
                message = await wire.read_message(timeout=60)
                assert message is not None
                if message.kind == b"T":
                    answer.description = message.body
                elif message.kind == b"D":
                    answer.rows.append(_message(b"D", message.body))
                elif message.kind == b"C":
                    answer.tag = message.body.rstrip(b"\x00")
                elif message.kind == b"E":
                    answer.error = message.fields
                elif message.kind == b"Z":
                    break
            answers.append(answer)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        nursery.start_soon(receive)
    return answers


class Connections:
    """One connection per shard and one to the whole table."""

    def __init__(self, wires: dict[str, Wire]) -> None:
        self.wires = wires

    @classmethod
    async def open(cls, port: int) -> Connections:
        wires = {}
        for schema in (*SHARDS, WHOLE):
            wire = await Wire.connect(port)
            await wire.login("trustuser", "appdb")
            result = await wire.query(f"SET search_path TO {schema}; SET TimeZone TO '{TIMEZONE}'")
            assert result.error is None, result.error
            wires[schema] = wire
        return cls(wires)

    async def aclose(self) -> None:
        for wire in self.wires.values():
            await wire.aclose()

    async def load(self, rows: Sequence[dict[str, object]], shard_of: Sequence[int]) -> None:
        for schema, text in load_sql(rows, shard_of).items():
            result = await self.wires[schema].query(text, timeout=60)
            assert result.error is None, (result.error, text[:300])


# --- the merge, as the session will run it -------------------------------------------------


@dataclass
class Merged:
    description: bytes | None
    rows: list[bytes]
    tag: bytes
    text_order_is_bytes: bool = False


def merge(plan: MergePlan, answers: Sequence[Answer], params: Sequence[bytes | None],
          param_formats: Sequence[int]) -> Merged:
    description = answers[0].description
    assert description is not None
    engine = RowMerge(plan, description, params, param_formats)
    out: list[bytes] = []
    if plan.kind == "aggregate":
        # Interleave the shards' rows, as they may arrive.
        for shard, message in _interleaved(answers):
            engine.accept(shard, message)
        out = list(engine.results())
    elif plan.kind == "sort":
        streams = [iter(a.rows) for a in answers]
        heap: list[tuple[object, int, int, bytes]] = []
        arrival = itertools.count()
        for shard, stream in enumerate(streams):
            message = next(stream, None)
            if message is not None:
                heap.append((engine.key(message), shard, next(arrival), message))
        heapq.heapify(heap)
        while heap and not engine.done:
            key, shard, _n, message = heapq.heappop(heap)
            sent = engine.output(message, key)
            if sent is not None:
                out.append(sent)
            following = next(streams[shard], None)
            if following is not None:
                heapq.heappush(heap, (engine.key(following), shard, next(arrival), following))
    else:
        for _shard, message in _interleaved(answers):
            if engine.done:
                break
            sent = engine.output(message)
            if sent is not None:
                out.append(sent)
    tag = engine.command_complete()[5:].rstrip(b"\x00")
    return Merged(engine.row_description[5:], out, tag, engine.text_order_is_bytes)


def _interleaved(answers: Sequence[Answer]):
    """(shard, message) taking the shards' rows in turn, as they might arrive."""
    queues = [a.rows for a in answers]
    for i in range(max((len(q) for q in queues), default=0)):
        for shard, rows in enumerate(queues):
            if i < len(rows):
                yield shard, rows[i]


def comparable_description(body: bytes) -> list[tuple[object, ...]]:
    """A RowDescription without table oids (each shard's table has its own)."""
    return [(name, attnum, oid, length, mod, fmt)
            for name, _table, attnum, oid, length, mod, fmt in parse_row_description(body)]


@dataclass
class Case:
    sql: str
    check: str = "exact"  # exact | bag | limited
    params: tuple[bytes | None, ...] = ()
    param_formats: tuple[int, ...] = ()
    refused: bool = False  # the merge must refuse it (plan or engine)


async def check_cases(connections: Connections, cases: Sequence[Case],
                      result_formats: Sequence[int]) -> int:
    """Run every case on the shards and directly; assert the merge equals the direct answer.
    Returns how many cases were compared."""
    plans = [plan_select(case.sql) for case in cases]
    requests: dict[str, list[bytes]] = {schema: [] for schema in (*SHARDS, WHOLE)}
    for case, plan in zip(cases, plans, strict=True):
        shard_params, shard_formats = shard_parameters(plan, case.params, case.param_formats)
        formats = shard_result_formats(plan, result_formats)
        for schema in SHARDS:
            requests[schema].append(extended(plan.shard_sql, shard_params, shard_formats, formats))
        requests[WHOLE].append(extended(case.sql, case.params, case.param_formats, result_formats))
    answers: dict[str, list[Answer]] = {}

    async def run(schema: str) -> None:
        answers[schema] = await run_batch(connections.wires[schema], requests[schema])

    async with trio.open_nursery() as nursery:
        for schema in requests:
            nursery.start_soon(run, schema)
    compared = 0
    for i, (case, plan) in enumerate(zip(cases, plans, strict=True)):
        direct = answers[WHOLE][i]
        shards = [answers[schema][i] for schema in SHARDS]
        where = f"{case.sql!r} params={case.params} formats={list(result_formats)}"
        assert direct.error is None, (where, direct.error)
        if plan.kind == "refused":
            assert case.refused, (where, plan.refusal)
            continue
        for answer in shards:
            assert answer.error is None, (where, plan.shard_sql, answer.error)
        try:
            merged = merge(plan, shards, case.params, case.param_formats)
        except MergeError as exc:
            assert case.refused, (where, exc.sqlstate, exc.message)
            continue
        assert not case.refused, (where, "was merged")
        compared += 1
        assert direct.description is not None
        assert comparable_description(merged.description) == \
            comparable_description(direct.description), where
        assert merged.tag == direct.tag or case.check == "limited", (where, merged.tag, direct.tag)
        types = [(f[3], f[6]) for f in parse_row_description(direct.description)]
        direct.rows = [_same_nan(row, types) for row in direct.rows]
        if case.check == "exact":
            assert merged.rows == direct.rows, (where, plan.shard_sql, _show(merged.rows),
                                                _show(direct.rows))
        elif case.check == "bag":
            assert Counter(merged.rows) == Counter(direct.rows), (where, _show(merged.rows),
                                                                  _show(direct.rows))
        else:  # limited without an order: as many rows, each one of the table's
            assert len(merged.rows) == len(direct.rows), (where, merged.tag, direct.tag)
            assert merged.tag == direct.tag, where
    return compared


_NAN8 = b"\x7f\xf8\x00\x00\x00\x00\x00\x00"
_NAN4 = b"\x7f\xc0\x00\x00"


def _same_nan(row: bytes, types: Sequence[tuple[int, int]]) -> bytes:
    """The row with binary float NaNs spelled one way: a NaN's sign bit depends on the order
    of additions (inf + -inf gives a negative one on x86), which a merge cannot reproduce."""
    if not any(fmt == 1 and oid in (700, 701) for oid, fmt in types):
        return row
    pos, cells = 7, []
    for oid, fmt in types:
        (n,) = _I32.unpack_from(row, pos)
        pos += 4
        cell = None if n < 0 else row[pos : pos + n]
        pos += max(n, 0)
        if cell is not None and fmt == 1 and oid == 701 and struct.unpack("!d", cell)[0] != \
                struct.unpack("!d", cell)[0]:
            cell = _NAN8
        if cell is not None and fmt == 1 and oid == 700 and struct.unpack("!f", cell)[0] != \
                struct.unpack("!f", cell)[0]:
            cell = _NAN4
        cells.append(cell)
    body = _H.pack(len(cells)) + b"".join(
        b"\xff\xff\xff\xff" if c is None else _I32.pack(len(c)) + c for c in cells)
    return _message(b"D", body)


def _show(rows: Sequence[bytes]) -> list[bytes]:
    return [r[7:] for r in rows[:20]]
