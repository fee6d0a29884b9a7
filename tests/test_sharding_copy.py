"""COPY FROM STDIN split across shards (trio_pgdog/router/sharding/copy.py).

Each row must reach the shard its key hashes to, byte for byte as the client sent it, whatever
the format (text, CSV, binary), the row endings, the escapes and quotes, and wherever the client
cut the stream into CopyData messages. Three kinds of checks:

- generated data whose rows and keys the test knows, cut at random points (hypothesis): each
  shard gets exactly the rows of its keys, in order, the header and binary trailer go to all;
- the fast paths against the exact scanner (PostgreSQL's line reader transcribed), on valid and
  on garbage input: same rows, same errors;
- a real PostgreSQL as the oracle: the same data COPYed into a table `PARTITION BY HASH (k)` with
  MODULUS n, and each shard's output COPYed into a plain table, must give each partition exactly
  its shard's rows; and where we refuse data, PostgreSQL refuses it with the same SQLSTATE and
  message.
"""

from __future__ import annotations

import itertools
import struct
import tracemalloc
import uuid

import psycopg
import pytest
from conftest import APP_DB, PG_USERS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_pgdog.router.sharding.copy import BINARY_SIGNATURE, CopySplitError, CopySplitter
from trio_pgdog.router.sharding.copy_statement import CopyStatement, parse_copy
from trio_pgdog.router.sharding.hashing import shard_of_int, shard_of_text, shard_of_uuid

SHARDS = 3
BIN_HEADER = BINARY_SIGNATURE + b"\0\0\0\0" + b"\0\0\0\0"
BIN_TRAILER = b"\xff\xff"


def split(data: bytes, cuts: list[int] | None = None, *, fast: bool = True, **options) -> dict[int, bytes]:
    """Feed `data` cut at `cuts` (sorted positions) and return each shard's bytes."""
    options.setdefault("shards", SHARDS)
    options.setdefault("key_index", 0)
    options.setdefault("data_type", "bigint")
    splitter = CopySplitter(**options)
    splitter._fast = fast
    bounds = [0, *(cuts or []), len(data)]
    out: dict[int, list[bytes]] = {}
    for a, b in itertools.pairwise(bounds):
        for shard, parts in splitter.feed(data[a:b]).items():
            out.setdefault(shard, []).extend(parts)
    for shard, parts in splitter.finish().items():
        out.setdefault(shard, []).extend(parts)
    return {shard: b"".join(parts) for shard, parts in sorted(out.items())}


def outcome(data: bytes, cuts: list[int] | None = None, **options) -> object:
    """split()'s answer, or the error it raised as (SQLSTATE, message)."""
    try:
        return split(data, cuts, **options)
    except CopySplitError as exc:
        return (exc.sqlstate, exc.message)


def error_of(data: bytes, **options) -> CopySplitError:
    with pytest.raises(CopySplitError) as info:
        split(data, **options)
    return info.value


def shard_of(key: object, data_type: str = "bigint", shards: int = SHARDS) -> int:
    if key is None:
        return 0
    if data_type == "uuid":
        return shard_of_uuid(key, shards)
    return shard_of_int(key, shards) if data_type == "bigint" else shard_of_text(key, shards)


def expected(rows: list[tuple[object, bytes]], data_type: str, head: bytes = b"", tail: bytes = b"",
             shards: int = SHARDS) -> dict[int, bytes]:
    out: dict[int, bytes] = {s: head for s in range(shards)} if head or tail else {}
    for key, raw in rows:
        s = shard_of(key, data_type, shards)
        out[s] = out.get(s, head) + raw
    return {s: data + tail for s, data in sorted(out.items())}


# -- text format --------------------------------------------------------------------------------


def test_text_rows_go_to_their_keys_shard_unchanged():
    rows = [(k, b"%d\trow %d\n" % (k, k)) for k in (1, 2, 3, -7, 0, 10**12, -(2**63), 2**63 - 1)]
    data = b"".join(raw for _, raw in rows)
    assert split(data) == expected(rows, "bigint")
    assert sum(len(v) for v in split(data).values()) == len(data)


def test_text_key_in_a_later_column_and_null_keys_in_shard_0():
    rows = [(5, b"a\t5\n"), (None, b"b\t\\N\n"), (6, b"c\t 6 \n"), (None, b"d\t\\N\n")]
    assert split(b"".join(r for _, r in rows), key_index=1) == expected(rows, "bigint")


