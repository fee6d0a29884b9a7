"""The rows of a cross-shard SELECT, merged as one PostgreSQL holding every row would answer
(sans-IO; the session reads the shards and writes the client).

`RowMerge(plan, row_description, params, param_formats)` is built once per execution, from
the plan (merge_plan.py) and one shard's RowDescription for the portal (with the result
formats: each shard gets the same Bind). Messages in and out are whole DataRow messages
(b"D", length, body), as the session reads them.

By plan kind:
  - "concat", "stream", "sort": the session pulls rows from the shards (for "sort" through
    a heap of `(merge.key(message), shard, arrival, message)`: `key` is ascending for the
    merge, ties go to the lower shard), and passes each to `merge.output(message, key)`,
    which returns the message for the client or None (a DISTINCT duplicate, a row before
    OFFSET, a row after LIMIT), dropping hidden columns. Once `merge.done` (LIMIT reached)
    the rest of the shards' rows can be read and dropped unseen. `output` raises MergeError
    when the rows come out of order: a shard sorted them differently from the proxy (text in
    a collation other than "C"), so the answer would be wrong.
  - "aggregate": `merge.accept(shard, message)` for every shard row (one per group per
    shard), then `merge.results()` yields the client's DataRow messages (HAVING, DISTINCT,
    ORDER BY, OFFSET, LIMIT applied). Memory: one entry per group.

`merge.row_description` is the client's RowDescription message (hidden columns dropped, an
avg column typed as PostgreSQL types it); `client_row_description(plan, description)` does the
same for a Describe of the statement. `merge.command_complete()` is the CommandComplete
message (b"SELECT n", n the rows sent). `merge.text_order_is_bytes` is True when text values
are compared for order: the proxy orders text by its bytes (the "C" collation) and cannot
follow another collation; the session may log that once.

Cost per row, measured with timeit (2-core Xeon @ 2.50GHz, Python 3.11, loaded machine):
see docs/sharding.md, "Queries over several shards".
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from typing import Any

from . import cell_codecs as codecs
from .cell_codecs import MergeError
from .merge_plan import Aggregate, MergePlan, bind_bound

__all__ = ["MergeError", "RowMerge", "client_row_description", "parse_row_description"]

_I32 = struct.Struct("!i")
_H = struct.Struct("!h")
_FIELD_TAIL = struct.Struct("!ihihih")
_NULL_CELL = b"\xff\xff\xff\xff"
_F4_MAX = 3.4028234663852886e38

Field = tuple[bytes, int, int, int, int, int, int]  # name, table oid, attnum, type, len, mod, format


# --- RowDescription ------------------------------------------------------------------------


def parse_row_description(data: bytes) -> list[Field]:
    """The fields of a RowDescription, given its body or the whole message."""
    start = 0
    if data[:1] == b"T" and len(data) >= 5 and _I32.unpack_from(data, 1)[0] == len(data) - 1:
        start = 5  # a whole message: no body starts with 'T' (it would hold 21504+ fields)
    (count,) = _H.unpack_from(data, start)
    pos = start + 2
    fields: list[Field] = []
    for _ in range(count):
        end = data.index(b"\x00", pos)
        name = data[pos:end]
        tail = _FIELD_TAIL.unpack_from(data, end + 1)
        fields.append((name, *tail))  # type: ignore[arg-type]
        pos = end + 1 + _FIELD_TAIL.size
    return fields


def _build_row_description(fields: Sequence[Field]) -> bytes:
    body = _H.pack(len(fields)) + b"".join(
        name + b"\x00" + _FIELD_TAIL.pack(*tail) for name, *tail in fields)
    return b"T" + _I32.pack(len(body) + 4) + body


def _avg_type(sum_type: int) -> int | None:
    """avg's result type from the type of sum over the same argument."""
    if sum_type in (codecs.INT8, codecs.NUMERIC):
        return codecs.NUMERIC  # avg of integers and numerics is numeric
    if sum_type == codecs.FLOAT8:
        return codecs.FLOAT8
    return None


