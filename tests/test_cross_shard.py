"""SELECTs over several shards through the proxy return what one PostgreSQL holding every row
returns.

The oracle is PostgreSQL itself: a database (`oracledb`, on shard 0's cluster) holding all
the rows the three shards hold between them. Every query runs through the proxy and on the
oracle, and the answers must be the same: the columns (names and types), the rows (compared
by their Python repr, so numeric scales and timestamp microseconds count), and the command
tag. In the simple protocol, the extended protocol with unnamed statements, and with prepared
statements; in text and binary result formats. Each wrong answer pgDog's users reported
(pgdogdev/pgdog #638, #1172, #1135, #1616, #639) has its case.
"""

from __future__ import annotations

import datetime as dt
import random
import struct
import uuid
from collections.abc import Iterator
from decimal import Decimal

import pgwire
import psycopg
import pytest
import trio
from conftest import APP_DB, PROTOCOLS, users_toml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shards import PASSWORD, SHARDS, rss_growth, sharded_table, sharded_toml

from trio_pgdog.router.sharding.hashing import shard_of_int

ORACLE_DB = "oracledb"
TABLE = ("(id bigint, k bigint, g int, i int, n numeric, f float8, tx text, b bool, d date, "
         "ts timestamp, tz timestamptz, u uuid)")
COLUMNS = ("id", "k", "g", "i", "n", "f", "tx", "b", "d", "ts", "tz", "u")
# Keys that PostgreSQL's hash partitioning (and so the proxy) puts on each shard.
KEYS = [[k for k in range(300) if shard_of_int(k, SHARDS) == s] for s in range(SHARDS)]
# (protocol, binary results): psycopg's simple protocol has text results only.
MODES = [("simple", False), ("extended", False), ("extended", True), ("prepared", False),
         ("prepared", True)]
MODE_IDS = [f"{p}-{'binary' if b else 'text'}" for p, b in MODES]


@pytest.fixture(scope="module")
def tables(shard_clusters) -> Iterator[list[str]]:
    """The tables `t` (fixed rows), `gen` (hypothesis' rows) and `big` on every shard and in
    the oracle database; yields the connection strings: the three shards', then the
    oracle's."""
    first = shard_clusters[0]
    if first.sql(f"SELECT count(*) FROM pg_database WHERE datname = '{ORACLE_DB}'") == "0":
        first.add_database(ORACLE_DB, owner="app")
    ddl = "".join(f"DROP TABLE IF EXISTS {name}; CREATE TABLE {name} {TABLE}; "
                  f"ALTER TABLE {name} OWNER TO app; " for name in ("t", "gen", "big"))
    dsns = []
    for cluster in shard_clusters:
        cluster.sql(ddl, dbname=APP_DB)
        dsns.append(cluster.dsn("app", PASSWORD, APP_DB))
    first.sql(ddl, dbname=ORACLE_DB)
    dsns.append(first.dsn("app", PASSWORD, ORACLE_DB))
    load(dsns, "t", fixed_rows())
    yield dsns


def start_proxy(shard_clusters, proxy_factory, **general: object):
    extra = "".join(sharded_table(name, "k") for name in ("t", "gen", "big"))
    return proxy_factory(pgdog_text=lambda port: sharded_toml(shard_clusters, port, **general)
                         + extra, users=users_toml())


@pytest.fixture
def proxy(shard_clusters, proxy_factory, tables):
    return start_proxy(shard_clusters, proxy_factory)


@pytest.fixture
def oracle(tables) -> Iterator[psycopg.Connection]:
    with psycopg.connect(tables[-1], autocommit=True) as conn:
        yield conn


# --- rows ----------------------------------------------------------------------------------


