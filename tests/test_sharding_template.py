"""Simple-protocol texts with their literals taken out (router/sharding/template.py): the
shards a shape's facts and the literals' values give must be the shards the whole text gives,
for every statement the key-analysis tests use and for the literals that are easy to misread
(negative numbers, decimals, quotes inside strings, escape and bit strings, typed literals)."""

from __future__ import annotations

import hypothesis
import pgwire
import pytest
import test_sharding_keys
from hypothesis import strategies as st
from test_sharding_keys import ALL, SCHEMA

from trio_pgdog.router.sharding import template as template_module
from trio_pgdog.router.sharding.keys import ShardingError, analyze, shards_for
from trio_pgdog.router.sharding.template import query_shape_py, scan_py, template

TRICKY = [
    "SELECT * FROM orders WHERE customer_id = -3",
    "SELECT * FROM orders WHERE customer_id = - 3",
    "SELECT * FROM orders WHERE customer_id IN (-1, -2) AND total - 3 > 0",
    "SELECT * FROM orders WHERE customer_id = 3.0",
    "SELECT * FROM orders WHERE customer_id = 1e2",
    "SELECT * FROM orders WHERE customer_id = .5",
    "SELECT * FROM orders WHERE customer_id = 0x1F",
    "SELECT * FROM orders WHERE customer_id = 1_000",
    "SELECT * FROM orders WHERE customer_id = '3'",
    "SELECT * FROM orders WHERE customer_id = 'abc'",
    "SELECT * FROM orders WHERE customer_id = 9223372036854775807",
    "SELECT * FROM orders WHERE customer_id = 9223372036854775808",
    "SELECT * FROM orders WHERE customer_id = -9223372036854775808",
    "SELECT * FROM orders WHERE customer_id IN (1, 3) ORDER BY 1 LIMIT 5 OFFSET 2",
    "SELECT * FROM orders WHERE customer_id = 3::bigint",
    "SELECT * FROM orders WHERE customer_id = '3'::int8",
    "SELECT * FROM users WHERE email = 'a''b'",
    "SELECT * FROM users WHERE name='x' AND email='y'",
    "SELECT * FROM users WHERE email = E'a\\'b'",
    "SELECT * FROM users WHERE email = U&'d\\0061t'",
    "SELECT * FROM users WHERE email = B'0101'",
    "SELECT * FROM users WHERE email = 'a' 'b'",
    "SELECT * FROM users WHERE email = 'a'\n'b'",
    "SELECT * FROM users WHERE email = 'ü€😀'",
    "SELECT * FROM users WHERE \"email\" = '1' -- 2\n AND 3 = 3",
    "SELECT * FROM sessions WHERE token = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
    "SELECT * FROM orders WHERE customer_id = 3 /* pgdog_shard: 1 */",
    "/* pgdog_sharding_key: 7 */ SELECT * FROM orders WHERE total = 3",
    "UPDATE orders SET total = 5 WHERE customer_id = 2",
    "DELETE FROM orders WHERE customer_id = 4 RETURNING 1",
]


def _collected() -> list[str]:
    """Every SQL text the key-analysis tests are parametrized with."""
    texts = []
    for test in vars(test_sharding_keys).values():
        for mark in getattr(test, "pytestmark", ()):
            if mark.name != "parametrize":
                continue
            names = mark.args[0] if isinstance(mark.args[0], (tuple, list)) else (mark.args[0],)
            if "sql" not in names:
                continue
            at = list(names).index("sql")
            for case in mark.args[1]:
                sql = case if len(names) == 1 else case[at]
                texts.append(getattr(sql, "values", (sql,))[0] if not isinstance(sql, str)
                             else sql)
    return texts


def _shards(facts, values: tuple[bytes, ...]):
    try:
        found = shards_for(facts, SCHEMA, values, ())
    except ShardingError as exc:
        return ("refused", exc.sqlstate)
    return ALL if found is None else found


@pytest.mark.parametrize("sql", TRICKY + _collected())
def test_a_shape_and_its_values_route_like_the_text(sql):
    found = template(sql)
    if found is None:
        return  # the relay analyses the text itself
    shape, values = found
    facts = analyze(shape, SCHEMA)
    if not facts.parse_ok or facts.insert_keys is not None:
        return  # likewise (an INSERT is split by cutting its text)
    assert _shards(facts, values) == _shards(analyze(sql, SCHEMA), ())


def test_what_is_taken_out():
    assert template("SELECT * FROM t WHERE a = -3 AND b - 4 > 'x''y'") == (
        "SELECT * FROM t WHERE a = $1 AND b - $2 > $3", (b"-3", b"4", b"x'y"))
    assert template("SELECT 1.5, x1, \"2\", 'a' /* 3 */ -- 4") == (
        "SELECT 1.5, x1, \"2\", $1 /* 3 */ -- 4", (b"a",))
    for kept in ("SELECT 1 FROM t WHERE a = E'x'", "SELECT $1, 2", "VACUUM t",
                 "SELECT a FROM t"):
        assert template(kept) is None, kept


# --- the C twin (_template.c) gives the Python scan's answers --------------------------------

_C_SCAN = template_module._scan_c
# Characters each alternative of the scan starts with, or looks at around a literal.
_TRICKY_ASCII = "0123456789'\"-/*.eE+&_=<>(,[ \t\n\x1cabxyz$\x00"


@pytest.mark.skipif(_C_SCAN is None, reason="the C speedups are not built")
@hypothesis.settings(max_examples=3000, deadline=None)
@hypothesis.given(st.text(alphabet=_TRICKY_ASCII, max_size=40))
def test_c_scan_answers_as_the_python_scan(text):
    assert _C_SCAN(text) == scan_py(text)


@pytest.mark.skipif(_C_SCAN is None, reason="the C speedups are not built")
@pytest.mark.parametrize("sql", TRICKY + _collected())
def test_c_scan_on_every_statement_of_the_tests(sql):
    found = _C_SCAN(sql)
    if not sql.isascii():
        assert found is NotImplemented  # left to the Python scan
    else:
        assert found == scan_py(sql)


_C_SHAPE = template_module._query_shape_c
_BODIES = st.one_of(
    st.text(alphabet=_TRICKY_ASCII, max_size=30).map(lambda t: "select " + t),
    st.sampled_from(["SELECT", "update", " Delete", "\tINSERT", "with", "selectx", "/* c */ select",
                     "select pgdog.unique_id()", "SELECT 'x' /* pgdog_shard: 1 */", "é 1"]).flatmap(
        lambda head: st.text(alphabet=_TRICKY_ASCII, max_size=20).map(lambda t: head + " " + t)),
)


@pytest.mark.skipif(_C_SHAPE is None, reason="the C speedups are not built")
@hypothesis.settings(max_examples=2000, deadline=None)
@hypothesis.given(_BODIES, st.sampled_from(["whole", "no-nul", "bad-length", "two"]))
def test_c_query_shape_answers_as_the_python_one(body, framing):
    """The sharded relay's first look at a Query message (template.query_shape): the C twin
    answers as the Python one, or leaves the text to it (a leading comment, non-ASCII)."""
    raw = pgwire.query(body)
    if framing == "no-nul":
        raw = raw[:-1]
    elif framing == "bad-length":
        raw = raw[:1] + (len(raw) + 3).to_bytes(4, "big") + raw[5:]
    elif framing == "two":
        raw += pgwire.query("select 1")
    found = _C_SHAPE(raw)
    if found is not NotImplemented:
        assert found == query_shape_py(raw)
    else:
        assert not body.isascii() or body.lstrip(" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f").startswith("/*")
