"""`python -m trio_pgdog.router.sharding.merge_bench`: the per-row cost of the cross-shard merge.

Builds DataRow messages as PostgreSQL sends them (5 columns: int8 id, text name, timestamptz,
numeric, int4 group) and times, per row, in CPU time (process time, so other work on the
machine does not count): `key` + `output` for sorted merges (the heap is the caller's and is
not counted), `output` for a DISTINCT stream, `accept` for aggregates, and `plan_select` per
SQL text. See docs/sharding.md.
"""

from __future__ import annotations

import argparse
import struct
import time
from collections.abc import Callable
from functools import partial

from .merge_plan import MergePlan, plan_select
from .row_merge import RowMerge

_COLUMNS = [("id", 20), ("name", 25), ("created", 1184), ("total", 1700), ("grp", 23)]


def _description(fmt: int, extra: tuple[tuple[str, int], ...] = ()) -> bytes:
    columns = _COLUMNS + list(extra)
    body = struct.pack("!h", len(columns))
    for name, oid in columns:
        body += name.encode() + b"\x00" + struct.pack("!ihihih", 0, 0, oid, -1, -1, fmt)
    return body


def _message(cells: list[bytes | None]) -> bytes:
    body = struct.pack("!h", len(cells))
    for cell in cells:
        body += b"\xff\xff\xff\xff" if cell is None else struct.pack("!i", len(cell)) + cell
    return b"D" + struct.pack("!i", len(body) + 4) + body


def _rows(count: int, fmt: int, hidden: int = 0) -> list[bytes]:
    rows = []
    for i in range(count):
        if fmt:
            cells = [struct.pack("!q", i), b"customer %d" % (i * 7919 % 1000),
                     struct.pack("!q", 789_000_000_000_000 + i * 1_000_003),
                     struct.pack("!hhhh", 2, 0, 0, 2) + struct.pack("!hh", i % 10000, 5000),
                     struct.pack("!i", i % 50)]
        else:
            created = b"2025-01-%02d %02d:%02d:%02d.%06d+00" % (
                1 + i % 28, i % 24, i % 60, i % 60, i % 999999)
            cells = [b"%d" % i, b"customer %d" % (i * 7919 % 1000), created,
                     b"%d.50" % (i % 10000), b"%d" % (i % 50)]
        rows.append(_message(cells + [b"%d" % i] * hidden))
    return rows


def _stream(plan: MergePlan, description: bytes, messages: list[bytes]) -> None:
    """What the session does per row of a sorted or streamed merge (but the heap)."""
    engine = RowMerge(plan, description)
    output = engine.output
    if plan.sort:
        key = engine.key
        for message in messages:
            output(message, key(message))
    else:
        for message in messages:
            output(message)


def _aggregate(plan: MergePlan, description: bytes, messages: list[bytes]) -> None:
    engine = RowMerge(plan, description)
    accept = engine.accept
    for message in messages:
        accept(0, message)
    for _ in engine.results():
        pass


def _per_row(run: Callable[[], None], rows: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        run()
        best = min(best, time.process_time() - start)
    return best / rows * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    count, repeat = args.rows, args.repeat
    for fmt, label in ((0, "text"), (1, "binary")):
        rows = _rows(count, fmt)
        shapes = {
            "ORDER BY id (int8)": "SELECT id, name, created, total, grp FROM t ORDER BY id",
            "ORDER BY name (text)": "SELECT id, name, created, total, grp FROM t ORDER BY name",
            "ORDER BY created DESC (timestamptz)":
                "SELECT id, name, created, total, grp FROM t ORDER BY created DESC",
            "ORDER BY total (numeric)": "SELECT id, name, created, total, grp FROM t ORDER BY total",
            "ORDER BY grp, id DESC": "SELECT id, name, created, total, grp FROM t ORDER BY grp, id DESC",
            "LIMIT/OFFSET, no ORDER BY": "SELECT id, name, created, total, grp FROM t "
                                         f"LIMIT {count} OFFSET 1",
            "DISTINCT, no ORDER BY": "SELECT DISTINCT id, name, created, total, grp FROM t",
        }
        for title, sql in shapes.items():
            plan = plan_select(sql)
            description = _description(fmt)
            # The rows in the order the merge emits them (as the heap would).
            ordered = sorted(rows, key=RowMerge(plan, description).key) if plan.sort else rows
            run = partial(_stream, plan, description, ordered)
            print(f"{label:6} {title:38} {_per_row(run, count, repeat):6.2f} µs/row")
        hidden_plan = plan_select("SELECT id, name, created, total, grp FROM t ORDER BY seq")
        description = _description(fmt, (("seq", 20),))
        hidden_rows = sorted(_rows(count, fmt, hidden=1), key=RowMerge(hidden_plan, description).key)
        run = partial(_stream, hidden_plan, description, hidden_rows)
        print(f"{label:6} {'ORDER BY a hidden column (dropped)':38} "
              f"{_per_row(run, count, repeat):6.2f} µs/row")
        for title, sql in {
            "count(*), sum(total) GROUP BY grp":
                "SELECT grp, count(*), sum(total) FROM t GROUP BY grp",
            "min(created), max(id) GROUP BY name":
                "SELECT name, min(created), max(id) FROM t GROUP BY name",
        }.items():
            plan = plan_select(sql)
            agg_rows = []
            for message in rows:
                cells = _cells_of(message)
                if "grp" in sql:
                    chosen = [cells[4], b"\x00\x00\x00\x00\x00\x00\x00\x02" if fmt else b"2", cells[3]]
                else:
                    chosen = [cells[1], cells[2], cells[0]]
                agg_rows.append(_message(chosen))
            fields = [("grp", 23), ("count", 20), ("sum", 1700)] if "grp" in sql else \
                [("name", 25), ("min", 1184), ("max", 20)]
            body = struct.pack("!h", 3) + b"".join(
                n.encode() + b"\x00" + struct.pack("!ihihih", 0, 0, o, -1, -1, fmt) for n, o in fields)
            run = partial(_aggregate, plan, body, agg_rows)
            print(f"{label:6} accept: {title:30} {_per_row(run, count, repeat):6.2f} µs/row")
    for sql in ("SELECT id, name FROM orders ORDER BY created DESC LIMIT 20 OFFSET 40",
                "SELECT id, name, created FROM orders ORDER BY created DESC LIMIT 20 OFFSET 40",
                "SELECT customer_id, count(*), avg(total) FROM orders GROUP BY customer_id "
                "HAVING count(*) > 2 ORDER BY 3 DESC LIMIT 10",
                "SELECT id, name FROM orders WHERE customer_id = $1 ORDER BY id"):
        start = time.process_time()
        for _ in range(200):
            plan_select(sql)
        cost = (time.process_time() - start) / 200 * 1e6
        print(f"plan_select {cost:8.0f} µs  ({'rewritten' if plan_select(sql).rewritten else 'as is'}): "
              f"{sql[:60]}")


def _cells_of(message: bytes) -> list[bytes | None]:
    (count,) = struct.unpack_from("!h", message, 5)
    pos, out = 7, []
    for _ in range(count):
        (n,) = struct.unpack_from("!i", message, pos)
        pos += 4
        out.append(None if n < 0 else message[pos : pos + n])
        pos += max(n, 0)
    return out


if __name__ == "__main__":
    main()