def load(dsns: list[str], table: str, rows: list[dict[str, object]]) -> None:
    """Each row on the shard its key belongs to, and every row in the oracle."""
    for number, dsn in enumerate(dsns):
        oracle = number == len(dsns) - 1
        mine = [row for row in rows if oracle or shard_of_int(row["k"], SHARDS) == number]
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"TRUNCATE {table}")
            with conn.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(COLUMNS)}) FROM STDIN"
                                                ) as copy:
                for row in mine:
                    copy.write_row([row.get(name) for name in COLUMNS])


def fixed_rows(count: int = 90) -> list[dict[str, object]]:
    """Rows with NULLs and duplicates in every column, values of every merged type."""
    rng = random.Random(14)
    start = dt.datetime(2021, 3, 4, 5, 6, 7)

    def maybe(value: object) -> object:
        return None if rng.random() < 0.15 else value

    rows = []
    for number in range(count):
        moment = start + dt.timedelta(microseconds=rng.randrange(10**12))
        rows.append({
            "id": number, "k": rng.randrange(60), "g": maybe(rng.randrange(4)),
            "i": maybe(rng.randrange(-5, 20)),
            "n": maybe(Decimal(rng.randrange(-99999, 99999)).scaleb(-rng.randrange(4))),
            "f": maybe(rng.randrange(-40, 40) / 4),  # quarters: sums are exact in any order
            "tx": maybe(rng.choice(["a", "B", "b", "é", "", "zz", "a b", "ä", "Z"])),
            "b": maybe(rng.random() < 0.6), "d": maybe(moment.date()), "ts": maybe(moment),
            "tz": maybe(moment.replace(tzinfo=dt.UTC)),
            "u": maybe(uuid.UUID(int=rng.getrandbits(128))),
        })
    return rows


# --- answers -------------------------------------------------------------------------------


def answer(conn: psycopg.Connection, sql: str, params: tuple = (), binary: bool = False
           ) -> tuple[list[tuple[str, int]], list[tuple[str, ...]], str]:
    """(columns, rows as reprs, command tag)."""
    with conn.cursor(binary=binary) if binary else conn.cursor() as cur:
        cur.execute(sql, params or None)
        columns = [(c.name, c.type_code) for c in cur.description or ()]
        rows = [tuple(repr(v) for v in row) for row in cur.fetchall()]
        return columns, rows, cur.statusmessage or ""


def same_answer(conn: psycopg.Connection, oracle: psycopg.Connection, sql: str,
                params: tuple = (), *, binary: bool = False, check: str = "exact") -> None:
    """The proxy's answer is the oracle's: in the same order ("exact"), the same rows in
    any order ("bag"), or as many rows, each one of the oracle's, for a LIMIT without
    an order ("some")."""
    got = answer(conn, sql, params, binary)
    want = answer(oracle, sql, params, binary)
    where = f"{sql} {params}"
    assert got[0] == want[0], where
    assert got[2] == want[2], where
    if check == "exact":
        assert got[1] == want[1], where
    elif check == "bag":
        assert sorted(got[1]) == sorted(want[1]), where
    else:
        assert len(got[1]) == len(want[1]), where


def keys_on_two_shards(rows: list[dict[str, object]]) -> tuple[int, int]:
    present = {row["k"] for row in rows}
    first = next(k for k in KEYS[0] if k in present)
    second = next(k for k in KEYS[2] if k in present)
    return first, second