def _client_fields(plan: MergePlan, fields: list[Field]) -> list[Field]:
    total = len(fields)
    visible = list(fields[: total - plan.hidden])
    for aggregate in plan.aggregates:
        if aggregate.function != "avg":
            continue
        index = aggregate.column if aggregate.column >= 0 else total + aggregate.column
        if index >= len(visible):
            continue  # a hidden average
        name, _table, _attnum, sum_type, _len, _mod, fmt = visible[index]
        avg_type = _avg_type(sum_type)
        if avg_type is None:
            continue  # refused when the rows come
        visible[index] = (name, 0, 0, avg_type, -1 if avg_type == codecs.NUMERIC else 8, -1, fmt)
    return visible


def client_row_description(plan: MergePlan, row_description: bytes) -> bytes:
    """The RowDescription message the client sees for a shard's (body or message): without
    the hidden columns, avg columns typed numeric or double precision."""
    fields = parse_row_description(row_description)
    whole = row_description[:1] == b"T" and len(row_description) > 4 and \
        _I32.unpack_from(row_description, 1)[0] == len(row_description) - 1
    if whole and not plan.hidden and not any(a.function == "avg" for a in plan.aggregates):
        return row_description
    return _build_row_description(_client_fields(plan, fields))


# --- DataRow -------------------------------------------------------------------------------


def _cells(message: bytes, count: int) -> list[bytes | None]:
    """The first `count` cells of a DataRow message."""
    pos = 7
    out: list[bytes | None] = []
    unpack = _I32.unpack_from
    for _ in range(count):
        (n,) = unpack(message, pos)
        pos += 4
        if n < 0:
            out.append(None)
        else:
            out.append(message[pos : pos + n])
            pos += n
    return out


def _data_row(cells: Sequence[bytes | None]) -> bytes:
    parts = []
    for cell in cells:
        if cell is None:
            parts.append(_NULL_CELL)
        else:
            parts.append(_I32.pack(len(cell)))
            parts.append(cell)
    body = _H.pack(len(cells)) + b"".join(parts)
    return b"D" + _I32.pack(len(body) + 4) + body


def _truncate(message: bytes, keep: int) -> bytes:
    """The DataRow message with only its first `keep` cells."""
    pos = 7
    unpack = _I32.unpack_from
    for _ in range(keep):
        (n,) = unpack(message, pos)
        pos += 4 + (n if n > 0 else 0)
    return b"D" + _I32.pack(4 + 2 + pos - 7) + _H.pack(keep) + message[7:pos]


# --- keys ----------------------------------------------------------------------------------


def _sort_function(readers: list[tuple[int, Callable[[bytes], Any], bool]]
                   ) -> Callable[[Sequence[bytes | None]], tuple[Any, ...]]:
    """cells -> a tuple ordering rows as the ORDER BY does: per term a NULL flag (0 sorts
    first) and the cell's key (0 for NULL, compared only with other NULLs' 0)."""
    if len(readers) == 1:
        (index, read, nulls_first), = readers
        null_key = (0, 0) if nulls_first else (1, 0)
        present = 1 if nulls_first else 0

        def one(cells: Sequence[bytes | None]) -> tuple[Any, ...]:
            cell = cells[index]
            return null_key if cell is None else (present, read(cell))
        return one

    def many(cells: Sequence[bytes | None]) -> tuple[Any, ...]:
        out: list[Any] = []
        for index, read, nulls_first in readers:
            cell = cells[index]
            if cell is None:
                out += (0 if nulls_first else 1, 0)
            else:
                out += (1 if nulls_first else 0, read(cell))
        return tuple(out)
    return many


def _message_sort_function(readers: list[tuple[int, Callable[[bytes], Any], bool]]
                           ) -> Callable[[bytes], tuple[Any, ...]]:
    """DataRow message -> its sort key (as _sort_function builds it from cells), reading
    only the cells it needs. The function is generated for the columns, as dataclasses and
    attrs generate theirs: one straight walk over the message, no per-row loop or list."""
    needed = {index for index, _read, _nulls in readers}
    last = max(needed)
    lines = ["def key(message):", "    pos = 7"]
    for column in range(last + 1):
        lines.append("    (n,) = unpack(message, pos)")
        if column in needed:
            lines.append(f"    c{column} = None if n < 0 else message[pos + 4 : pos + 4 + n]")
        if column < last:
            lines.append("    pos += 4 + (n if n > 0 else 0)")
    parts = []
    namespace: dict[str, Any] = {"unpack": _I32.unpack_from}
    for k, (index, read, nulls_first) in enumerate(readers):
        namespace[f"read{k}"] = read
        null_flag, present = (0, 1) if nulls_first else (1, 0)
        parts.append(f"{null_flag} if c{index} is None else {present}, "
                     f"0 if c{index} is None else read{k}(c{index})")
    lines.append(f"    return ({', '.join(parts)},)")
    exec("\n".join(lines), namespace)
    return namespace["key"]


