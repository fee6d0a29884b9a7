"""COPY through the proxy: FROM STDIN and TO STDOUT in text, CSV and binary, in both pool modes;
COPY aborted by the client (CopyFail) or rejected by the server; a large COPY TO STDOUT; and in
transaction mode, the server connection back in the pool right after each COPY.

psycopg (sync) as the client, real PostgreSQL as the server.
"""

from __future__ import annotations

import csv
import io
import threading
import time
import uuid

import psycopg
import pytest
from conftest import APP_DB

MODES = ["transaction", "session"]
ROWS = [
    (1, "plain", b"\x00\x01\xff"),
    (2, "tab\there, newline\nhere, back\\slash", b""),
    (3, 'comma, "quote"', b"\\x"),
    (4, None, None),
    (5, "ünïcødé ☃", bytes(range(256))),
]


@pytest.fixture
def table(pg):
    """A fresh table name; the table is dropped afterwards, directly on PostgreSQL."""
    name = f"copy_{uuid.uuid4().hex[:10]}"
    yield name
    pg.sql(f"DROP TABLE IF EXISTS {name}", dbname=APP_DB)


def _create(conn: psycopg.Connection, table: str) -> None:
    conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, t text, b bytea)")


def _text_line(row) -> str:
    def field(value):
        if value is None:
            return r"\N"
        if isinstance(value, bytes):
            value = "\\x" + value.hex()
        value = str(value)
        return (value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
                .replace("\r", "\\r"))
    return "\t".join(field(v) for v in row) + "\n"


def _csv_line(row) -> str:
    def field(value):
        if value is None:
            return ""
        if isinstance(value, bytes):
            value = "\\x" + value.hex()
        value = str(value)
        return '"' + value.replace('"', '""') + '"'
    return ",".join(field(v) for v in row) + "\n"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fmt", ["text", "csv", "binary"])
def test_copy_in_and_out_every_format(proxy_factory, table, mode, fmt):
    proxy = proxy_factory(pooler_mode=mode, default_pool_size=2)
    with proxy.connect() as conn:
        _create(conn, table)
        cur = conn.cursor()
        options = {"text": "", "csv": " (FORMAT csv)", "binary": " (FORMAT binary)"}[fmt]

        # FROM STDIN: text and CSV as the raw bytes a user would send, binary through psycopg.
        with cur.copy(f"COPY {table} FROM STDIN{options}") as copy:
            if fmt == "binary":
                copy.set_types(["int4", "text", "bytea"])
                for row in ROWS:
                    copy.write_row(row)
            else:
                line = _text_line if fmt == "text" else _csv_line
                for row in ROWS:
                    copy.write(line(row).encode())
        assert cur.rowcount == len(ROWS)
        stored = conn.execute(f"SELECT id, t, b FROM {table} ORDER BY id").fetchall()
        assert stored == ROWS

        # TO STDOUT: the raw bytes match what PostgreSQL produces, and parse back to the rows.
        raw = b""
        with cur.copy(f"COPY (SELECT * FROM {table} ORDER BY id) TO STDOUT{options}") as copy:
            for chunk in copy:
                raw += bytes(chunk)
        if fmt == "text":
            assert raw.decode() == "".join(_text_line(r) for r in ROWS)
        elif fmt == "csv":
            parsed = list(csv.reader(io.StringIO(raw.decode(), newline="")))
            assert parsed == [["" if v is None else "\\x" + v.hex() if isinstance(v, bytes) else str(v)
                               for v in row] for row in ROWS]
            assert raw.split(b"\n")[0] == b"1,plain,\\x0001ff"
            assert b'4,,\n' in raw  # NULLs unquoted, as PostgreSQL writes them
        else:
            assert raw.startswith(b"PGCOPY\n\xff\r\n\x00") and raw.endswith(b"\xff\xff")
        if fmt == "csv":  # psycopg parses text and binary COPY only
            options = ""
        with cur.copy(f"COPY (SELECT * FROM {table} ORDER BY id) TO STDOUT{options}") as copy:
            copy.set_types(["int4", "text", "bytea"])
            back = [(i, t, None if b is None else bytes(b)) for i, t, b in copy.rows()]
        assert back == ROWS


@pytest.mark.parametrize("mode", MODES)
def test_copy_aborted_by_the_client_leaves_nothing(proxy_factory, table, mode):
    proxy = proxy_factory(pooler_mode=mode, default_pool_size=2)
    with proxy.connect() as conn:
        _create(conn, table)
        cur = conn.cursor()
        with (
            pytest.raises(RuntimeError, match="changed my mind"),
            cur.copy(f"COPY {table} (id, t) FROM STDIN") as copy,
        ):
            for i in range(1000):
                copy.write_row((i, f"row {i}"))
            raise RuntimeError("changed my mind")
        # psycopg sent CopyFail; the server aborted the COPY; nothing was stored.
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
        # The connection is usable, COPY included.
        with cur.copy(f"COPY {table} (id, t) FROM STDIN") as copy:
            copy.write_row((1, "kept"))
        assert conn.execute(f"SELECT t FROM {table}").fetchall() == [("kept",)]