@pytest.mark.parametrize(("raw", "value"), [
    (rb"tab\there", "tab\there"),
    (rb"back\\slash", "back\\slash"),
    (rb"new\nline", "new\nline"),
    (rb"\x41\101\7\08", "AA\x07\x008"),  # hex, octal (1-3 digits)
    (rb"\xZ\q\:x", "xZq:x"),  # \x without hex digits is x, any other byte stands for itself
    (b"esc\\\ttab", "esc\ttab"),  # a backslash before a real tab: data, not a delimiter
    (b"esc\\\nline", "esc\nline"),  # a backslash before a real newline: data, not a row end
    ("ünï ☃ 日本".encode(), "ünï ☃ 日本"),
    (rb"\\N", "\\N"),  # an escaped backslash then N: the text \N, not NULL
    (b"", ""),
])
def test_text_key_is_unescaped_before_hashing(raw, value):
    line = raw + b"\tother\n"
    assert split(line, data_type="varchar") == {shard_of_text(value, SHARDS): line}
    assert split(line, data_type="varchar", fast=False) == {shard_of_text(value, SHARDS): line}


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_text_row_endings_crlf_and_cr(eol):
    rows = [(k, b"%d\tx\\ry%s" % (k, eol)) for k in range(20)]
    data = b"".join(r for _, r in rows)
    assert split(data) == expected(rows, "bigint")
    assert split(data, cuts=list(range(1, len(data)))) == expected(rows, "bigint")


@pytest.mark.parametrize(("data", "message"), [
    (b"1\tx\r\n2\tx\n", "literal newline found in data"),
    (b"1\tx\n2\tx\r\n", "literal carriage return found in data"),
    (b"1\tx\n2\tx\ry\n", "literal carriage return found in data"),
    (b"1\tx\r2\tx\n", "literal newline found in data"),
    (b"1\tx\r\n2\tx\ry\r\n", "literal carriage return found in data"),
    (b"1\tx\n\\.x\n", "end-of-copy marker corrupt"),
    (b"1\tx\n\\.", "end-of-copy marker corrupt"),
    (b"1\tx\n\\.\r\n", "end-of-copy marker does not match previous newline style"),
    (b"1\tx\r\n\\.\n", "end-of-copy marker does not match previous newline style"),
])
def test_text_bad_row_endings_are_refused_like_postgresql(data, message):
    for fast in (True, False):
        err = error_of(data, fast=fast)
        assert (err.sqlstate, err.message) == ("22P04", message)
        assert err.line == 2


def test_text_end_marker_ends_the_data_and_what_follows_is_ignored():
    data = b"1\ta\n2\tb\n\\.\n3\tc\nnot even a row\n"
    assert split(data) == expected([(1, b"1\ta\n"), (2, b"2\tb\n")], "bigint")
    # \. inside a line ends the data there: the line before it is the last row
    assert split(b"1\ta\n7\\.\n8\tb\n") == expected([(1, b"1\ta\n"), (7, b"7\n")], "bigint")
    # an escaped backslash then a dot is data
    line = b"x\\\\.y\t1\n"
    assert split(line, data_type="varchar") == {shard_of_text("x\\.y", SHARDS): line}


def test_text_unterminated_last_line_is_a_row_sent_as_it_came():
    assert split(b"1\ta\n2\tb") == expected([(1, b"1\ta\n"), (2, b"2\tb")], "bigint")
    # a backslash at the very end of the data escapes nothing: the shard sees the same bytes
    assert split(b"x\\", data_type="varchar") == {shard_of_text("x", SHARDS): b"x\\"}


def test_text_header_goes_to_every_shard():
    data = b"k\tv\n1\ta\n2\tb\n"
    out = split(data, header=True)
    assert out == expected([(1, b"1\ta\n"), (2, b"2\tb\n")], "bigint", head=b"k\tv\n")
    assert set(out) == set(range(SHARDS))


def test_custom_delimiter_and_null_string():
    data = b"7|a\nNULL|b\n8|c\n"
    rows = [(7, b"7|a\n"), (None, b"NULL|b\n"), (8, b"8|c\n")]
    assert split(data, delimiter="|", null="NULL") == expected(rows, "bigint")


# -- CSV ----------------------------------------------------------------------------------------


def test_csv_quotes_newlines_and_delimiters_in_fields():
    rows = [
        ("a,b", b'"a,b",1\n'),
        ('say "hi"', b'"say ""hi""",2\n'),
        ("multi\nline\r\nfield", b'"multi\nline\r\nfield",3\n'),
        ("half quoted", b'half" quoted",4\n'),
        ("", b'"",5\n'),  # quoted empty: the empty string, not NULL
        (None, b",6\n"),  # unquoted empty: NULL
        ("\\.", b'"\\.",7\n'),
        ("ünï", "ünï,8\n".encode()),
        ("x", b"x,\"9\n\\.\n\"\n"),  # \. inside quotes is data
    ]
    data = b"".join(r for _, r in rows)
    assert split(data, format="csv", data_type="varchar") == expected(rows, "varchar")
    assert split(data, format="csv", data_type="varchar", fast=False) == expected(rows, "varchar")


