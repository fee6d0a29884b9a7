"""The cross-shard row merge gives, byte for byte, what PostgreSQL gives over the whole table.

Each test fills three "shards" and the whole table (tests/merge_oracle.py), runs many query
shapes on the shards as the merge plan says, merges their raw DataRow messages with
RowMerge, and compares with the direct answer: RowDescription (but table oids), every
DataRow's bytes, and the command tag; in text and in binary result format.
"""

from __future__ import annotations

import struct

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from merge_oracle import Case, Connections, check_cases, setup_sql

from trio_pgdog.router.sharding.merge_plan import plan_select
from trio_pgdog.router.sharding.row_merge import (
    MergeError,
    RowMerge,
    client_row_description,
    parse_row_description,
)

SORTABLE = ["i2", "i4", "i8", "n", "f4", "f8", "tx", "vc", "bp", "b", "d", "tm", "ts", "tz",
            "u", "iv", "nm"]
NUMBERS = ["i2", "i4", "i8", "n", "f4", "f8"]


@pytest.fixture(scope="module")
def merge_port(pg) -> int:
    pg.sql(setup_sql(), dbname="appdb")
    return pg.port


# --- the query shapes ------------------------------------------------------------------------


def sort_cases(column: str) -> list[Case]:
    cases = []
    for direction in ("", " DESC"):
        for nulls in ("", " NULLS FIRST", " NULLS LAST"):
            cases.append(Case(f"SELECT id, {column} FROM t ORDER BY {column}{direction}{nulls}, id"))
    cases += [
        # ORDER BY a column not in the output (pgDog #1135): a hidden column.
        Case(f"SELECT id FROM t ORDER BY {column} DESC, id"),
        Case(f"SELECT id FROM t ORDER BY {column}, id LIMIT 5 OFFSET 2"),
        Case(f"SELECT id, {column} AS x FROM t ORDER BY x NULLS FIRST, 1 DESC LIMIT 4"),
        Case(f"SELECT DISTINCT {column} FROM t ORDER BY 1"),
        Case(f"SELECT DISTINCT {column} FROM t ORDER BY 1 DESC LIMIT 3 OFFSET 1"),
        Case(f"SELECT DISTINCT {column} FROM t", "bag"),
        Case(f"SELECT DISTINCT g, {column} FROM t ORDER BY 2, 1"),
    ]
    if column not in ("b", "u"):  # PostgreSQL has no min(boolean) or min(uuid)
        cases += [
            Case(f"SELECT min({column}), max({column}), count({column}) FROM t"),
            Case(f"SELECT g, min({column}), max({column}) FROM t GROUP BY g ORDER BY g"),
        ]
    return cases


def number_cases(column: str) -> list[Case]:
    average = f"avg({column}::float8)" if column == "f4" else f"avg({column})"
    return [
        Case(f"SELECT count(*), count({column}), sum({column}), {average} FROM t"),
        Case(f"SELECT g, sum({column}), {average}, count(*) FROM t GROUP BY g ORDER BY g"),
        Case(f"SELECT g AS grp, {average} AS mean FROM t GROUP BY grp HAVING count(*) > 1 "
             f"ORDER BY mean NULLS FIRST, grp"),
        Case(f"SELECT g, sum({column}) FROM t GROUP BY g HAVING sum({column}) > 0 OR "
             f"sum({column}) IS NULL ORDER BY 2 DESC, 1"),
        Case(f"SELECT {average} FROM t GROUP BY g", "bag"),
        Case(f"SELECT g FROM t GROUP BY g ORDER BY {average} DESC NULLS LAST, g"),
        Case(f"SELECT DISTINCT count({column}) FROM t GROUP BY g ORDER BY 1"),
    ]