def _visible_end(message: bytes, visible: int) -> int:
    pos = 7
    unpack = _I32.unpack_from
    for _ in range(visible):
        (n,) = unpack(message, pos)
        pos += 4 + (n if n > 0 else 0)
    return pos


# --- the engine ----------------------------------------------------------------------------


class RowMerge:
    """One execution's merge (see the module docstring)."""

    def __init__(self, plan: MergePlan, row_description: bytes,
                 params: Sequence[bytes | None] = (), param_formats: Sequence[int] = (), *,
                 extra_float_digits: int = 1) -> None:
        if plan.kind == "refused":
            assert plan.refusal is not None
            raise MergeError(*plan.refusal)
        self.plan = plan
        self.fields = parse_row_description(row_description)
        self.total = len(self.fields)
        self.visible = self.total - plan.hidden
        if self.visible < 0 or (plan.columns is not None and self.visible != plan.columns):
            raise MergeError("0A000", f"the shards returned {self.total} columns where the "
                             f"proxy expected {(plan.columns or 0) + plan.hidden}")
        self.float_digits = extra_float_digits
        self.params, self.param_formats = params, param_formats
        self.client_fields = _client_fields(plan, self.fields)
        self.row_description = _build_row_description(self.client_fields)
        self.limit = bind_bound(plan.limit, params, param_formats)
        offset = bind_bound(plan.offset, params, param_formats)
        self.offset = offset if offset is not None and offset > 0 else 0
        self.rows = 0  # sent to the client
        self.skipped = 0
        self.done = self.limit == 0
        self.text_order_is_bytes = False
        self._last_key: Any = None
        self._tie_key: Any = None
        self._seen: set[Any] = set()
        self.sort_columns = [self.position(k.column) if k.column is not None else self.by_name(k.name)
                             for k in plan.sort]
        if plan.kind == "aggregate":
            self._init_aggregate()
        else:
            types, formats = [f[3] for f in self.fields], [f[6] for f in self.fields]
            self._sorted = bool(plan.sort)
            self.key = self._message_key(types, formats)  # type: ignore[method-assign]
            self._distinct_key = self._message_identity(types, formats) if plan.distinct else None

    # columns

    def position(self, column: int) -> int:
        index = column if column >= 0 else self.total + column
        if not 0 <= index < self.total:
            raise MergeError("0A000", f"the shards returned {self.total} columns, too few for "
                             "the merge the query needs")
        return index

    def by_name(self, name: str | None) -> int:
        matches = [i for i, f in enumerate(self.fields[: self.visible])
                   if f[0].decode("utf-8", "replace") == name]
        if len(matches) != 1:
            raise MergeError("0A000", f"ORDER BY {name}: {'no' if not matches else 'more than one'}"
                             " output column has that name; the proxy merges by output columns "
                             "only: select the column or order by its position")
        return matches[0]

    def _sorter(self, types: list[int], formats: list[int]
                ) -> Callable[[Sequence[bytes | None]], tuple[Any, ...]] | None:
        if not self.plan.sort:
            return None
        return _sort_function(self._sort_readers(types, formats))

    def _message_key(self, types: list[int], formats: list[int]) -> Callable[[bytes], Any]:
        if not self.plan.sort:
            return self._no_key
        return _message_sort_function(self._sort_readers(types, formats))

    @staticmethod
    def _no_key(message: bytes) -> tuple[Any, ...]:
        return ()

    def _message_identity(self, types: list[int], formats: list[int]) -> Callable[[bytes], Any]:
        """DataRow message -> its DISTINCT identity: the cells' bytes themselves when every
        column's bytes are canonical (no decoding), else decoded values."""
        visible = self.visible
        if all(codecs.canonical(types[i], formats[i]) for i in range(visible)):
            if not self.plan.hidden:
                return lambda message: message[7:]
            return lambda message: message[7 : _visible_end(message, visible)]
        from_cells = self._identity(range(visible))
        return lambda message: from_cells(_cells(message, visible))

    def _sort_readers(self, types: list[int], formats: list[int]
                      ) -> list[tuple[int, Callable[[bytes], Any], bool]]:
        readers = []
        for key, index in zip(self.plan.sort, self.sort_columns, strict=True):
            oid, fmt = types[index], formats[index]
            read = codecs.descending_key(oid, fmt) if key.descending else codecs.key_reader(oid, fmt)
            if read is None:
                raise MergeError("0A000", f"ORDER BY a column of {codecs.type_name(oid)}: the "
                                 "proxy cannot order that type when merging shards")
            if oid in codecs.TEXT_TYPES:
                if key.collation is None:
                    self.text_order_is_bytes = True
                elif key.collation not in ("C", "POSIX", "ucs_basic") and \
                        self.plan.kind == "aggregate":
                    raise MergeError("0A000", f'ORDER BY ... COLLATE "{key.collation}": the '
                                     'proxy orders text by its bytes only (COLLATE "C")')
            readers.append((index, read, key.nulls_first))
        return readers

    def _identity(self, columns: Sequence[int], types: Sequence[int] | None = None,
                  formats: Sequence[int] | None = None) -> Callable[[Sequence[bytes | None]], Any]:
        """cells -> a hashable value, equal for rows PostgreSQL counts as the same (DISTINCT,
        GROUP BY)."""
        types = types if types is not None else [f[3] for f in self.fields]
        formats = formats if formats is not None else [f[6] for f in self.fields]
        readers = []
        for index in columns:
            read = codecs.identity_reader(types[index], formats[index])
            if read is None:
                raise MergeError("0A000", f"DISTINCT or GROUP BY on a column of "
                                 f"{codecs.type_name(types[index])}: the proxy cannot tell which "
                                 "values are equal when merging shards (cast it to text)")
            readers.append((index, read))
        if len(readers) == 1:
            (index, read), = readers

            def one(cells: Sequence[bytes | None]) -> Any:
                cell = cells[index]
                return None if cell is None else read(cell)
            return one

        def many(cells: Sequence[bytes | None]) -> Any:
            return tuple(None if cells[i] is None else read(cells[i]) for i, read in readers)
        return many

    # rows: concat, stream, sort

    def key(self, message: bytes) -> tuple[Any, ...]:
        """The sort key of a shard's DataRow message (kind "sort"): ascending. (Replaced per
        instance by a function built for the plan's columns.)"""
        raise NotImplementedError

    def output(self, message: bytes, key: Any = None) -> bytes | None:
        """The message to send the client for a shard's row in merge order, or None."""
        if self.done:
            return None
        plan = self.plan
        if self._sorted:
            if key is None:
                key = self.key(message)
            if self._last_key is not None and key < self._last_key:
                raise MergeError("0A000", "the shards sorted rows differently from the proxy "
                                 "(text in a collation other than \"C\"?): the merged order would "
                                 "be wrong. Add COLLATE \"C\" to the text terms of ORDER BY")
            self._last_key = key
        if self._distinct_key is not None:
            identity = self._distinct_key(message)
            if self._sorted and key != self._tie_key:
                self._tie_key = key
                self._seen.clear()  # equal rows have equal sort keys: only ties can repeat
            if identity in self._seen:
                return None
            self._seen.add(identity)
        if self.skipped < self.offset:
            self.skipped += 1
            return None
        self.rows += 1
        if self.limit is not None and self.rows >= self.limit:
            self.done = True
        if plan.hidden:
            return _truncate(message, self.visible)
        return message

    def command_complete(self) -> bytes:
        tag = b"SELECT %d\x00" % self.rows
        return b"C" + _I32.pack(len(tag) + 4) + tag

    # aggregates

    def _init_aggregate(self) -> None:
        plan = self.plan
        types = [f[3] for f in self.fields]
        formats = [f[6] for f in self.fields]
        self.groups: dict[Any, list[Any]] = {}
        group_columns = [self.position(c) for c in plan.group_keys]
        self._group_key = self._identity(group_columns) if group_columns else None
        # The final column types: avg columns change type.
        self.final_types = list(types)
        self.combiners: list[_Combiner] = []
        for aggregate in plan.aggregates:
            combiner = _Combiner(self, aggregate, types, formats)
            self.combiners.append(combiner)
            self.final_types[combiner.index] = combiner.final_type
        self.final_formats = formats
        self._final_sort = self._sorter(self.final_types, formats)
        self._distinct_key = self._identity(range(self.visible), self.final_types, formats) \
            if plan.distinct else None
        self._having = _Condition(self, plan.having).compile() if plan.having is not None else None
        self._sorted = False
        if plan.check_shard_order:
            prefix = [(self.sort_columns[i], k) for i, k in enumerate(plan.sort[: len(group_columns)])]
            readers = []
            for index, key in prefix:
                read = codecs.descending_key(types[index], formats[index]) if key.descending \
                    else codecs.key_reader(types[index], formats[index])
                assert read is not None  # _sorter refused it otherwise
                readers.append((index, read, key.nulls_first))
            self._shard_order = _sort_function(readers)
            self._shard_last: dict[int, Any] = {}

    def accept(self, shard: int, message: bytes) -> None:
        """One shard's partial results for one group (kind "aggregate")."""
        cells = _cells(message, self.total)
        if self.plan.check_shard_order:
            order = self._shard_order(cells)
            last = self._shard_last.get(shard)
            if last is not None and order < last:
                raise MergeError("0A000", "a shard sorted its groups differently from the proxy "
                                 "(text in a collation other than \"C\"?): the limited groups "
                                 "would be wrong. Add COLLATE \"C\" to the text terms of ORDER BY")
            self._shard_last[shard] = order
        group = self._group_key(cells) if self._group_key is not None else None
        state = self.groups.get(group)
        if state is None:
            self.groups[group] = [cells, [c.start(cells) for c in self.combiners]]
            return
        partials = state[1]
        for i, combiner in enumerate(self.combiners):
            partials[i] = combiner.add(partials[i], cells)

    def results(self) -> Iterator[bytes]:
        """The client's DataRow messages, after every accept."""
        groups = self.groups
        if not self.plan.grouped and not groups:
            # No row at all (no shard answered a row): an aggregate over no rows.
            empty: list[bytes | None] = [None] * self.total
            groups = {None: [empty, [c.empty() for c in self.combiners]]}
        rows: list[list[bytes | None]] = []
        for cells, partials in groups.values():
            row = list(cells)
            for combiner, partial in zip(self.combiners, partials, strict=True):
                row[combiner.index] = combiner.final(partial)
            for combiner in self.combiners:
                if combiner.count_index is not None:
                    row[combiner.count_index] = None  # hidden: not worth encoding
            if self._having is not None and self._having(row) is not True:
                continue
            rows.append(row)
        if self._distinct_key is not None:
            unique: dict[Any, list[bytes | None]] = {}
            for row in rows:
                unique.setdefault(self._distinct_key(row), row)
            rows = list(unique.values())
        if self._final_sort is not None:
            rows.sort(key=self._final_sort)
        end = None if self.limit is None else self.offset + self.limit
        for row in rows[self.offset : end]:
            self.rows += 1
            yield _data_row(row[: self.visible])