def test_csv_header_goes_to_every_shard_and_end_marker_alone_on_a_line():
    data = b'k,v\n1,a\n2,"b\n\\.\nc"\n\\.\n3,ignored\n'
    out = split(data, format="csv", header=True)
    assert out == expected([(1, b"1,a\n"), (2, b'2,"b\n\\.\nc"\n')], "bigint", head=b"k,v\n")
    # \. followed by more than a row ending is data in CSV (PostgreSQL then finds 1 column)
    assert split(b"\\.x,1\n", format="csv", key_index=1, data_type="varchar") == \
        {shard_of_text("1", SHARDS): b"\\.x,1\n"}


def test_csv_crlf_data_with_crlf_inside_quotes():
    data = b'1,"a\r\nb"\r\n2,x\r\n3,"\r"\r\n'
    rows = [(1, b'1,"a\r\nb"\r\n'), (2, b"2,x\r\n"), (3, b'3,"\r"\r\n')]
    assert split(data, format="csv") == expected(rows, "bigint")
    err = error_of(b"1,a\r\n2,b\rc\r\n", format="csv")
    assert (err.sqlstate, err.message) == ("22P04", "unquoted carriage return found in data")


def test_csv_force_not_null_and_force_null_on_the_key():
    data = b',1\n"",2\n'
    # FORCE_NOT_NULL: the unquoted empty key is the empty string
    assert split(data, format="csv", data_type="varchar", force_not_null=True) == \
        {shard_of_text("", SHARDS): data}
    # FORCE_NULL: the quoted empty key is NULL too
    assert split(data, format="csv", data_type="varchar", force_null=True) == {0: data}
    # neither: only the unquoted one is NULL
    assert split(data, format="csv", data_type="varchar") == expected(
        [(None, b",1\n"), ("", b'"",2\n')], "varchar")


def test_csv_escape_other_than_quote():
    rows = [('a"b', b'"a\\"b",1\n'), ("c\\d", b'"c\\\\d",2\n'), ("e\\", b'"e\\",3\n')]
    data = b"".join(r for _, r in rows[:2])
    assert split(data, format="csv", escape="\\", data_type="varchar") == expected(rows[:2], "varchar")
    # without ESCAPE, a backslash is plain data
    assert split(rows[2][1], format="csv", data_type="varchar") == expected(rows[2:], "varchar")


def test_csv_unterminated_quote_is_refused():
    err = error_of(b'"abc,1\n', format="csv", data_type="varchar")
    assert (err.sqlstate, err.message) == ("22P04", "unterminated CSV quoted field")


# -- keys PostgreSQL would refuse ----------------------------------------------------------------


@pytest.mark.parametrize(("data_type", "key", "sqlstate", "message"), [
    ("bigint", b"abc", "22P02", 'invalid input syntax for type bigint: "abc"'),
    ("bigint", b"", "22P02", 'invalid input syntax for type bigint: ""'),
    ("bigint", b"1.5", "22P02", 'invalid input syntax for type bigint: "1.5"'),
    ("bigint", b"9223372036854775808", "22003",
     'value "9223372036854775808" is out of range for type bigint'),
    ("uuid", b"not-a-uuid", "22P02", 'invalid input syntax for type uuid: "not-a-uuid"'),
    ("uuid", b" a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "22P02",
     'invalid input syntax for type uuid: " a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"'),
])
def test_bad_key_is_refused_with_postgresqls_error_and_line(data_type, key, sqlstate, message):
    data = b"1\tok\n" if data_type == "bigint" else b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\tok\n"
    for fast in (True, False):
        err = error_of(data + key + b"\tx\n", data_type=data_type, table="t", key_column="k", fast=fast)
        assert (err.sqlstate, err.message, err.line) == (sqlstate, message, 2)
        assert err.context.startswith("COPY t, line 2, column k")


def test_integer_and_uuid_spellings_postgresql_accepts():
    for raw, value in [(b" +42 ", 42), (b"\t-7\n", -7), (b"0x1F", 31), (b"1_000", 1000), (b"0o17", 15),
                       (b"0b101", 5)]:
        line = b'"' + raw + b'",x\n'
        assert split(line, format="csv") == {shard_of_int(value, SHARDS): line}
    canonical = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    for spelling in ("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
                     "a0eebc999c0b4ef8bb6d6bb9bd380a11", "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11"):
        line = spelling.encode() + b"\n"
        assert split(line, data_type="uuid") == {shard_of_uuid(canonical, SHARDS): line}


def test_missing_key_field_is_refused():
    err = error_of(b"1\n", key_index=1, key_column="k")
    assert (err.sqlstate, err.message) == ("22P04", 'missing data for column "k"')


def test_on_error_ignore_sends_a_bad_key_to_shard_0_to_be_skipped_there():
    assert split(b"abc\tx\n", on_error="ignore") == {0: b"abc\tx\n"}


def test_a_failed_splitter_stays_failed():
    splitter = CopySplitter(shards=2, key_index=0, data_type="bigint")
    with pytest.raises(CopySplitError):
        splitter.feed(b"abc\n")
    with pytest.raises(CopySplitError):
        splitter.feed(b"1\n")
    with pytest.raises(CopySplitError):
        splitter.finish()


# -- binary -------------------------------------------------------------------------------------