ORDERED = [
    "SELECT id, i FROM t ORDER BY i, id",
    "SELECT id, i FROM t ORDER BY i DESC, id DESC",
    "SELECT id, n FROM t ORDER BY n NULLS FIRST, id",
    "SELECT id, f FROM t ORDER BY f DESC NULLS LAST, id",
    'SELECT id, tx FROM t ORDER BY tx COLLATE "C", id',
    "SELECT id, b FROM t ORDER BY b, id",
    "SELECT id, d FROM t ORDER BY d DESC, id",
    "SELECT id, ts FROM t ORDER BY ts, id",
    "SELECT id, tz FROM t ORDER BY tz DESC NULLS LAST, id",
    "SELECT id, u FROM t ORDER BY u, id",
    "SELECT id AS x, i AS y FROM t ORDER BY y NULLS FIRST, x",  # by alias
    "SELECT id, g FROM t ORDER BY 2, 1 DESC",  # by position
    "SELECT * FROM t ORDER BY id",
    # pgdog #1135: ORDER BY a column that is not in the output
    "SELECT id FROM t ORDER BY ts DESC NULLS LAST, id",
    "SELECT id, i FROM t ORDER BY i, id LIMIT 7 OFFSET 5",
    "SELECT id FROM t ORDER BY id OFFSET 85",
    "SELECT id FROM t ORDER BY id LIMIT 0",
    "SELECT id, k FROM t ORDER BY id DESC LIMIT 4 FOR UPDATE",  # each shard locks its rows
    # aggregates over every row
    "SELECT count(*), count(i), count(n), sum(i), sum(n), min(i), max(i), min(n), max(n) FROM t",
    "SELECT sum(f), avg(f), min(f), max(f) FROM t",
    "SELECT avg(i), avg(n) FROM t",
    "SELECT bool_and(b), bool_or(b), min(d), max(d), min(tx), max(tx) FROM t",
    # pgdog #1616: min/max of timestamps keep their microseconds
    "SELECT min(ts), max(ts), min(tz), max(tz) FROM t",
    "SELECT count(*), sum(i), max(ts), avg(n) FROM t WHERE i > 1000",  # no rows at all
    # pgdog #638: GROUP BY with count
    "SELECT g, count(*) FROM t GROUP BY g ORDER BY g",
    # pgdog #1172: aggregates next to plain (grouped) columns
    "SELECT g, b, count(*), sum(n), max(ts), avg(i) FROM t GROUP BY g, b ORDER BY g, b",
    "SELECT count(*), g FROM t GROUP BY g ORDER BY count(*) DESC, g",
    "SELECT g, sum(i) FROM t GROUP BY g HAVING count(*) > 20 ORDER BY g",
    "SELECT g, max(i) FROM t GROUP BY g HAVING max(i) >= 15 OR g IS NULL ORDER BY g NULLS FIRST",
    "SELECT b, count(*) FROM t GROUP BY b ORDER BY b LIMIT 2",
    "SELECT DISTINCT g FROM t ORDER BY g",
    "SELECT DISTINCT tx FROM t ORDER BY tx LIMIT 3",
]
UNORDERED = [
    "SELECT g, count(*), sum(f) FROM t GROUP BY g",
    "SELECT DISTINCT g, b FROM t",
    "SELECT id, k FROM t",
]


@pytest.mark.parametrize(("protocol", "binary"), MODES, ids=MODE_IDS)
def test_merged_answers_are_the_oracles(proxy, oracle, protocol, binary):
    with proxy.connect(**PROTOCOLS[protocol]) as conn:
        for sql in ORDERED:
            same_answer(conn, oracle, sql, binary=binary)
        for sql in UNORDERED:
            same_answer(conn, oracle, sql, binary=binary, check="bag")
        same_answer(conn, oracle, "SELECT id FROM t LIMIT 5", binary=binary, check="some")
        same_answer(conn, oracle, "SELECT id FROM t ORDER BY id LIMIT %s OFFSET %s", (4, 10),
                    binary=binary)
        same_answer(conn, oracle, "SELECT g, count(*) FROM t WHERE i > %s GROUP BY g ORDER BY g",
                    (3,), binary=binary)
        # pgdog #639: an IN list over two shards is answered by both
        first, second = keys_on_two_shards(fixed_rows())
        same_answer(conn, oracle, "SELECT id, k FROM t WHERE k IN (%s, %s) ORDER BY id",
                    (first, second), binary=binary)
        same_answer(conn, oracle, "SELECT k, count(*) FROM t WHERE k IN (%s, %s) GROUP BY k "
                    "ORDER BY k", (first, second), binary=binary)
    # text merged in byte order: said once in the log, not once per query
    assert proxy.log.count("merging text from several shards in byte order") == 1


