"""Simple-protocol statements with their literals taken out, for the sharding facts cache.

A client using the simple protocol puts its values in the text: `... WHERE aid = 48213` is a
new text for every key, and analysing each (router/sharding/keys.py, tens of microseconds) would
cost more than relaying it. So a SELECT, UPDATE, DELETE or INSERT has its integer and string
literals replaced by parameters (`... WHERE aid = $1`): the facts are cached once per shape and
the literals are read as the values of those parameters, in text format, as a Bind would carry
them (`shards_for` reads them the same way).

Only what is surely a literal is taken out: digits that stand alone and standard strings
('...', with '' inside). Comments, quoted identifiers, escape and dollar-quoted strings stay
as they are; a negative number keeps its minus sign in the text (its digits become a
parameter). A template PostgreSQL would not parse (a type modifier such as varchar(20) became
varchar($1)) is useless: the caller then analyses the text itself.
"""

from __future__ import annotations

import re
import struct

from ... import speedups
from .unique_id import mentions

__all__ = ["query_shape", "query_shape_py", "scan_py", "template"]

# Alternatives in the order they must be tried at a position: what to keep, then what to take.
# Words are not matched (the scan would cost a Python step per word): the lookbehinds keep the
# digits inside a name (x1) and find a quote glued to a word or & (E'..', U&'..', B'..').
_TOKEN = re.compile(
    r"""(?=[-/"'0-9.])"""                  # every alternative starts so: a cheap first test
    r"""(?:(--[^\n]*)"""                      # 1 a line comment: kept
    r"""|(/\*.*?\*/)"""                    # 2 a block comment: kept (hints live there)
    r"""|("(?:[^"]|"")*")"""               # 3 a quoted identifier: kept
    r"""|((?<=[\w&])')"""                  # 4 a prefixed string: the scan gives up
    r"""|('(?:[^']|'')*')"""               # 5 a standard string: taken
    r"""|(?<![\w.])(\d+)(?![\w.])"""       # 6 an integer: taken
    r"""|(?<!\w)(\d*\.?\d+(?:[eE][+-]?\d+)?\.?))""",  # 7 another number: kept (3.0 is no int8 key)
    re.S)
# Before a minus sign that makes a number negative rather than subtracting: the minus is taken too.
_SIGNED_AFTER = frozenset("=<>(,[")
_DML = re.compile(r"\s*(?:/\*.*?\*/\s*)*(?:select|update|delete|insert|with)\b", re.I | re.S)


def template(sql: str) -> tuple[str, tuple[bytes, ...]] | None:
    """(the text with its literals as $1..$n, their values as text), or None when the text
    is not a statement worth it (no literal, not DML, or something the scan cannot be sure of:
    a dollar sign, an escape string)."""
    if "$" in sql or not _DML.match(sql):
        return None
    if _scan_c is not None:
        found = _scan_c(sql)
        if found is not NotImplemented:  # (an ASCII text: the C twin's)
            return found
    return scan_py(sql)


def query_shape(raw: bytes) -> tuple[str, tuple[bytes, ...]] | None:
    """`template` of a whole Query message (type, length, text, NUL) for the sharded relay's
    plain path: None unless it is one well-framed ASCII text without hints, settings of the
    proxy's (`pgdog`) or `pgdog.unique_id()` (those take the general path)."""
    if _query_shape_c is not None:
        found = _query_shape_c(raw)
        if found is not NotImplemented:  # (the C twin's answer)
            return found
    return query_shape_py(raw)


def query_shape_py(raw: bytes) -> tuple[str, tuple[bytes, ...]] | None:
    if raw[:1] != b"Q" or len(raw) < 6 or raw[-1] != 0 or _LEN(raw, 1)[0] + 1 != len(raw):
        return None
    body = raw[5:-1]
    if b"\x00" in body or b"pgdog" in body or b"PGDOG" in body or mentions(body) \
            or not body.isascii():
        return None
    return template(body.decode("ascii"))


def scan_py(sql: str) -> tuple[str, tuple[bytes, ...]] | None:
    """The literal scan of `template` in Python (_template.c is its twin for ASCII texts)."""
    values: list[bytes] = []
    out: list[str] = []
    last = 0
    for match in _TOKEN.finditer(sql):
        string, number = match.group(5), match.group(6)
        if string is None and number is None:
            if match.group(4) is not None:
                return None  # E'...', U&'...', B'...': not a standard string
            continue
        start = match.start()
        if string is not None:
            value = string[1:-1].replace("''", "'")
        else:
            start, value = _signed(sql, start, last, number)
        out.append(sql[last:start])
        values.append(value.encode())
        out.append(f"${len(values)}")
        last = match.end()
    if not values:
        return None
    out.append(sql[last:])
    return "".join(out), tuple(values)


def _signed(sql: str, start: int, last: int, digits: str) -> tuple[int, str]:
    """Where an integer literal starts and its value: `= -3` is the value -3 (so a key hashes
    as itself), `a - 3` is a subtraction of 3."""
    before = sql[last:start].rstrip()
    if before.endswith("-") and before[:-1].rstrip()[-1:] in _SIGNED_AFTER:
        return last + len(before) - 1, "-" + digits
    return start, digits


_LEN = struct.Struct("!I").unpack_from
_scan_c = speedups.c.template_scan if speedups.c is not None else None
_query_shape_c = speedups.c.query_shape if speedups.c is not None else None