def bsplit(data: bytes, cuts: list[int] | None = None, **options) -> dict[int, bytes]:
    return split(data, cuts, format="binary", **options)


def bin_field(value: bytes | None) -> bytes:
    return b"\xff\xff\xff\xff" if value is None else struct.pack(">i", len(value)) + value


def bin_row(*fields: bytes | None) -> bytes:
    return struct.pack(">h", len(fields)) + b"".join(bin_field(f) for f in fields)


def test_binary_header_and_trailer_go_to_every_shard():
    rows = [(k, bin_row(struct.pack(">q", k), b"x" * k)) for k in range(10)]
    rows.append((None, bin_row(None, b"null key")))
    data = BIN_HEADER + b"".join(r for _, r in rows) + BIN_TRAILER
    want = expected(rows, "bigint", head=BIN_HEADER, tail=BIN_TRAILER)
    assert set(want) == set(range(SHARDS))
    assert bsplit(data) == want
    assert bsplit(data, cuts=list(range(1, len(data)))) == want


def test_binary_header_extension_and_integer_widths():
    header = BINARY_SIGNATURE + b"\0\0\0\0" + b"\0\0\0\3ext"
    rows = [(5, bin_row(struct.pack(">h", 5))), (-6, bin_row(struct.pack(">i", -6))),
            (2**40, bin_row(struct.pack(">q", 2**40)))]
    data = header + b"".join(r for _, r in rows) + BIN_TRAILER
    assert bsplit(data, cuts=[5, 20]) == expected(rows, "bigint", head=header, tail=BIN_TRAILER)


def test_binary_text_and_uuid_keys():
    u = uuid.uuid4()
    rows = [(str(u), bin_row(b"x", u.bytes))]
    data = BIN_HEADER + rows[0][1] + BIN_TRAILER
    assert bsplit(data, key_index=1, data_type="uuid") == expected(rows, "uuid", BIN_HEADER, BIN_TRAILER)
    text_row = bin_row("ünï".encode())
    assert bsplit(BIN_HEADER + text_row, data_type="varchar") == expected(
        [("ünï", text_row)], "varchar", BIN_HEADER)


@pytest.mark.parametrize(("data", "message"), [
    (b"", "COPY file signature not recognized"),
    (b"PGCOPY\n\xff\r\n\x01", "COPY file signature not recognized"),
    (BIN_HEADER[:15], "invalid COPY file header (missing length)"),
    (BINARY_SIGNATURE + b"\0\1\0\0" + b"\0\0\0\0", "invalid COPY file header (WITH OIDS)"),
    (BIN_HEADER + bin_row(struct.pack(">q", 1))[:6], "unexpected EOF in COPY data"),
    (BIN_HEADER + BIN_TRAILER + b"x", "received copy data after EOF marker"),
    (BIN_HEADER + bin_row(b"\0\0\0\0\0\0\0\1", b"x"), "row field count is 2, expected 1"),
    (BIN_HEADER + b"\0\1\xff\xff\xff\xfe", "invalid field size"),
])
def test_binary_errors_like_postgresql(data, message):
    err = error_of(data, column_count=1, format="binary")
    assert (err.sqlstate, err.message) == ("22P04", message)


def test_binary_key_of_the_wrong_size_is_refused():
    err = error_of(BIN_HEADER + bin_row(b"\0\0\0"), format="binary")
    assert (err.sqlstate, err.message) == ("22P03", "incorrect binary data format")


def test_binary_without_trailer_and_with_one_stray_byte_is_accepted_as_postgresql_does():
    row = bin_row(struct.pack(">q", 1))
    want = expected([(1, row)], "bigint", head=BIN_HEADER)
    assert bsplit(BIN_HEADER + row) == want
    assert bsplit(BIN_HEADER + row + b"\0") == want


# -- any cut, fast or exact: the same answer ----------------------------------------------------

TRICKY = {
    "text": (b"k\tv\n1\ta\\tb\n2\t\\N\n\\N\tnull key\n3\tback\\\\slash\\\n newline\n"
             + "4\tünï\n".encode() + b"5\t\\x41\\101\n6\tlast\n\\.\ngarbage after the end"),
    "csv": (b'k,v\n1,"a,b"\n2,"x""y"\n3,"multi\nline"\n,null key\n4,"\\."\n\\.x,9\n'
            b'"5","\r\n"\n6,last'),
    "binary": (BIN_HEADER + bin_row(struct.pack(">q", 1), b"a") + bin_row(None, b"n")
               + bin_row(struct.pack(">i", 2), None) + BIN_TRAILER),
}
TRICKY_OPTIONS = {"text": {"header": True}, "csv": {"header": True, "key_index": 1, "data_type": "varchar"},
                  "binary": {}}