def test_several_merged_selects_in_one_pipeline(proxy, oracle):
    """psycopg's pipeline mode: several executions before one Sync, each merged on its own."""
    queries = ["SELECT g, count(*), avg(n) FROM t GROUP BY g ORDER BY g",
               "SELECT id, ts FROM t ORDER BY ts DESC, id LIMIT 4",
               "SELECT id FROM t WHERE id = 3",
               "SELECT DISTINCT b FROM t ORDER BY b"]
    want = [answer(oracle, sql) for sql in queries]
    with proxy.connect() as conn:
        with conn.pipeline():
            cursors = [conn.cursor() for _ in queries]
            for cur, sql in zip(cursors, queries, strict=True):
                cur.execute(sql)
        got = [([(c.name, c.type_code) for c in cur.description],
                [tuple(repr(v) for v in row) for row in cur.fetchall()], cur.statusmessage)
               for cur in cursors]
    assert got == want
    assert proxy.log.count("in byte order") <= 1


@pytest.mark.parametrize("protocol", ["simple", "prepared"])
def test_merged_answers_in_session_pooling(shard_clusters, proxy_factory, tables, oracle,
                                           protocol):
    proxy = start_proxy(shard_clusters, proxy_factory, pooler_mode="session")
    with proxy.connect(**PROTOCOLS[protocol]) as conn:
        for sql in ORDERED[::3]:
            same_answer(conn, oracle, sql, binary=protocol == "prepared")


def test_merged_answers_inside_a_transaction(proxy, oracle):
    with proxy.connect() as conn:
        conn.autocommit = False
        same_answer(conn, oracle, "SELECT g, count(*) FROM t GROUP BY g ORDER BY g")
        same_answer(conn, oracle, "SELECT id FROM t ORDER BY ts, id LIMIT 3")
        conn.rollback()


@pytest.mark.parametrize("protocol", ["simple", "extended", "prepared"])
def test_what_cannot_be_merged_is_refused_and_a_hint_runs_it(proxy, shard_clusters, protocol):
    refused = [
        "SELECT id, row_number() OVER (ORDER BY id) FROM t",  # a window function
        "SELECT count(DISTINCT g) FROM t",
        "SELECT sum(i) / count(*) FROM t",  # an aggregate inside an expression
    ]
    with proxy.connect(**PROTOCOLS[protocol]) as conn:
        for sql in refused:
            with pytest.raises(psycopg.errors.FeatureNotSupported):
                conn.execute(sql)
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (90,)
        hinted = conn.execute("/* pgdog_shard: 1 */ SELECT count(DISTINCT g) FROM t").fetchone()
        own = shard_clusters[1].sql("SELECT count(DISTINCT g) FROM t", dbname=APP_DB)
        assert hinted == (int(own),)
        conn.autocommit = False  # refused inside a transaction: it failed, as in PostgreSQL
        conn.execute("SELECT count(*) FROM t")
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            conn.execute(refused[1])
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT count(*) FROM t")
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (90,)


def test_a_shard_error_during_a_merge_names_the_shard(proxy):
    with proxy.connect() as conn:
        with pytest.raises(psycopg.errors.DivisionByZero, match="shard"):
            conn.execute("SELECT id, 1 / (i - 3) FROM t ORDER BY id").fetchall()
        with pytest.raises(psycopg.errors.DivisionByZero, match="shard"):
            conn.execute("SELECT g, sum(1 / (i - 3)) FROM t GROUP BY g ORDER BY g").fetchall()
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (90,)


def test_copy_of_a_query_whose_rows_need_merging_is_refused(proxy):
    with proxy.connect() as conn:
        ordered = "COPY (SELECT id FROM t ORDER BY id LIMIT 3) TO STDOUT"
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="COPY"), \
                conn.cursor().copy(ordered) as copy:
            list(copy.rows())
        with conn.cursor().copy("COPY (SELECT id FROM t) TO STDOUT") as copy:  # any order is right
            assert sorted(int(row[0]) for row in copy.rows()) == list(range(90))


