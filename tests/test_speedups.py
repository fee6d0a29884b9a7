"""The C speedups (trio_pgdog._speedups) against their pure-Python twins: the same answers,
and the same refusals, for well-formed and for arbitrary client bytes."""

from __future__ import annotations

import struct

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from trio_pgdog import speedups
from trio_pgdog.protocol.results import bind_parameters_py
from trio_pgdog.session.units import one_execution_py

pytestmark = pytest.mark.skipif(speedups.c is None, reason=f"trio_pgdog._speedups is {speedups.status()}")


def msg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def bind_rest(values: list[bytes | None], formats: list[int]) -> bytes:
    out = struct.pack("!h", len(formats)) + b"".join(struct.pack("!h", f) for f in formats)
    out += struct.pack("!h", len(values))
    for v in values:
        out += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    return out + b"\x00\x00"   # no result format codes


def execution(sql: str, name: bytes = b"", portal: bytes = b"", values=(), formats=(),
              parse: bool = True, describe: bool = True) -> bytes:
    out = msg(b"P", name + b"\x00" + sql.encode() + b"\x00\x00\x00") if parse else b""
    out += msg(b"B", portal + b"\x00" + name + b"\x00" + bind_rest(list(values), list(formats)))
    out += msg(b"D", b"P" + portal + b"\x00") if describe else b""
    return out + msg(b"E", portal + b"\x00\x00\x00\x00\x00") + msg(b"S", b"")


def both(function_c, function_py, data: bytes):
    """The two implementations' answers, each a value or the ValueError it raised."""
    answers = []
    for function in (function_c, function_py):
        try:
            answers.append(function(data))
        except ValueError:
            answers.append(ValueError)
    return answers


def test_a_driver_execution_is_read_alike():
    data = execution("SELECT $1, $2 -- é", name=b"s1", portal=b"p", values=[b"42", None],
                     formats=[0])
    expected = (b"s1", "SELECT $1, $2 -- é", b"SELECT $1, $2 -- \xc3\xa9\x00\x00\x00", b"p", b"s1",
                bind_rest([b"42", None], [0]))
    assert speedups.c.one_execution(data) == one_execution_py(data) == expected
    # Without a Parse: the statement's fields are None.
    data = execution("", name=b"s1", parse=False, describe=False)
    assert speedups.c.one_execution(data) == one_execution_py(data) == \
        (None, None, None, b"", b"s1", bind_rest([], []))


@pytest.mark.parametrize("data", [
    b"",
    msg(b"Q", b"SELECT 1\x00"),
    execution("SELECT 1")[:-1],                          # cut short
    execution("SELECT 1") + msg(b"S", b""),              # two Syncs
    msg(b"B", b"\x00\x00" + bind_rest([], [])) + msg(b"S", b""),  # no Execute
    msg(b"P", b"no-nul-anywhere") + execution("", parse=False),   # Parse without its NULs
    # A Parse whose parameter types do not fill it exactly, a bad Describe, a bad Execute:
    msg(b"P", b"\x00SELECT 1\x00\x00\x01") + execution("", parse=False),
    msg(b"P", b"\x00SELECT 1\x00\x00\x00\x00") + execution("", parse=False),
    execution("SELECT 1", describe=False).replace(msg(b"E", b"\x00" * 5), msg(b"D", b"X\x00") +
                                                  msg(b"E", b"\x00" * 5)),
    execution("SELECT 1").replace(msg(b"D", b"P\x00"), msg(b"D", b"Pa\x00b\x00")),
    execution("SELECT 1").replace(msg(b"E", b"\x00" * 5), msg(b"E", b"\x00" * 4)),
    execution("SELECT 1").replace(msg(b"E", b"\x00" * 5), msg(b"E", b"ab\x00\x00\x00\x00")),
])
def test_anything_else_is_none(data):
    assert speedups.c.one_execution(data) is None
    assert one_execution_py(data) is None


@settings(max_examples=300)
@given(sql=st.text(max_size=40), name=st.binary(max_size=8).filter(lambda b: b"\x00" not in b),
       values=st.lists(st.one_of(st.none(), st.binary(max_size=12)), max_size=20),
       parse=st.booleans(), describe=st.booleans(), data=st.data())
def test_executions_read_alike(sql, name, values, parse, describe, data):
    formats = data.draw(st.sampled_from([[], [1], [i % 2 for i in range(len(values))]]))
    raw = execution(sql.replace("\x00", ""), name=name, values=values, formats=formats,
                    parse=parse, describe=describe)
    c_answer, py_answer = both(speedups.c.one_execution, one_execution_py, raw)
    assert c_answer == py_answer
    assert c_answer is not None
    assert both(speedups.c.bind_parameters, bind_parameters_py, c_answer[5])[0] == \
        (tuple(values), tuple(formats if len(formats) == len(values) else
                              (formats[0] if formats else 0,) * len(values)))


@settings(max_examples=500)
@given(st.binary(max_size=120), st.integers(0, 119), st.binary(min_size=1, max_size=4))
@example(execution("SELECT 1"), 3, b"\xff")    # a length made huge
@example(execution("SELECT 1"), 6, b"\x00")    # the Parse's NUL moved
def test_damaged_executions_read_alike(garbage, where, patch):
    for raw in (garbage, execution("SELECT $1", values=[b"1"])):
        damaged = raw[:where] + patch + raw[where + len(patch):]
        assert speedups.c.one_execution(damaged) == one_execution_py(damaged)


@settings(max_examples=500)
@given(st.binary(max_size=64))
@example(struct.pack("!hhh", 2, 0, 0) + struct.pack("!h", 1) + struct.pack("!i", 0))  # 2 codes, 1 value
@example(struct.pack("!hh", 0, -1))                    # negative count
@example(struct.pack("!h", -3))                        # negative format count
@example(struct.pack("!hh", 0, 1) + struct.pack("!i", 5) + b"abc")   # a value cut short
@example(struct.pack("!hh", 0, 2) + struct.pack("!i", -7) + struct.pack("!i", 0))  # odd NULL length
def test_bind_parameters_alike(rest):
    c_answer, py_answer = both(speedups.c.bind_parameters, bind_parameters_py, rest)
    assert c_answer == py_answer


@pytest.mark.parametrize("rest", [
    struct.pack("!hh", 0, 1) + struct.pack("!i", -2),             # a negative length not -1
    struct.pack("!hh", 0, 0),                                     # no result format count
    struct.pack("!hhh", 0, 0, -1),                                # a negative one
    struct.pack("!hhh", 0, 0, 1),                                 # its code missing
    struct.pack("!hhhh", 0, 0, 0, 7),                             # bytes after the end
])
def test_malformed_bind_values_are_refused_by_both(rest):
    assert both(speedups.c.bind_parameters, bind_parameters_py, rest) == [ValueError, ValueError]