@pytest.mark.parametrize("fmt", sorted(TRICKY))
def test_every_cut_position_gives_the_same_rows(fmt):
    data, options = TRICKY[fmt], {**TRICKY_OPTIONS[fmt], "format": fmt}
    whole = split(data, **options)
    assert len(whole) == SHARDS
    for cut in range(1, len(data)):
        assert split(data, [cut], **options) == whole, cut
    assert split(data, list(range(1, len(data))), fast=False, **options) == whole


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TEXTS = st.text(st.sampled_from(["a", "b", " ", "\t", "\n", "\r", "\\", ".", ",", '"', "N", "é", "☃"]),
                max_size=8)


@st.composite
def text_rows(draw, fmt: str, data_type: str):
    """Rows written as PostgreSQL (or a client) might write them, with the key each row has."""
    eol = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    keys = st.none() | (st.integers(-(2**63), 2**63 - 1) if data_type == "bigint" else TEXTS)
    rows = []
    for key, other in draw(st.lists(st.tuples(keys, TEXTS | st.none()), max_size=12)):
        if fmt == "text":
            fields = [_text_escape(draw, v, eol) for v in (key, other)]
            raw = b"\t".join(fields)
        else:
            fields = [_csv_quote(draw, v, eol) for v in (key, other)]
            raw = b",".join(fields)
        rows.append((key, raw + eol))
    open_end = bool(rows) and draw(st.booleans())
    if open_end:
        key, raw = rows[-1]
        rows[-1] = (key, raw[: -len(eol)])  # the last row without its row ending
    return eol, rows, open_end


def _text_escape(draw, value, eol: bytes) -> bytes:
    if value is None:
        return b"\\N"
    if isinstance(value, int):
        return str(value).encode()
    out = []
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif ch == "\t":
            out.append(draw(st.sampled_from(["\\t", "\\\t", "\\x09", "\\011"])))
        elif ch == "\n":
            out.append(draw(st.sampled_from(["\\n", "\\\n"] if eol == b"\n" else ["\\n", "\\012"])))
        elif ch == "\r":
            out.append(draw(st.sampled_from(["\\r", "\\\r"] if eol == b"\r" else ["\\r", "\\x0d"])))
        else:
            out.append(ch)
    return "".join(out).encode()


def _csv_quote(draw, value, eol: bytes) -> bytes:
    if value is None:
        return b""
    text = str(value)
    needs = text == "" or any(c in text for c in ',"\r\n') or text.startswith("\\.")
    if needs or draw(st.booleans()):
        return b'"' + text.replace('"', '""').encode() + b'"'
    return text.encode()


def _cuts(draw, size: int) -> list[int]:
    return sorted(set(draw(st.lists(st.integers(0, max(size, 0)), max_size=6))))


@pytest.mark.parametrize("data_type", ["bigint", "varchar"])
@pytest.mark.parametrize("fmt", ["text", "csv"])
@SETTINGS
@given(data=st.data())
def test_generated_rows_reach_their_shards_at_any_cuts(fmt, data_type, data):
    eol, rows, open_end = data.draw(text_rows(fmt, data_type))
    header = data.draw(st.booleans())
    head = (b"k\tv" if fmt == "text" else b"k,v") + eol if header else b""
    stream = head + b"".join(raw for _, raw in rows)
    if not open_end and data.draw(st.booleans()):
        stream += b"\\." + eol + b"ignored \\ garbage\n"
    options = {"format": fmt, "data_type": data_type, "header": header}
    want = expected(rows, data_type, head=head)
    cuts = _cuts(data.draw, len(stream))
    assert split(stream, cuts, **options) == want
    assert split(stream, cuts, fast=False, **options) == want


@pytest.mark.parametrize("fmt", ["text", "csv"])
@SETTINGS
@given(data=st.data())
def test_any_bytes_give_the_same_answer_at_any_cuts_fast_or_exact(fmt, data):
    """Garbage included: the same rows or the same error, wherever the stream is cut."""
    alphabet = [b"1", b"2", b"x", b"\t", b",", b"\n", b"\r", b"\\", b".", b'"', b"N", b"\xc3\xa9"]
    stream = b"".join(data.draw(st.lists(st.sampled_from(alphabet), max_size=40)))
    options = {"format": fmt, "data_type": data.draw(st.sampled_from(["bigint", "varchar"])),
               "key_index": data.draw(st.integers(0, 1)), "header": data.draw(st.booleans()),
               "shards": 2}
    if fmt == "csv" and data.draw(st.booleans()):
        options["escape"] = "\\"
    whole = outcome(stream, **options)
    assert outcome(stream, _cuts(data.draw, len(stream)), **options) == whole
    assert outcome(stream, _cuts(data.draw, len(stream)), fast=False, **options) == whole