def other_cases() -> list[Case]:
    return [
        # pgDog #638: GROUP BY a column not in the output, a count per group.
        Case("SELECT count(*) FROM t GROUP BY g", "bag"),
        Case("SELECT count(*) AS n FROM t GROUP BY g ORDER BY n DESC LIMIT 2"),
        # pgDog #1172: plain columns next to aggregates.
        Case("SELECT g, count(*) FROM t GROUP BY g", "bag"),
        Case("SELECT g, count(*) FROM t GROUP BY g ORDER BY count(*) DESC, g"),
        Case("SELECT g, g * 2 AS twice, count(*) FROM t GROUP BY g ORDER BY 1 NULLS FIRST"),
        Case("SELECT g, count(*) FROM t GROUP BY 1 ORDER BY 1 LIMIT 2 OFFSET 1"),
        Case("SELECT g, count(*) FROM t GROUP BY g ORDER BY g DESC LIMIT 3"),
        Case("SELECT g, bp, count(*) FROM t GROUP BY g, bp ORDER BY bp, g LIMIT 3"),
        Case("SELECT g % 2 AS parity, count(*), sum(i8) FROM t GROUP BY g % 2 ORDER BY 1"),
        Case("SELECT g % 2 AS parity, count(*) FROM t GROUP BY parity ORDER BY parity DESC"),
        Case("SELECT t.*, count(*) FROM t GROUP BY id ORDER BY id"),
        Case("SELECT g FROM t GROUP BY g HAVING avg(i4) > 0 ORDER BY g"),
        Case("SELECT max(DISTINCT i4), min(DISTINCT tx), count(*) FILTER (WHERE i4 > 0), "
             "sum(i2) FILTER (WHERE b) FROM t"),
        Case("SELECT g, count(*) FROM t GROUP BY g HAVING g > 1 ORDER BY g"),
        Case("SELECT g, count(*) FROM t GROUP BY g ORDER BY g % 2 NULLS FIRST, g"),
        Case("SELECT DISTINCT g FROM t LIMIT 2", "limited"),
        Case("SELECT id, nm FROM t WHERE nm < 'b' ORDER BY nm DESC, id"),
        # pgDog #1616: min/max of timestamps keep their microseconds.
        Case("SELECT min(ts), max(ts), min(tz), max(tz), min(tm), max(tm) FROM t"),
        Case("SELECT g, max(ts), min(tz) FROM t GROUP BY g ORDER BY max(ts) NULLS FIRST, g"),
        Case("SELECT g, bool_and(b), bool_or(b), every(b) FROM t GROUP BY g ORDER BY g"),
        Case("SELECT bool_and(b), bool_or(b) FROM t"),
        Case("SELECT bool_and(b) FROM t WHERE false"),
        Case("SELECT count(*), sum(i4), avg(i8), min(tx) FROM t WHERE false"),
        Case("SELECT g, count(*) FROM t WHERE false GROUP BY g"),
        # HAVING, evaluated after the merge.
        Case("SELECT g FROM t GROUP BY g HAVING count(*) >= 2 AND max(tx) >= 'b' ORDER BY g"),
        Case("SELECT g, avg(n) FROM t GROUP BY g HAVING avg(n) BETWEEN -100 AND 100 "
             "OR count(*) = 1 ORDER BY g"),
        Case("SELECT g FROM t GROUP BY g HAVING NOT (min(d) IS NULL) ORDER BY g"),
        Case("SELECT g FROM t GROUP BY g HAVING count(*) IN (1, 3) AND g > 0 ORDER BY g"),
        Case("SELECT g FROM t GROUP BY g HAVING count(*) NOT IN (2) ORDER BY g"),
        Case("SELECT g FROM t GROUP BY g HAVING sum(f8) < 1e10 ORDER BY g"),
        Case("SELECT count(*) FROM t HAVING count(*) > 1000"),
        Case("SELECT count(*) FROM t HAVING count(*) >= $1", params=(b"2",)),
        Case("SELECT g FROM t GROUP BY g HAVING max(i4) > $1 ORDER BY g",
             params=(struct.pack("!i", 0),), param_formats=(1,)),
        Case("SELECT g FROM t GROUP BY g HAVING min(ts) < '2000-01-01' ORDER BY g"),
        # LIMIT and OFFSET, constants and parameters.
        Case("SELECT id FROM t ORDER BY i8 DESC, id LIMIT $1 OFFSET $2", params=(b"3", b"2")),
        Case("SELECT id FROM t ORDER BY i8, id LIMIT $1 OFFSET $2",
             params=(struct.pack("!q", 4), struct.pack("!q", 1)), param_formats=(1,)),
        Case("SELECT id FROM t ORDER BY tx, id LIMIT 3 OFFSET $1", params=(b"1",)),
        Case("SELECT id FROM t ORDER BY tx, id LIMIT $1 OFFSET 2", params=(b"2",)),
        Case("SELECT id FROM t ORDER BY tx, id LIMIT $1", params=(None,)),
        Case("SELECT id FROM t ORDER BY d, id OFFSET $1", params=(b"3",)),
        Case("SELECT id FROM t ORDER BY d, id OFFSET 100"),
        Case("SELECT id FROM t ORDER BY d, id LIMIT 0"),
        Case("SELECT id FROM t LIMIT 4 OFFSET 1", "limited"),
        Case("SELECT id FROM t OFFSET 2", "limited"),
        Case("SELECT g, count(*) FROM t GROUP BY g ORDER BY g LIMIT $1 OFFSET $2",
             params=(b"2", b"1")),
        Case("SELECT g, count(*) FROM t GROUP BY g ORDER BY 2, 1 LIMIT $1", params=(b"2",)),
        # FETCH FIRST is LIMIT.
        Case("SELECT id FROM t ORDER BY id DESC OFFSET 1 ROWS FETCH FIRST 2 ROWS ONLY"),
        # * in the select list.
        Case("SELECT * FROM t ORDER BY i4, id"),
        Case("SELECT *, id AS again FROM t ORDER BY again DESC LIMIT 5"),
        Case("SELECT t.*, 1 AS one FROM t ORDER BY t.tx DESC, id"),
        Case("SELECT DISTINCT * FROM t ORDER BY id"),
        # UNION
        Case("SELECT g FROM t UNION SELECT i2 FROM t ORDER BY 1"),
        Case("SELECT tx FROM t UNION SELECT vc FROM t", "bag"),
        Case("SELECT g FROM t UNION ALL SELECT g FROM t ORDER BY g DESC NULLS LAST LIMIT 5"),
        # Plain rows.
        Case("SELECT id, tx FROM t", "bag"),
        Case("SELECT id FROM t WHERE false ORDER BY id"),
        Case("SELECT id, tx FROM t ORDER BY tx COLLATE \"C\" DESC, 1"),
        # Refused, by the plan or by the engine.
        Case("SELECT count(DISTINCT g) FROM t", refused=True),
        Case("SELECT sum(i4) / count(*) FROM t", refused=True),
        Case("SELECT string_agg(tx, ',') FROM t", refused=True),
        Case("SELECT avg(f4) FROM t", refused=True),
        Case("SELECT sum(iv) FROM t", refused=True),
        Case("SELECT id, row_number() OVER (ORDER BY id) FROM t", refused=True),
    ]


