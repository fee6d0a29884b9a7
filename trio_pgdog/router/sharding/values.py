"""Sharding-key values as PostgreSQL would read them: Bind parameters in text or binary
format, text and binary arrays, and the text of literals, turned into the key's row hash.

Key types (``data_type`` of ``[[sharded_tables]]``):
  - ``bigint``: int2, int4 and int8 columns (they hash alike). Text: what int8in accepts
    (spaces around, a sign, decimal digits with single underscores between them, and the
    0x/0o/0b forms PostgreSQL 16 added). Binary: 2, 4 or 8 bytes, big-endian.
  - ``varchar``: text and varchar columns. The value's bytes are hashed as they arrive, in the
    client encoding, which must be the database's (UTF8); text and binary formats are the same.
  - ``uuid``: text in any form uuid_in accepts, or 16 bytes binary.

A value that cannot be a key of the type raises `BadKey` (a ValueError); PostgreSQL would reject
it too. NULL is never a key value here: callers decide what NULL means where they are.
"""

from __future__ import annotations

import re
import struct

from .hashing import bytes_key_hash, int_key_hash

__all__ = ["BadKey", "array_hashes", "binary_hash", "int_from_text", "parse_text_array",
           "text_hash", "uuid_from_text"]

# Type oids a client may declare for a parameter (Parse) or find in a binary array header.
INT2, INT4, INT8, TEXT, VARCHAR, BPCHAR, NAME, UUID, UNKNOWN = 21, 23, 20, 25, 1043, 1042, 19, 2950, 705
_INT_SIZES = {INT2: 2, INT4: 4, INT8: 8}
_BINARY_INT = {2: struct.Struct("!h"), 4: struct.Struct("!i"), 8: struct.Struct("!q")}
_TEXT_OIDS = frozenset({TEXT, VARCHAR, BPCHAR, NAME, UNKNOWN})
_ARRAY_HEAD = struct.Struct("!iiI")
_I32 = struct.Struct("!i")

# int8in's other spellings (PostgreSQL 16+): 0x1F, 0o17, 0b101, with underscores between digits.
_PREFIXED_INT = re.compile(
    r"[ \t\n\r\v\f]*([+-]?)0(?:([xX])((?:_?[0-9a-fA-F])+)|([oO])((?:_?[0-7])+)|([bB])((?:_?[01])+))"
    r"[ \t\n\r\v\f]*\Z"
)
_BASES = {"x": 16, "X": 16, "o": 8, "O": 8, "b": 2, "B": 2}
# uuid_in: 32 hex digits, a hyphen allowed after any group of four, optionally in braces.
_UUID = re.compile(r"(\{)?((?:[0-9a-fA-F]{4}-?){7}[0-9a-fA-F]{4})(?(1)\})\Z")


class BadKey(ValueError):
    """A value that is not a key of the column's type."""


def int_from_text(text: bytes | str) -> int:
    """An integer key written as text, the way PostgreSQL's int8in reads it."""
    try:
        # int() takes what int8in takes in decimal: spaces around, a sign, single underscores.
        # On str it also takes non-ASCII digits, which PostgreSQL does not.
        if isinstance(text, str) and not text.isascii():
            raise ValueError
        return int(text)
    except ValueError:
        pass
    source = text.decode("ascii", "replace") if isinstance(text, bytes) else text
    match = _PREFIXED_INT.match(source)
    if match is None:
        raise BadKey(f"invalid input syntax for type bigint: {_show(source)}")
    sign, digits = match.group(1), next(g for g in match.groups()[2::2] if g)
    base = _BASES[next(g for g in match.groups()[1::2] if g)]
    value = int(digits.replace("_", ""), base)
    return -value if sign == "-" else value


def uuid_from_text(text: bytes | str) -> bytes:
    """A uuid key written as text: its 16 bytes."""
    if len(text) == 36:  # the canonical form, as drivers send it: no regex needed
        try:
            if isinstance(text, bytes):
                return bytes.fromhex(text.replace(b"-", b"").decode("ascii"))
            return bytes.fromhex(text.replace("-", ""))
        except (ValueError, UnicodeDecodeError):
            pass
    source = text.decode("ascii", "replace") if isinstance(text, bytes) else text
    match = _UUID.match(source)
    if match is None:
        raise BadKey(f"invalid input syntax for type uuid: {_show(source)}")
    return bytes.fromhex(match.group(2).replace("-", ""))