@SETTINGS
@given(data=st.data())
def test_generated_binary_rows_reach_their_shards_at_any_cuts(data):
    width = data.draw(st.sampled_from([2, 4, 8]))
    bound = 1 << (8 * width - 1)
    keys = data.draw(st.lists(st.none() | st.integers(-bound, bound - 1), max_size=10))
    rows = []
    for key in keys:
        raw_key = None if key is None else key.to_bytes(width, "big", signed=True)
        rows.append((key, bin_row(data.draw(st.none() | st.binary(max_size=5)), raw_key)))
    trailer = BIN_TRAILER if data.draw(st.booleans()) else b""
    stream = BIN_HEADER + b"".join(raw for _, raw in rows) + trailer
    want = expected(rows, "bigint", head=BIN_HEADER, tail=trailer)
    assert split(stream, _cuts(data.draw, len(stream)), format="binary", key_index=1) == want


# -- memory and the COPY statement --------------------------------------------------------------


def test_a_million_rows_in_64k_chunks_in_flat_memory():
    chunk, chunks, row = bytearray(), [], 0
    while row < 1_000_000:
        chunk += b"%d\tsome text for row %d\t%d\n" % (row * 7919, row, row % 100)
        row += 1
        if len(chunk) >= 65536:
            chunks.append(bytes(chunk[:65536]))
            del chunk[:65536]
    chunks.append(bytes(chunk))
    total = sum(map(len, chunks))
    splitter = CopySplitter(shards=4, key_index=0, data_type="bigint")
    sent = rows_sent = 0
    tracemalloc.start()
    try:
        for piece in chunks:
            for parts in splitter.feed(piece).values():
                sent += len(parts[0])
                rows_sent += parts[0].count(b"\n")
        for parts in splitter.finish().values():
            sent += len(parts[0])
            rows_sent += parts[0].count(b"\n")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (sent, rows_sent) == (total, 1_000_000)
    assert peak < 2 * 1024 * 1024, f"peak {peak} bytes"


def test_parse_copy_reads_the_statement():
    stmt = parse_copy("COPY public.t (a, \"B\") FROM STDIN WITH (FORMAT csv, HEADER match, "
                      "DELIMITER ';', NULL 'x', QUOTE '''', ESCAPE '\\', FORCE_NULL (a), "
                      "FORCE_NOT_NULL *, ENCODING 'utf-8', FREEZE) WHERE a > 1")
    assert stmt == CopyStatement(
        table="t", schema="public", columns=("a", "B"), is_from=True, stdio=True, format="csv",
        delimiter=";", null="x", header=True, header_match=True, quote="'", escape="\\",
        encoding="utf-8", force_not_null=True, force_null=("a",), freeze=True, has_where=True)
    old = parse_copy("COPY t FROM STDIN WITH CSV HEADER FORCE NOT NULL k")
    assert (old.format, old.header, old.force_not_null, old.columns) == ("csv", True, ("k",), None)
    assert parse_copy("COPY BINARY t FROM STDIN").format == "binary"
    assert not parse_copy("COPY t FROM '/tmp/x'").stdio
    assert not parse_copy("COPY t TO STDOUT").is_from
    assert parse_copy("COPY t FROM STDIN (HEADER 0)").header is False
    with pytest.raises(ValueError):
        parse_copy("SELECT 1")


@pytest.mark.parametrize(("sql", "sqlstate", "message"), [
    ("COPY t FROM STDIN (FORMAT xml)", "22023", 'COPY format "xml" not recognized'),
    ("COPY t FROM STDIN (FORMAT csv, FORMAT text)", "42601", "conflicting or redundant options"),
    ("COPY t FROM STDIN (DELIMITER 'ab')", "0A000", "COPY delimiter must be a single one-byte character"),
    ("COPY t FROM STDIN (FORMAT binary, HEADER)", "42601", "cannot specify HEADER in BINARY mode"),
    ("COPY t FROM STDIN (QUOTE '\"')", "0A000", "COPY quote available only in CSV mode"),
    ("COPY t FROM STDIN (FORMAT csv, DELIMITER '\"')", "22023", "COPY delimiter and quote must be different"),
    ("COPY t FROM STDIN (NULL 'a\tb')", "22023", "COPY delimiter must not appear in the NULL specification"),
])
def test_parse_copy_refuses_what_postgresql_refuses(sql, sqlstate, message):
    with pytest.raises(CopySplitError) as info:
        parse_copy(sql)
    assert (info.value.sqlstate, info.value.message) == (sqlstate, message)