class _Combiner:
    """One aggregate column: how partial results combine, and the final cell."""

    def __init__(self, merge: RowMerge, aggregate: Aggregate, types: list[int],
                 formats: list[int]) -> None:
        self.function = aggregate.function
        self.index = merge.position(aggregate.column)
        self.count_index = None if aggregate.count_column is None else \
            merge.position(aggregate.count_column)
        oid, fmt = types[self.index], formats[self.index]
        self.oid, self.fmt = oid, fmt
        self.final_type = oid
        self.float_digits = merge.float_digits
        what = f"{self.function}() of {codecs.type_name(oid)}"
        if self.function == "count":
            self.read = codecs.value_reader(codecs.INT8, fmt)
        elif self.function in ("bool_and", "bool_or"):
            self.read = codecs.value_reader(codecs.BOOL, fmt)
        elif self.function in ("min", "max"):
            self.read = codecs.key_reader(oid, fmt)
            if self.read is None:
                raise MergeError("0A000", f"{what}: the proxy cannot compare that type when "
                                 "merging shards")
            if oid in codecs.TEXT_TYPES:
                merge.text_order_is_bytes = True
        elif self.function == "sum":
            self.read = codecs.value_reader(oid, fmt)
            if oid not in (codecs.INT8, codecs.NUMERIC, codecs.FLOAT4, codecs.FLOAT8) or self.read is None:
                raise MergeError("0A000", f"{what}: the proxy adds bigint, numeric, real and double "
                                 "precision sums only")
        else:  # avg: the shard returned sum(x) here and count(x) at count_index
            assert self.count_index is not None
            self.read = codecs.value_reader(oid, fmt)
            self.read_count = codecs.value_reader(codecs.INT8, formats[self.count_index])
            avg_type = _avg_type(oid)
            if avg_type is None or self.read is None:
                detail = " (write avg(x::float8))" if oid == codecs.FLOAT4 else ""
                raise MergeError("0A000", f"avg() over {codecs.type_name(oid)} sums cannot be "
                                 f"merged exactly across shards{detail}")
            self.final_type = avg_type

    # partial states: count int; sum value or None; min/max (key, cell) or None;
    # bool or None; avg [sum or None, count]

    def empty(self) -> Any:
        if self.function == "count":
            return 0
        if self.function == "avg":
            return [None, 0]
        return None

    def start(self, cells: Sequence[bytes | None]) -> Any:
        return self.add(self.empty(), cells)

    def add(self, state: Any, cells: Sequence[bytes | None]) -> Any:
        cell = cells[self.index]
        function = self.function
        if function == "count":
            return state + (self.read(cell) if cell is not None else 0)
        if function == "avg":
            count_cell = cells[self.count_index]  # type: ignore[index]
            if cell is not None:
                state[0] = self.plus(state[0], self.read(cell))
            if count_cell is not None:
                state[1] += self.read_count(count_cell)
            return state
        if cell is None:
            return state
        if function == "sum":
            return self.plus(state, self.read(cell))
        if function == "min":
            key = self.read(cell)
            return (key, cell) if state is None or key < state[0] else state
        if function == "max":
            key = self.read(cell)
            return (key, cell) if state is None or key > state[0] else state
        value = self.read(cell)
        if state is None:
            return value
        return (state and value) if function == "bool_and" else (state or value)

    def plus(self, total: Any, value: Any) -> Any:
        if total is None:
            return value
        if self.oid == codecs.NUMERIC:
            return codecs.EXACT.add(total, value)
        if self.oid in (codecs.FLOAT4, codecs.FLOAT8):
            result = total + value
            if self.oid == codecs.FLOAT4:
                result = struct.unpack("!f", struct.pack("!f", result))[0] \
                    if abs(result) <= _F4_MAX or math.isnan(result) else math.copysign(math.inf, result)
            if math.isinf(result) and not math.isinf(total) and not math.isinf(value):
                raise MergeError("22003", "value out of range: overflow")
            return result
        return total + value  # integers: checked when written

    def final(self, state: Any) -> bytes | None:
        function, fmt = self.function, self.fmt
        if function == "count":
            return codecs.int8_cell(state, fmt)
        if function in ("min", "max"):
            return None if state is None else state[1]  # the winning cell, as the shard sent it
        if function in ("bool_and", "bool_or"):
            return None if state is None else codecs.bool_cell(state, fmt)
        if function == "sum":
            return None if state is None else self.write(state, self.oid)
        total, count = state
        if total is None or count == 0:
            return None
        if self.final_type == codecs.FLOAT8:
            return codecs.float_cell(total / count, fmt, extra_digits=self.float_digits)
        dividend = total if isinstance(total, Decimal) else Decimal(total)
        return codecs.numeric_cell(codecs.numeric_div(dividend, count), fmt)

    def write(self, value: Any, oid: int) -> bytes:
        if oid == codecs.INT8:
            return codecs.int8_cell(value, self.fmt)
        if oid == codecs.NUMERIC:
            return codecs.numeric_cell(value, self.fmt)
        return codecs.float_cell(value, self.fmt, float4=oid == codecs.FLOAT4,
                                 extra_digits=self.float_digits)