def _show(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


def int_hash(value: int) -> int:
    try:
        return int_key_hash(value)
    except (ValueError, OverflowError):
        raise BadKey(f"value {value} is out of range for type bigint") from None


def text_hash(value: bytes, data_type: str) -> int:
    """The row hash of a key given as text bytes (a text-format parameter or array element)."""
    if data_type == "bigint":
        return int_hash(int_from_text(value))
    if data_type == "varchar":
        return bytes_key_hash(value)
    return bytes_key_hash(uuid_from_text(value))


def binary_hash(value: bytes, data_type: str, oid: int = 0) -> int:
    """The row hash of a key given in binary format; `oid` is its declared type (0: unknown,
    then an integer's width is read off its length)."""
    if data_type == "bigint":
        if oid in _TEXT_OIDS:
            return int_hash(int_from_text(value))
        size = _INT_SIZES.get(oid, len(value)) if oid else len(value)
        unpack = _BINARY_INT.get(size)
        if unpack is None or len(value) != size:
            raise BadKey(f"a binary integer key must be 2, 4 or 8 bytes, got {len(value)}")
        return int_hash(unpack.unpack(value)[0])
    if data_type == "varchar":
        return bytes_key_hash(value)
    if oid in _TEXT_OIDS:
        return bytes_key_hash(uuid_from_text(value))
    if len(value) != 16:
        raise BadKey(f"a binary uuid key must be 16 bytes, got {len(value)}")
    return bytes_key_hash(value)


def array_hashes(value: bytes, binary: bool, data_type: str) -> list[int]:
    """The row hashes of an array parameter's elements (every dimension), NULLs left out."""
    if not binary:
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            raise BadKey("an array parameter is not valid UTF-8") from None
        elements = parse_text_array(text)
        if data_type == "varchar":
            return [bytes_key_hash(e.encode()) for e in elements if e is not None]
        return [text_hash(e.encode(), data_type) for e in elements if e is not None]
    try:
        ndim, _flags, oid = _ARRAY_HEAD.unpack_from(value, 0)
        if ndim == 0:
            return []
        if not 0 < ndim <= 6:
            raise BadKey(f"a binary array with {ndim} dimensions")
        pos = 12
        count = 1
        for _ in range(ndim):
            (size,) = _I32.unpack_from(value, pos)
            if size < 0:
                raise BadKey("a binary array with a negative dimension")
            count *= size
            pos += 8
        hashes = []
        for _ in range(count):
            (length,) = _I32.unpack_from(value, pos)
            pos += 4
            if length < 0:
                continue
            element = value[pos : pos + length]
            if len(element) != length:
                raise BadKey("a binary array element runs past the value")
            pos += length
            hashes.append(binary_hash(element, data_type, oid))
    except struct.error:
        raise BadKey("a binary array parameter is truncated") from None
    if pos != len(value):
        raise BadKey("a binary array parameter has bytes past its last element")
    return hashes


def parse_text_array(text: str) -> list[str | None]:
    """The elements of an array in PostgreSQL's text form (``{1,2,"a b",NULL}``, nested
    braces for more dimensions, an optional ``[1:3]=`` prefix), flattened; NULL is None."""
    pos = 0
    n = len(text)
    while pos < n and text[pos].isspace():
        pos += 1
    if pos < n and text[pos] == "[":
        equals = text.find("=", pos)
        if equals < 0:
            raise BadKey(f"malformed array literal: {_show(text)}")
        pos = equals + 1
        while pos < n and text[pos].isspace():
            pos += 1
    if pos >= n or text[pos] != "{":
        raise BadKey(f"malformed array literal: {_show(text)}")
    out: list[str | None] = []
    pos = _parse_braces(text, pos, out)
    if text[pos:].strip():
        raise BadKey(f"malformed array literal: junk after the closing brace in {_show(text)}")
    return out


def _parse_braces(text: str, pos: int, out: list[str | None]) -> int:
    """Parse ``{...}`` starting at `pos` (a brace); return the position after its ``}``."""
    n = len(text)
    pos += 1
    expect_element = True
    after_comma = False
    while True:
        while pos < n and text[pos].isspace():
            pos += 1
        if pos >= n:
            raise BadKey(f"malformed array literal: unterminated {_show(text)}")
        char = text[pos]
        if char == "}":
            if after_comma:
                raise BadKey(f"malformed array literal: {_show(text)}")
            return pos + 1
        if not expect_element:
            if char != ",":
                raise BadKey(f"malformed array literal: {_show(text)}")
            pos += 1
            expect_element = after_comma = True
            continue
        if char == "{":
            pos = _parse_braces(text, pos, out)
        elif char == '"':
            pos = _quoted(text, pos + 1, out)
        else:
            pos = _unquoted(text, pos, out)
        expect_element = after_comma = False


def _quoted(text: str, pos: int, out: list[str | None]) -> int:
    chars = []
    n = len(text)
    while pos < n:
        char = text[pos]
        if char == "\\" and pos + 1 < n:
            chars.append(text[pos + 1])
            pos += 2
        elif char == '"':
            out.append("".join(chars))
            return pos + 1
        else:
            chars.append(char)
            pos += 1
    raise BadKey(f"malformed array literal: unterminated quote in {_show(text)}")


def _unquoted(text: str, pos: int, out: list[str | None]) -> int:
    chars = []
    escaped = False
    n = len(text)
    while pos < n and text[pos] not in ",}{\"":
        if text[pos] == "\\" and pos + 1 < n:
            chars.append(text[pos + 1])
            escaped = True
            pos += 2
            continue
        chars.append(text[pos])
        pos += 1
    if pos < n and text[pos] in '{"':
        raise BadKey(f"malformed array literal: {_show(text)}")
    value = "".join(chars).strip()
    if not value:
        raise BadKey(f"malformed array literal: an empty element in {_show(text)}")
    out.append(None if not escaped and value.upper() == "NULL" else value)
    return pos