def test_from_statement_finds_the_key_and_refuses_what_cannot_be_split():
    stmt = parse_copy("COPY t (v, k) FROM STDIN (FORMAT csv)")
    splitter = CopySplitter.from_statement(stmt, ["v", "k"], "k", 2, "bigint")
    assert splitter.feed(b"x,1\n") == {shard_of_int(1, 2): [b"x,1\n"]}
    # no column list: the table's columns, as the session fetched them
    splitter = CopySplitter.from_statement(parse_copy("COPY t FROM STDIN"), ["k", "v"], "k", 2, "bigint")
    assert splitter.feed(b"1\tx\n") == {shard_of_int(1, 2): [b"1\tx\n"]}
    refusals = [
        (parse_copy("COPY t (v) FROM STDIN"), ["v"], "UTF8", "must include its sharding key column"),
        (parse_copy("COPY t FROM '/tmp/data'"), ["k"], "UTF8", "COPY FROM a server file or program"),
        (parse_copy("COPY t TO STDOUT"), ["k"], "UTF8", "COPY TO cannot be split"),
        (parse_copy("COPY t FROM STDIN"), ["k"], "LATIN1", "needs UTF8 data"),
        (parse_copy("COPY t FROM STDIN (ENCODING 'win1252')"), ["k"], "UTF8", "needs UTF8 data"),
    ]
    for stmt, columns, encoding, words in refusals:
        with pytest.raises(CopySplitError) as info:
            CopySplitter.from_statement(stmt, columns, "k", 2, "bigint", client_encoding=encoding)
        assert info.value.sqlstate == "0A000" and words in info.value.message


def test_a_key_given_as_the_default_marker_is_refused():
    stmt = parse_copy("COPY t FROM STDIN (FORMAT csv, DEFAULT 'D')")
    splitter = CopySplitter.from_statement(stmt, ["k", "v"], "k", 2, "bigint")
    with pytest.raises(CopySplitError) as info:
        splitter.feed(b"D,x\n")
    assert info.value.sqlstate == "0A000"


# -- PostgreSQL as the oracle -------------------------------------------------------------------

ORACLE_TYPES = {"bigint": "bigint", "varchar": "varchar", "uuid": "uuid"}
VALUES = ["plain", "tab\there", "new\nline", "cr\rhere", "crlf\r\nboth", "back\\slash", 'quote"s',
          "comma,here", "\\.", "ünïcødé ☃ 日本", "", None, "\\N", "NULL"]


@pytest.fixture(scope="module")
def oracle(pg):
    """psycopg connected to appdb, and a hash-partitioned table (MODULUS 3) per key type."""
    conn = psycopg.connect(pg.dsn("app", PG_USERS["app"][0], APP_DB), autocommit=True)
    for name, sql_type in ORACLE_TYPES.items():
        conn.execute(f"DROP TABLE IF EXISTS sc_{name}, sc_{name}_src")
        conn.execute(f"CREATE TABLE sc_{name} (k {sql_type}, v text, n int) PARTITION BY HASH (k)")
        for r in range(SHARDS):
            conn.execute(f"CREATE TABLE sc_{name}_p{r} PARTITION OF sc_{name} "
                         f"FOR VALUES WITH (MODULUS {SHARDS}, REMAINDER {r})")
        conn.execute(f"CREATE TABLE sc_{name}_src (k {sql_type}, v text, n int)")
        conn.execute(f"INSERT INTO sc_{name}_src VALUES (%s, %s, %s)", [None, "null key", 0])
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO sc_{name}_src VALUES (%s, %s, %s)",
                            [(_oracle_key(name, i), VALUES[i % len(VALUES)], i) for i in range(1, 400)])
    yield conn
    conn.close()


def _oracle_key(name: str, i: int) -> object:
    if name == "bigint":
        return [i, -i * 7919, i * 10**15, 2**63 - i, -(2**63) + i][i % 5]
    if name == "uuid":
        return uuid.UUID(int=(i * 0x9E3779B97F4A7C15) % (1 << 128))
    return [f"k{i}", f"ünï{i}", f"tab\t{i}", f"nl\n{i}", f'"{i}"', f"\\{i}"][i % 6]


def _copy_out(conn, sql: str) -> bytes:
    with conn.cursor() as cur, cur.copy(sql) as copy:
        return b"".join(bytes(chunk) for chunk in copy)


def _copy_in(conn, sql: str, data: bytes) -> tuple[str, str] | None:
    """COPY data in (in 1000-byte pieces); PostgreSQL's error as (SQLSTATE, message), or None."""
    try:
        with conn.cursor() as cur, cur.copy(sql) as copy:
            for i in range(0, len(data), 1000):
                copy.write(data[i : i + 1000])
    except psycopg.Error as exc:
        return exc.sqlstate, exc.diag.message_primary
    return None


def _rows(conn, table: str) -> list[tuple]:
    return sorted(conn.execute(f"SELECT k::text, v, n FROM {table}").fetchall(), key=repr)


def _check_against_partitions(conn, name: str, options: str, data: bytes, **split_options) -> None:
    """The same data COPYed into the partitioned table and, split, into one plain table per shard:
    partition r holds exactly shard r's rows."""
    conn.execute(f"TRUNCATE sc_{name}")
    assert _copy_in(conn, f"COPY sc_{name} FROM STDIN {options}", data) is None
    stmt = parse_copy(f"COPY sc_{name} FROM STDIN {options}")
    splitter = CopySplitter.from_statement(stmt, ["k", "v", "n"], "k", SHARDS, name)
    shards: dict[int, list[bytes]] = {}
    for i in range(0, len(data), 777):
        for shard, parts in splitter.feed(data[i : i + 777]).items():
            shards.setdefault(shard, []).extend(parts)
    for shard, parts in splitter.finish().items():
        shards.setdefault(shard, []).extend(parts)
    total = 0
    for r in range(SHARDS):
        conn.execute(f"DROP TABLE IF EXISTS sc_shard{r}; CREATE TABLE sc_shard{r} (LIKE sc_{name})")
        assert _copy_in(conn, f"COPY sc_shard{r} FROM STDIN {options}", b"".join(shards.get(r, []))) is None
        mine, theirs = _rows(conn, f"sc_shard{r}"), _rows(conn, f"sc_{name}_p{r}")
        assert mine == theirs, f"shard {r} of {name} {options}"
        total += len(mine)
    assert total == len(_rows(conn, f"sc_{name}_src")) > 300