class _Condition:
    """A HAVING condition compiled to a function of a final row: True, False or None (SQL's
    three-valued logic; a group is kept only for True)."""

    def __init__(self, merge: RowMerge, tree: tuple[Any, ...]) -> None:
        self.merge = merge
        self.tree = tree

    def compile(self) -> Callable[[Sequence[bytes | None]], bool | None]:
        return self.node(self.tree)

    def node(self, tree: tuple[Any, ...]) -> Callable[[Sequence[bytes | None]], bool | None]:
        kind = tree[0]
        if kind in ("and", "or"):
            parts = [self.node(t) for t in tree[1]]
            if kind == "and":
                def both(row: Sequence[bytes | None]) -> bool | None:
                    result: bool | None = True
                    for part in parts:
                        value = part(row)
                        if value is False:
                            return False
                        if value is None:
                            result = None
                    return result
                return both

            def either(row: Sequence[bytes | None]) -> bool | None:
                result: bool | None = False
                for part in parts:
                    value = part(row)
                    if value is True:
                        return True
                    if value is None:
                        result = None
                return result
            return either
        if kind == "not":
            inner = self.node(tree[1])

            def negate(row: Sequence[bytes | None]) -> bool | None:
                value = inner(row)
                return None if value is None else not value
            return negate
        if kind == "null":
            operand = self.operand(tree[1], None)
            is_null = tree[2]
            return lambda row: (operand(row) is None) == is_null
        _cmp, op, left, right = tree
        oid = self.type_of(left) or self.type_of(right)
        if oid is None:
            raise MergeError("0A000", "a HAVING comparison between constants cannot be merged")
        if left[0] == "col" and right[0] == "col":
            other = self.type_of(right)
            if _family(oid) != _family(other):  # type: ignore[arg-type]
                raise MergeError("0A000", "a HAVING comparison of columns of different types "
                                 "cannot be evaluated after merging shards")
        if op != "=" and op != "<>" and oid in codecs.TEXT_TYPES:
            self.merge.text_order_is_bytes = True
        a, b = self.operand(left, oid), self.operand(right, oid)
        compare = _COMPARE[op]

        def comparison(row: Sequence[bytes | None]) -> bool | None:
            x, y = a(row), b(row)
            if x is None or y is None:
                return None
            return compare(x, y)
        return comparison

    def type_of(self, operand: tuple[str, Any]) -> int | None:
        if operand[0] != "col":
            return None
        return self.merge.final_types[self.merge.position(operand[1])]

    def operand(self, operand: tuple[str, Any], oid: int | None
                ) -> Callable[[Sequence[bytes | None]], Any]:
        kind, value = operand
        merge = self.merge
        if kind == "col":
            index = merge.position(value)
            col_type, fmt = merge.final_types[index], merge.final_formats[index]
            read = codecs.key_reader(col_type, fmt)
            if read is None:
                raise MergeError("0A000", f"HAVING on a column of {codecs.type_name(col_type)} "
                                 "cannot be evaluated after merging shards")

            def column(row: Sequence[bytes | None]) -> Any:
                cell = row[index]
                return None if cell is None else read(cell)
            return column
        assert oid is not None
        if kind == "const":
            constant = None if value is None else codecs.literal_key(oid, value)
            return lambda row: constant
        # a parameter
        params, formats = merge.params, merge.param_formats
        raw = params[value] if value < len(params) else None
        if raw is None:
            return lambda row: None
        binary = bool(formats) and (formats[0] if len(formats) == 1 else
                                    formats[value] if value < len(formats) else 0) == 1
        if binary:
            read = codecs.key_reader(oid, 1)
            if read is None:
                raise MergeError("0A000", "a binary HAVING parameter of this type cannot be read")
            if oid in (codecs.INT2, codecs.INT4, codecs.INT8, codecs.NUMERIC) and len(raw) in (2, 4, 8):
                number = int.from_bytes(raw, "big", signed=True)
                param_key = codecs.literal_key(oid, str(number))
            else:
                param_key = read(raw)
        else:
            param_key = codecs.literal_key(oid, raw.decode("utf-8"))
        return lambda row: param_key


def _family(oid: int) -> str:
    if oid in (codecs.INT2, codecs.INT4, codecs.INT8, codecs.OID):
        return "int"
    if oid in codecs.TEXT_TYPES or oid == codecs.NAME:
        return "text"
    if oid in (codecs.FLOAT4, codecs.FLOAT8):
        return "float"
    return str(oid)


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b, "<>": lambda a, b: a != b, "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
}