def all_cases() -> list[Case]:
    cases = []
    for column in SORTABLE:
        cases += sort_cases(column)
    for column in NUMBERS:
        cases += number_cases(column)
    return cases + other_cases()


# --- data ------------------------------------------------------------------------------------

FIXED_ROWS = [
    dict(id=1, g=1, i2=-32768, i4=2147483647, i8=9223372036854775807, n="1.500", f4="1.25",
         f8="-0.5", tx="apple", vc="Äpfel", bp="ab", b=True, d="2024-02-29", tm="23:59:59.999999",
         ts="2024-02-29 12:34:56.123456", tz="2024-02-29 12:34:56.123456",
         u="a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", iv="1 mon 2 days 03:04:05.5", nm="name1"),
    dict(id=2, g=1, i2=32767, i4=-2147483648, i8=-9223372036854775808, n="NaN", f4="NaN",
         f8="NaN", tx="Apple", vc="apfel", bp="a", b=False, d="4713-01-01 BC", tm="00:00:00",
         ts="0044-03-15 12:00:00 BC", tz="1900-05-05 10:00:00.25",
         u="00000000-0000-0000-0000-000000000000", iv="-1 days +02:03:00", nm="Name2"),
    dict(id=3, g=2, i2=0, i4=0, i8=0, n="-0.000001", f4="-Infinity", f8="Infinity", tx="",
         vc="", bp="", b=None, d="infinity", tm="24:00:00", ts="infinity", tz="-infinity",
         u="ffffffff-ffff-ffff-ffff-ffffffffffff", iv="00:00:00", nm=""),
    dict(id=4, g=2, i2=7, i4=7, i8=7, n="123456789012345678901234567890.123", f4="0.75",
         f8="1e300", tx="zebra 中", vc="z", bp="zz", b=True, d="-infinity", tm="12:00:00.5",
         ts="-infinity", tz="infinity", u="a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12",
         iv="1 year 2 mons", nm="zz"),
    dict(id=5, g=None, i2=None, i4=None, i8=None, n=None, f4=None, f8=None, tx=None, vc=None,
         bp=None, b=None, d=None, tm=None, ts=None, tz=None, u=None, iv=None, nm=None),
    dict(id=6, g=None, i2=7, i4=7, i8=7, n="Infinity", f4="Infinity", f8="-Infinity",
         tx="apple", vc="Äpfel", bp="ab", b=False, d="10000-01-01", tm="12:00:00.5",
         ts="12345-06-07 01:02:03.5", tz="2024-07-01 10:00:00", u="a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
         iv="1 mon 2 days 03:04:05.5", nm="name1"),
    dict(id=7, g=3, i2=-1, i4=-1, i8=-1, n="-Infinity", f4="-0.25", f8="0.125", tx="😀",
         vc="😀", bp="😀", b=True, d="0001-01-01 BC", tm="00:00:00.000001",
         ts="2000-01-01 00:00:00.000001", tz="1935-03-30 00:00:00", u="123e4567-e89b-12d3-a456-426614174000",
         iv="100:00:00", nm="😀"),
    dict(id=8, g=3, i2=2, i4=2, i8=2, n="2.25", f4="2", f8="2", tx="apple ", vc="apple",
         bp="a b", b=True, d="2000-01-01", tm="01:02:03", ts="2000-01-01 00:00:00",
         tz="2000-01-01 00:00:00", u="123e4567-e89b-12d3-a456-426614174001", iv="2 days",
         nm="apple"),
    dict(id=9, g=1, i2=2, i4=2, i8=2, n="2.25", f4="2", f8="2", tx="b", vc="b", bp="b",
         b=None, d="2000-01-02", tm="01:02:03", ts="1999-12-31 23:59:59.999999",
         tz="1999-12-31 23:59:59.999999", u="123e4567-e89b-12d3-a456-426614174001", iv="2 days",
         nm="b"),
]
# Integer sums of the full-range values above do not fit in bigint: keep them for the
# orders, and give sum() inputs that fit.
FIXED_ROWS[0]["i8"] = 9223372036854775000
FIXED_ROWS[1]["i8"] = -9223372036854775000