@pytest.mark.parametrize("name", sorted(ORACLE_TYPES))
@pytest.mark.parametrize("options", ["", "(FORMAT csv, HEADER)", "(FORMAT binary)", "(FORMAT text, HEADER)"])
def test_partitions_agree_with_the_shards(oracle, name, options):
    data = _copy_out(oracle, f"COPY sc_{name}_src TO STDOUT {options}")
    _check_against_partitions(oracle, name, options, data)


@pytest.mark.parametrize("name", sorted(ORACLE_TYPES))
def test_partitions_agree_with_the_shards_for_crlf_escapes_and_quotes_clients_send(oracle, name):
    text = _copy_out(oracle, f"COPY sc_{name}_src TO STDOUT")
    # PostgreSQL's text output escapes newlines in values: every \n in it ends a row
    _check_against_partitions(oracle, name, "", text.replace(b"\n", b"\r\n"))
    # escapes PostgreSQL reads but never writes: \x41, octal, a backslash before a real tab
    spelled = text.replace(b"\\t", b"\\x09").replace(b"\\n", b"\\012").replace(b"\\r", b"\\\r")
    _check_against_partitions(oracle, name, "", spelled + b"\\.\n")
    csv = _copy_out(oracle, f"COPY sc_{name}_src TO STDOUT (FORMAT csv, FORCE_QUOTE *)")
    _check_against_partitions(oracle, name, "(FORMAT csv)", csv.replace(b"\n", b"\r\n"))
    _check_against_partitions(oracle, name, "(FORMAT csv, DELIMITER '|', QUOTE '''', ESCAPE '\\')",
                              _copy_out(oracle, f"COPY sc_{name}_src TO STDOUT "
                                        "(FORMAT csv, DELIMITER '|', QUOTE '''', ESCAPE '\\')"))


def test_a_null_key_is_in_the_partition_of_remainder_0(oracle):
    for name, sql_type in ORACLE_TYPES.items():
        answer = oracle.execute(f"SELECT satisfies_hash_partition('sc_{name}'::regclass, {SHARDS}, 0, "
                                f"NULL::{sql_type})").fetchone()
        assert answer == (True,)
    assert split(b"\\N\tx\n") == {0: b"\\N\tx\n"}


@pytest.mark.parametrize(("data", "options", "name"), [
    (b"1\ta\t1\nabc\tb\t2\n", "", "bigint"),
    (b"1\ta\t1\n99999999999999999999\tb\t2\n", "", "bigint"),
    (b"1\ta\t1\r\n2\tb\t2\n", "", "bigint"),
    (b"1\ta\t1\n2\tb\t2\r\n", "", "bigint"),
    (b"1\ta\t1\n\\.x\n", "", "bigint"),
    (b"1\ta\t1\r\n\\.\n", "", "bigint"),
    (b"1\ta\t1\n\\.", "", "bigint"),
    (b'"abc,1,1\n', "(FORMAT csv)", "varchar"),
    (b"1,a,1\r\n2,b\r,2\r\n", "(FORMAT csv)", "bigint"),
    (b"xyz,a,1\n", "(FORMAT csv)", "uuid"),
    (BIN_HEADER[:12], "(FORMAT binary)", "bigint"),
    (BIN_HEADER + bin_row(b"\0\0\0\0\0\0\0\1", b"a", b"\0\0\0\1")[:9], "(FORMAT binary)", "bigint"),
    (BIN_HEADER + BIN_TRAILER + b"more", "(FORMAT binary)", "bigint"),
    (BIN_HEADER + bin_row(b"\0\0\0\0\0\0\0\1"), "(FORMAT binary)", "bigint"),
])
def test_refused_as_postgresql_refuses(oracle, data, options, name):
    pg_error = _copy_in(oracle, f"COPY sc_{name} FROM STDIN {options}", data)
    assert pg_error is not None
    stmt = parse_copy(f"COPY sc_{name} FROM STDIN {options}")
    splitter = CopySplitter.from_statement(stmt, ["k", "v", "n"], "k", SHARDS, name)
    with pytest.raises(CopySplitError) as info:
        splitter.feed(data)
        splitter.finish()
    assert (info.value.sqlstate, info.value.message) == pg_error