@pytest.mark.parametrize("mode", MODES)
def test_copy_rejected_by_the_server_gives_its_error(proxy_factory, table, mode):
    proxy = proxy_factory(pooler_mode=mode, default_pool_size=2)
    with proxy.connect() as conn:
        _create(conn, table)
        cur = conn.cursor()
        with (
            pytest.raises(psycopg.errors.InvalidTextRepresentation) as info,
            cur.copy(f"COPY {table} (id, t) FROM STDIN") as copy,
        ):
            copy.write(b"1\tgood\n")
            copy.write(b"two\tbad\n")
            copy.write(b"3\tnever read\n")
        assert info.value.sqlstate == "22P02"
        assert 'invalid input syntax for type integer: "two"' in str(info.value)
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
        # Inside a transaction the error aborts it, as PostgreSQL does; ROLLBACK recovers.
        conn.execute("BEGIN")
        with (
            pytest.raises(psycopg.errors.InvalidTextRepresentation),
            cur.copy(f"COPY {table} (id) FROM STDIN") as copy,
        ):
            copy.write(b"x\n")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        conn.execute("ROLLBACK")
        with cur.copy(f"COPY {table} (id, t) FROM STDIN") as copy:
            copy.write(b"7\tfine\n")
        assert conn.execute(f"SELECT id, t FROM {table}").fetchall() == [(7, "fine")]


@pytest.mark.parametrize("mode", MODES)
def test_large_copy_arrives_complete(proxy_factory, table, mode):
    proxy = proxy_factory(pooler_mode=mode)
    n = 200_000
    with proxy.connect() as conn:
        cur = conn.cursor()
        count, total, last = 0, 0, None
        with cur.copy(f"COPY (SELECT i, md5(i::text) FROM generate_series(1, {n}) i) TO STDOUT") as copy:
            for row in copy.rows():
                count += 1
                total += int(row[0])
                last = row
        assert count == n and total == n * (n + 1) // 2
        assert last == (str(n), conn.execute("select md5(%s::text)", (n,)).fetchone()[0])
        # And a large COPY FROM STDIN, read back.
        conn.execute(f"CREATE TABLE {table} (i int, s text)")
        with cur.copy(f"COPY {table} FROM STDIN") as copy:
            for i in range(n):
                copy.write(f"{i}\t{'x' * 20}\n".encode())
        assert cur.rowcount == n
        assert conn.execute(f"select count(*), sum(i) from {table}").fetchone() == (n, n * (n - 1) // 2)


def test_server_connection_is_back_in_the_pool_after_each_copy(proxy_factory, table):
    proxy = proxy_factory(default_pool_size=1, checkout_timeout=2000)
    with proxy.connect() as setup:
        _create(setup, table)
    copier, other = proxy.connect(), proxy.connect()
    try:
        cur = copier.cursor()

        def other_client_runs_now() -> None:
            started = time.monotonic()
            assert other.execute("select 'other'").fetchone() == ("other",)
            assert time.monotonic() - started < 1, "the other client waited for the pool"

        with cur.copy(f"COPY {table} (id, t) FROM STDIN") as copy:
            copy.write_row((1, "a"))
        other_client_runs_now()
        with cur.copy(f"COPY {table} TO STDOUT") as copy:
            assert b"".join(bytes(c) for c in copy) == b"1\ta\t\\N\n"
        other_client_runs_now()
        with (
            pytest.raises(RuntimeError),
            cur.copy(f"COPY {table} (id) FROM STDIN") as copy,
        ):
            raise RuntimeError("abort")
        other_client_runs_now()
        with (
            pytest.raises(psycopg.errors.InvalidTextRepresentation),
            cur.copy(f"COPY {table} (id) FROM STDIN") as copy,
        ):
            copy.write(b"bad\n")
        other_client_runs_now()

        # While a COPY is in progress the connection is the copier's: the other client waits
        # until the COPY ends, then runs.
        result: list[object] = []
        with cur.copy(f"COPY {table} (id) FROM STDIN") as copy:
            copy.write(b"2\n")
            thread = threading.Thread(
                target=lambda: result.append(other.execute("select count(*) from " + table).fetchone()))
            thread.start()
            time.sleep(0.3)
            assert not result, "another client ran on the connection in the middle of a COPY"
            copy.write(b"3\n")
        thread.join(5)
        assert result == [(3,)]
    finally:
        copier.close()
        other.close()