def _run(port: int, rows: list[dict[str, object]], shard_of: list[int], cases: list[Case],
         formats: list[list[int]]) -> int:
    async def scenario() -> int:
        connections = await Connections.open(port)
        try:
            await connections.load(rows, shard_of)
            compared = 0
            for result_formats in formats:
                compared += await check_cases(connections, cases, result_formats)
            return compared
        finally:
            await connections.aclose()
    return trio.run(scenario)


@pytest.mark.parametrize("layout", ["spread", "one_shard", "two_empty_one_full"])
def test_merged_answers_equal_postgres(merge_port: int, layout: str) -> None:
    rows = FIXED_ROWS
    if layout == "spread":
        shard_of = [row["id"] % 3 for row in rows]  # type: ignore[operator]
    elif layout == "one_shard":
        shard_of = [1] * len(rows)
    else:
        shard_of = [2] * len(rows)
    cases = all_cases()
    compared = _run(merge_port, rows, shard_of, cases, [[0], [1]])
    refused = sum(1 for c in cases if c.refused)
    assert compared == 2 * (len(cases) - refused)


def test_result_formats_per_column(merge_port: int) -> None:
    # One format code per output column: the shards get text for the hidden ones.
    cases = [Case("SELECT id, tx, ts FROM t ORDER BY d DESC, id"),
             Case("SELECT g, avg(i4), max(tz) FROM t GROUP BY g ORDER BY min(n), g")]
    for formats in ([1, 0, 1], [0, 1, 0]):
        assert _run(merge_port, FIXED_ROWS, [r["id"] % 3 for r in FIXED_ROWS],  # type: ignore[operator]
                    cases, [formats]) == 2