def test_text_in_another_collation_is_an_error_not_a_wrong_order(proxy, shard_clusters):
    if shard_clusters[0].sql("SELECT count(*) FROM pg_collation WHERE collname = 'und-x-icu'",
                             dbname=APP_DB) == "0":
        pytest.skip("PostgreSQL built without ICU")
    with proxy.connect() as conn:
        with pytest.raises(psycopg.errors.FeatureNotSupported, match='COLLATE "C"'):
            conn.execute('SELECT tx FROM t WHERE tx IS NOT NULL ORDER BY tx COLLATE "und-x-icu"'
                         ).fetchall()
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (90,)


# --- the extended protocol as drivers other than libpq speak it ----------------------------

_H = struct.Struct("!h")


def _parse(name: bytes, sql: str) -> bytes:
    return pgwire.message(b"P", name + b"\x00" + sql.encode() + b"\x00" + _H.pack(0))


def _bind(name: bytes, params: list[bytes], binary: bool) -> bytes:
    body = b"\x00" + name + b"\x00" + _H.pack(0) + _H.pack(len(params))
    body += b"".join(struct.pack("!i", len(p)) + p for p in params)
    return pgwire.message(b"B", body + _H.pack(1) + _H.pack(int(binary)))


_EXECUTE = pgwire.message(b"E", b"\x00" + struct.pack("!i", 0))
_SYNC, _FLUSH = pgwire.message(b"S"), pgwire.message(b"H")


async def _answers(wire: pgwire.Wire, data: bytes, readies: int = 1) -> list[pgwire.Message]:
    await wire.send(data)
    got = []
    while readies:
        message = await wire.read_message()
        assert message is not None
        got.append(message)
        readies -= message.kind == b"Z"
    return got


def _rows(answers: list[pgwire.Message]) -> tuple[list[bytes], list[bytes]]:
    """(DataRow bodies, CommandComplete tags); no error allowed."""
    assert not [a for a in answers if a.kind == b"E"], answers
    return ([a.body for a in answers if a.kind == b"D"],
            [a.body for a in answers if a.kind == b"C"])


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_executions_without_a_describe_merge_too(proxy, shard_clusters, binary):
    """asyncpg and JDBC describe a statement once, then only Bind and Execute it: the proxy
    asks the shards for the description it needs to merge, and the client sees none."""
    sql = "SELECT g, count(*), avg(n), max(ts) FROM t WHERE i > $1 GROUP BY g ORDER BY g LIMIT 3"

    async def run(port: int, user: str, database: str) -> list[tuple[list[bytes], list[bytes]]]:
        async with await pgwire.Wire.connect(port) as wire:
            await wire.login(user, database, PASSWORD)
            await _answers(wire, _parse(b"s1", sql) + pgwire.message(b"D", b"Ss1\x00") + _SYNC)
            out = []
            for value in (b"0", b"5"):
                answers = await _answers(wire, _bind(b"s1", [value], binary) + _EXECUTE + _SYNC)
                assert [a.kind for a in answers if a.kind == b"T"] == []
                out.append(_rows(answers))
            # unnamed, and DISTINCT with a LIMIT, rewritten for the shards
            answers = await _answers(wire, _parse(b"", "SELECT DISTINCT g FROM t ORDER BY g "
                                                  "OFFSET 1") + _bind(b"", [], binary)
                                     + _EXECUTE + _SYNC)
            out.append(_rows(answers))
            return out

    async def both() -> None:
        merged = await run(proxy.port, "app", APP_DB)
        direct = await run(shard_clusters[0].port, "app", ORACLE_DB)
        assert merged == direct

    trio.run(both)


