"""A COPY row's sharding key, read the way PostgreSQL's input functions read it, and its shard.

Text and CSV give the key as text (int8in / uuid_in / the bytes of a varchar), binary COPY as
the type's binary form (int2/int4/int8 big-endian, told apart by their length; a uuid's 16
bytes; a varchar's bytes). A NULL key is in shard 0: PostgreSQL's hash partitioning combines
nothing for a NULL column, so the row hash stays 0.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable

from .hashing import INT8_MAX, INT8_MIN, bytes_key_hash, int_key_hash

__all__ = ["BadKey", "KeyType", "key_type"]

INVALID_TEXT_REPRESENTATION = "22P02"
NUMERIC_VALUE_OUT_OF_RANGE = "22003"
INVALID_BINARY_REPRESENTATION = "22P03"

_INT_TYPES = {"bigint": "bigint", "int8": "bigint", "integer": "integer", "int": "integer",
              "int4": "integer", "smallint": "smallint", "int2": "smallint"}
_TEXT_TYPES = {"varchar", "text", "character varying"}
# PostgreSQL 16's integer input (hex/octal/binary prefixes, underscores between digits), a
# superset of 15's: a shard that does not know a form refuses it as it would without sharding.
_SPACE = rb"[ \t\n\v\f\r]*"
_NON_DECIMAL = re.compile(_SPACE + rb"([+-]?)0(?:([xX])((?:_?[0-9a-fA-F])+)|([oO])((?:_?[0-7])+)"
                          rb"|([bB])((?:_?[01])+))" + _SPACE)
_UUID_CANONICAL = re.compile(rb"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                             rb"[0-9a-fA-F]{12}")
_HEX = frozenset(b"0123456789abcdefABCDEF")


class BadKey(Exception):
    """A key PostgreSQL's input function would refuse (the splitter adds the line and column)."""

    def __init__(self, sqlstate: str, message: str):
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message


class KeyType:
    """One sharding key type: `text_shard(value, n)` for a text/CSV field's (unescaped) bytes,
    `binary_shard(value, n)` for a binary COPY field; `None` is SQL NULL."""

    def __init__(self, name: str, text_shard: Callable[[bytes | None, int], int],
                 binary_shard: Callable[[bytes | None, int], int], is_int: bool):
        self.name = name
        self.text_shard = text_shard
        self.binary_shard = binary_shard
        self.is_int = is_int


def key_type(data_type: str) -> KeyType:
    """The KeyType for a sharded table's `data_type` ("bigint", "integer", "varchar", "uuid"...)."""
    name = data_type.strip().lower()
    if name in _INT_TYPES:
        type_name = _INT_TYPES[name]
        return KeyType(type_name, _int_text_shard(type_name), _int_binary_shard, True)
    if name in _TEXT_TYPES:
        return KeyType(name, _bytes_shard, _bytes_shard, False)
    if name == "uuid":
        return KeyType("uuid", _uuid_text_shard, _uuid_binary_shard, False)
    raise ValueError(f"unsupported sharding key type {data_type!r} (bigint, integer, smallint, "
                     "varchar, text or uuid)")


def parse_int(raw: bytes, type_name: str = "bigint") -> int:
    """An integer as PostgreSQL's int8in reads it, or BadKey. Keys are read as bigint (the hash's
    domain) whatever the column's integer type: a shard refuses a value too big for its column
    with its own message."""
    try:
        value = int(raw)  # decimal, surrounding whitespace, underscores between digits: as PostgreSQL 16
    except ValueError:
        value = _non_decimal(raw, type_name)
    if not INT8_MIN <= value <= INT8_MAX:
        raise BadKey(NUMERIC_VALUE_OUT_OF_RANGE, f'value "{_show(raw)}" is out of range for type bigint')
    return value


def _non_decimal(raw: bytes, type_name: str) -> int:
    m = _NON_DECIMAL.fullmatch(raw)
    if m is None:
        raise BadKey(INVALID_TEXT_REPRESENTATION,
                     f'invalid input syntax for type {type_name}: "{_show(raw)}"')
    sign = -1 if m.group(1) == b"-" else 1
    digits, base = next((m.group(i + 1), b) for i, b in ((2, 16), (4, 8), (6, 2)) if m.group(i))
    return sign * int(digits.replace(b"_", b""), base)


def parse_uuid(raw: bytes) -> bytes:
    """A uuid's 16 bytes as PostgreSQL's uuid_in reads its text: 32 hex digits, a hyphen allowed
    after any group of four, optionally in braces; nothing else (no spaces)."""
    if len(raw) == 36 and _UUID_CANONICAL.fullmatch(raw):
        return binascii.unhexlify(raw.replace(b"-", b""))
    src = 1 if raw[:1] == b"{" else 0
    braces = src == 1
    out = bytearray()
    for i in range(16):
        pair = raw[src : src + 2]
        if len(pair) != 2 or pair[0] not in _HEX or pair[1] not in _HEX:
            raise _bad_uuid(raw)
        out += binascii.unhexlify(pair)
        src += 2
        if raw[src : src + 1] == b"-" and i % 2 == 1 and i < 15:
            src += 1
    if braces:
        if raw[src : src + 1] != b"}":
            raise _bad_uuid(raw)
        src += 1
    if src != len(raw):
        raise _bad_uuid(raw)
    return bytes(out)


def _bad_uuid(raw: bytes) -> BadKey:
    return BadKey(INVALID_TEXT_REPRESENTATION, f'invalid input syntax for type uuid: "{_show(raw)}"')


def _show(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _int_text_shard(type_name: str) -> Callable[[bytes | None, int], int]:
    def shard(value: bytes | None, n: int) -> int:
        return 0 if value is None else int_key_hash(parse_int(value, type_name)) % n
    return shard


def _int_binary_shard(value: bytes | None, n: int) -> int:
    if value is None:
        return 0
    if len(value) not in (2, 4, 8):
        raise BadKey(INVALID_BINARY_REPRESENTATION, "incorrect binary data format")
    return int_key_hash(int.from_bytes(value, "big", signed=True)) % n


def _bytes_shard(value: bytes | None, n: int) -> int:
    return 0 if value is None else bytes_key_hash(value) % n


def _uuid_text_shard(value: bytes | None, n: int) -> int:
    return 0 if value is None else bytes_key_hash(parse_uuid(value)) % n


def _uuid_binary_shard(value: bytes | None, n: int) -> int:
    if value is None:
        return 0
    if len(value) != 16:
        raise BadKey(INVALID_BINARY_REPRESENTATION, "incorrect binary data format")
    return bytes_key_hash(value) % n