def test_empty_table(merge_port: int) -> None:
    cases = [c for c in all_cases() if not c.refused]
    assert _run(merge_port, [], [], cases, [[0], [1]]) == 2 * len(cases)


# --- generated data --------------------------------------------------------------------------


def _two(n: int) -> str:
    return f"{n:02d}"


@st.composite
def _timestamp(draw: st.DrawFn, with_time: bool = True) -> str:
    special = draw(st.sampled_from(["", "", "", "", "", "", "", "", "infinity", "-infinity"]))
    if special:
        return special
    year = draw(st.integers(1, 12000))
    bc = year > 9999 and draw(st.booleans())
    if bc:
        year = draw(st.integers(1, 4700))
    text = f"{year:04d}-{_two(draw(st.integers(1, 12)))}-{_two(draw(st.integers(1, 28)))}"
    if with_time:
        text += (f" {_two(draw(st.integers(0, 23)))}:{_two(draw(st.integers(0, 59)))}:"
                 f"{_two(draw(st.integers(0, 59)))}.{draw(st.integers(0, 999999)):06d}")
    return text + (" BC" if bc else "")


_TEXT = st.text(alphabet="aAbBz é中😀", max_size=5)


def _nullable(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.none(), strategy, strategy, strategy)


@st.composite
def _numeric(draw: st.DrawFn) -> str:
    special = draw(st.sampled_from(["", "", "", "", "", "", "", "", "", "NaN", "Infinity", "-Infinity"]))
    if special:
        return special
    thousandths = draw(st.integers(-10**15, 10**15))
    # Equal values print alike (a scale that depends on the value): min and max are then
    # determined, as they are not in PostgreSQL for 1.0 and 1.00.
    scale = 3 + thousandths % 3
    value = str(abs(thousandths) * 10 ** (scale - 3)).rjust(scale + 1, "0")
    return ("-" if thousandths < 0 else "") + value[:-scale] + "." + value[-scale:]


@st.composite
def _float(draw: st.DrawFn) -> str:
    special = draw(st.sampled_from(["", "", "", "", "", "", "", "", "NaN", "Infinity", "-Infinity"]))
    if special:
        return special
    # Quarters well inside float4's precision: every sum is exact, whatever the order.
    return repr(draw(st.integers(-65536, 65536)) / 4)