def test_a_merged_portal_executed_after_a_flush_is_refused(proxy):
    async def run() -> None:
        async with await pgwire.Wire.connect(proxy.port) as wire:
            await wire.login("app", APP_DB, PASSWORD)
            await wire.send(_parse(b"", "SELECT id FROM t ORDER BY id LIMIT 2")
                            + _bind(b"", [], False) + _FLUSH)
            assert (await wire.read_message()).kind == b"1"
            assert (await wire.read_message()).kind == b"2"
            answers = await _answers(wire, _EXECUTE + _SYNC)
            assert [a.sqlstate for a in answers if a.kind == b"E"] == ["0A000"]
            assert (await wire.query("SELECT count(*) FROM t")).rows == [[b"90"]]

    trio.run(run)


# --- generated rows ------------------------------------------------------------------------

GENERATED = [
    ("SELECT id, g, i FROM gen ORDER BY i NULLS FIRST, id", "exact"),
    ('SELECT tx, id FROM gen ORDER BY tx COLLATE "C" DESC, id LIMIT 4 OFFSET 1', "exact"),
    ("SELECT count(*), count(i), sum(i), min(i), max(i), avg(i) FROM gen", "exact"),
    ("SELECT g, count(*), sum(i), avg(i), max(tx) FROM gen GROUP BY g ORDER BY g", "exact"),
    ("SELECT g, count(i) FROM gen GROUP BY g HAVING sum(i) > 2 ORDER BY g DESC", "exact"),
    ("SELECT DISTINCT i FROM gen ORDER BY i LIMIT 5", "exact"),
    ("SELECT DISTINCT g, tx FROM gen", "bag"),
    ("SELECT id FROM gen", "bag"),
]


@st.composite
def generated_rows(draw: st.DrawFn) -> list[dict[str, object]]:
    """Rows with NULLs and duplicates, spread over every shard, some, or one."""
    shards = draw(st.sampled_from([(0, 1, 2), (0,), (2,), (1, 2)]))
    count = draw(st.integers(0, 25))
    rows = []
    for number in range(count):
        shard = draw(st.sampled_from(shards))
        rows.append({
            "id": number, "k": draw(st.sampled_from(KEYS[shard][:5])),
            "g": draw(st.none() | st.integers(0, 3)), "i": draw(st.none() | st.integers(-3, 3)),
            "tx": draw(st.none() | st.sampled_from(["", "a", "b", "B", "é"])),
        })
    return rows


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rows=generated_rows(), mode=st.sampled_from(MODES))
def test_generated_rows_merge_as_the_oracle_answers(proxy, oracle, tables, rows, mode):
    protocol, binary = mode
    load(tables, "gen", rows)
    with proxy.connect(**PROTOCOLS[protocol]) as conn:
        for sql, check in GENERATED:
            same_answer(conn, oracle, sql, binary=binary, check=check)


# --- a million rows ------------------------------------------------------------------------


def test_a_million_sorted_rows_merge_in_flat_memory(proxy, shard_clusters, tables):
    """ORDER BY over 1,000,000 rows on three shards: the k-way merge holds one row per shard,
    so the proxy's memory does not grow with the rows."""
    for shard, cluster in enumerate(shard_clusters):
        cluster.sql(f"TRUNCATE big; INSERT INTO big (id, k) SELECT x, x FROM "
                    f"generate_series({shard}, 999999, {SHARDS}) x", dbname=APP_DB)
    with proxy.connect() as conn:
        assert conn.execute("SELECT id FROM big ORDER BY id DESC LIMIT 3").fetchall() == \
            [(999999,), (999998,), (999997,)]
        with rss_growth(proxy.proc.pid) as growth, conn.cursor() as cur:
            expected = 0
            for (value,) in cur.stream("SELECT id FROM big ORDER BY id"):
                assert value == expected
                expected += 1
            assert expected == 1_000_000
    assert growth[0] < 40_000, f"proxy RSS grew by {growth[0]} KB during the merge"