@st.composite
def _row(draw: st.DrawFn, number: int) -> dict[str, object]:
    return dict(
        id=number,
        g=draw(_nullable(st.integers(0, 3))),
        i2=draw(_nullable(st.integers(-32768, 32767))),
        i4=draw(_nullable(st.integers(-2**31, 2**31 - 1))),
        i8=draw(_nullable(st.integers(-2**62, 2**62))),
        n=draw(_nullable(_numeric())),
        f4=draw(_nullable(_float())),
        f8=draw(_nullable(_float())),
        tx=draw(_nullable(_TEXT)),
        vc=draw(_nullable(st.text(alphabet="abé", max_size=8))),
        bp=draw(_nullable(st.text(alphabet="ab中", min_size=1, max_size=3))),
        b=draw(_nullable(st.booleans())),
        d=draw(_nullable(_timestamp(with_time=False))),
        tm=draw(_nullable(st.integers(0, 86_400_000_000).map(
            lambda us: f"{us // 3_600_000_000:02d}:{us // 60_000_000 % 60:02d}:"
                       f"{us // 1_000_000 % 60:02d}.{us % 1_000_000:06d}"))),
        ts=draw(_nullable(_timestamp())),
        tz=draw(_nullable(_timestamp())),
        u=draw(_nullable(st.binary(min_size=16, max_size=16).map(lambda b: b.hex()))),
        # One spelling per span (days < 30, time < 24 h): min and max are determined.
        iv=draw(_nullable(st.tuples(st.integers(0, 30), st.integers(0, 29),
                                    st.integers(0, 86_399_999_999)).map(
            lambda p: f"{p[0]} mons {p[1]} days {p[2] / 1e6:.6f} seconds"))),
        nm=draw(_nullable(_TEXT)),
    )


@st.composite
def _table(draw: st.DrawFn) -> tuple[list[dict[str, object]], list[int]]:
    count = draw(st.integers(0, 25))
    rows = [draw(_row(i)) for i in range(count)]
    layout = draw(st.sampled_from(["random", "random", "one"]))
    if layout == "one":
        shard = draw(st.integers(0, 2))
        return rows, [shard] * count
    return rows, [draw(st.integers(0, 2)) for _ in range(count)]


def _generated_cases() -> list[Case]:
    cases = []
    for column in SORTABLE:
        cases += sort_cases(column)[::2]
    for column in NUMBERS:
        cases += number_cases(column)
    return cases + [c for c in other_cases() if not c.refused]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(table=_table(), binary=st.booleans())
def test_generated_tables(merge_port: int, table: tuple[list[dict[str, object]], list[int]],
                          binary: bool) -> None:
    rows, shard_of = table
    _run(merge_port, rows, shard_of, _generated_cases(), [[1 if binary else 0]])


# --- the engine's own edges ------------------------------------------------------------------


def _description(*columns: tuple[str, int, int]) -> bytes:
    body = struct.pack("!h", len(columns))
    for name, oid, fmt in columns:
        body += name.encode() + b"\x00" + struct.pack("!ihihih", 0, 0, oid, -1, -1, fmt)
    return body


def _row_message(*cells: bytes | None) -> bytes:
    body = struct.pack("!h", len(cells))
    for cell in cells:
        body += b"\xff\xff\xff\xff" if cell is None else struct.pack("!i", len(cell)) + cell
    return b"D" + struct.pack("!i", len(body) + 4) + body


def test_rows_out_of_the_merge_order_are_an_error_not_a_wrong_answer() -> None:
    # A shard sorting text in another collation sends 'b' before 'B': the merge notices.
    plan = plan_select("SELECT name FROM t ORDER BY name")
    merge = RowMerge(plan, _description(("name", 25, 0)))
    assert merge.text_order_is_bytes
    assert merge.output(_row_message(b"a")) is not None
    assert merge.output(_row_message(b"b")) is not None
    with pytest.raises(MergeError) as error:
        merge.output(_row_message(b"B"))
    assert error.value.sqlstate == "0A000" and 'COLLATE "C"' in error.value.message


def test_order_by_a_type_the_proxy_cannot_order_is_refused() -> None:
    plan = plan_select("SELECT doc FROM t ORDER BY doc")
    with pytest.raises(MergeError) as error:
        RowMerge(plan, _description(("doc", 3802, 0)))  # jsonb
    assert "jsonb" in error.value.message


def test_limit_reached_means_done() -> None:
    plan = plan_select("SELECT id FROM t ORDER BY id LIMIT 2 OFFSET 1")
    merge = RowMerge(plan, _description(("id", 23, 0)))
    sent = [merge.output(_row_message(str(i).encode())) for i in range(5)]
    assert sent[0] is None and sent[1] is not None and sent[2] is not None
    assert merge.done and sent[3] is None
    assert merge.command_complete() == b"C\x00\x00\x00\rSELECT 2\x00"


def test_sum_overflow_is_postgres_error() -> None:
    plan = plan_select("SELECT sum(x) FROM t")
    merge = RowMerge(plan, _description(("sum", 20, 0)))
    merge.accept(0, _row_message(b"9223372036854775807"))
    merge.accept(1, _row_message(b"1"))
    with pytest.raises(MergeError) as error:
        list(merge.results())
    assert error.value.sqlstate == "22003" and error.value.message == "bigint out of range"


def test_float_sum_overflow_is_postgres_error() -> None:
    plan = plan_select("SELECT sum(x) FROM t")
    merge = RowMerge(plan, _description(("sum", 701, 0)))
    merge.accept(0, _row_message(b"1e308"))
    with pytest.raises(MergeError) as error:
        merge.accept(1, _row_message(b"1e308"))
    assert error.value.sqlstate == "22003"


def test_client_row_description_drops_hidden_columns_and_types_averages() -> None:
    plan = plan_select("SELECT g, avg(x) AS mean FROM t GROUP BY g ORDER BY max(y)")
    # What a shard describes: g, sum(x) AS mean (bigint), count(x), max(y).
    shard = _description(("g", 23, 1), ("mean", 20, 1), ("__pgdog_hidden_0", 20, 0),
                         ("__pgdog_hidden_1", 1184, 0))
    client = client_row_description(plan, shard)
    assert client[:1] == b"T"
    assert [(f[0], f[3], f[4], f[5], f[6]) for f in parse_row_description(client)] == [
        (b"g", 23, -1, -1, 1), (b"mean", 1700, -1, -1, 1)]
    assert RowMerge(plan, shard).row_description == client
    # Nothing to change: the shard's message itself.
    plain = plan_select("SELECT g FROM t ORDER BY g")
    message = b"T" + struct.pack("!i", len(_description(("g", 23, 0))) + 4) + _description(("g", 23, 0))
    assert client_row_description(plain, message) is message


@pytest.mark.parametrize("sql, types, flagged", [
    ("SELECT a FROM t ORDER BY a", [25], True),
    ("SELECT a FROM t ORDER BY a COLLATE \"C\"", [25], False),
    ("SELECT a FROM t ORDER BY a", [23], False),
    ("SELECT a FROM t ORDER BY a", [19], False),  # name: always "C"
    ("SELECT max(a) FROM t", [1043], True),
    ("SELECT g FROM t GROUP BY g HAVING max(a) > 'm'", [23, 25], True),
    ("SELECT g, a, count(*) FROM t GROUP BY g, a HAVING count(*) > 1", [23, 25, 20], False),
])
def test_text_order_is_bytes(sql: str, types: list[int], flagged: bool) -> None:
    plan = plan_select(sql)
    columns = [(f"c{i}", oid, 0) for i, oid in enumerate(types)]
    assert RowMerge(plan, _description(*columns)).text_order_is_bytes is flagged


def test_another_collation_is_refused_where_the_proxy_sorts_alone() -> None:
    plan = plan_select("SELECT a, count(*) FROM t GROUP BY a ORDER BY a COLLATE \"de_DE\"")
    with pytest.raises(MergeError) as error:
        RowMerge(plan, _description(("a", 25, 0), ("count", 20, 0)))
    assert 'COLLATE "C"' in error.value.message
