"""The cells a cross-shard merge reads and writes, in text and binary format (sans-IO).

A merge compares cells (ORDER BY, min/max, GROUP BY, DISTINCT, HAVING) and computes a few
(count, sum, avg, bool_and/bool_or). For that it needs, per column type and format:

  - a *key*: a Python value whose order and equality are PostgreSQL's for the type, built
    from the cell's bytes without a per-row type dispatch (`key_reader`). NULL is handled by
    the caller;
  - a *value* for arithmetic (`value_reader`): int, Decimal or float;
  - *writers* that print a computed value exactly as PostgreSQL would send it
    (`int8_cell`, `numeric_cell`, `float_cell`, `bool_cell`).

Orders (the keys):
  - integers, oid: numeric order; bool: false < true;
  - float4/float8: NaN above everything and equal to itself, -0 equal to 0 (PostgreSQL's
    float comparison), infinities in place. The key is an int built from the IEEE bits;
  - numeric: by value (1.0 = 1.00), NaN above +Infinity;
  - text, varchar, bpchar, name: the bytes, i.e. the "C" collation (bpchar without its
    trailing spaces, as bpchar compares). The proxy cannot follow another collation;
  - uuid, bytea: the bytes (memcmp), as PostgreSQL compares them;
  - date, time, timestamp, timestamptz: one int (days or microseconds; timestamptz in UTC
    whatever offset the server printed); ±infinity at the ends. Text cells must be in the ISO
    DateStyle (the default); interval (IntervalStyle postgres, the default) by its span
    (1 mon = 30 days, as PostgreSQL compares intervals).

Descending keys (`descending_key`) invert a key without a wrapper object where they can:
numbers are negated, text bytes are complemented (text cannot hold a NUL byte); bytea and
numeric use a small wrapper.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable
from datetime import datetime
from decimal import Context, Decimal, InvalidOperation
from fractions import Fraction
from functools import partial
from typing import Any

from .routes import ShardingError

__all__ = [
    "BOOL", "BPCHAR", "BYTEA", "DATE", "FLOAT4", "FLOAT8", "INT2", "INT4", "INT8", "INTERVAL",
    "NAME", "NUMERIC", "OID", "TEXT", "TEXT_TYPES", "TIME", "TIMESTAMP", "TIMESTAMPTZ", "UUID",
    "VARCHAR", "MergeError", "bool_cell", "canonical", "descending_key", "float_cell", "identity_reader",
    "int8_cell", "key_reader", "literal_key", "numeric_cell", "numeric_div", "type_name", "value_reader",
]

BOOL, BYTEA, NAME, INT8, INT2, INT4, TEXT, OID = 16, 17, 19, 20, 21, 23, 25, 26
FLOAT4, FLOAT8, BPCHAR, VARCHAR, DATE, TIME = 700, 701, 1042, 1043, 1082, 1083
TIMESTAMP, TIMESTAMPTZ, INTERVAL, NUMERIC, UUID = 1114, 1184, 1186, 1700, 2950

# Types whose order depends on a collation: the proxy compares their bytes ("C").
TEXT_TYPES = frozenset({TEXT, VARCHAR, BPCHAR})

_NAMES = {
    BOOL: "boolean", BYTEA: "bytea", NAME: "name", INT8: "bigint", INT2: "smallint",
    INT4: "integer", TEXT: "text", OID: "oid", FLOAT4: "real", FLOAT8: "double precision",
    BPCHAR: "character", VARCHAR: "character varying", DATE: "date",
    TIME: "time without time zone", TIMESTAMP: "timestamp without time zone",
    TIMESTAMPTZ: "timestamp with time zone", INTERVAL: "interval", NUMERIC: "numeric",
    UUID: "uuid", 790: "money", 114: "json", 3802: "jsonb", 1266: "time with time zone",
}

_Q = struct.Struct("!q")
_D = struct.Struct("!d")
_F = struct.Struct("!f")
_U32 = struct.Struct("!I")
_NUMERIC_HEAD = struct.Struct("!hhHh")

# Exact decimal arithmetic: PostgreSQL's numeric has up to 131072 digits before the point.
EXACT = Context(prec=1_000_000, Emax=10_000_000, Emin=-10_000_000, traps=[])

Key = Any
Reader = Callable[[bytes], Any]


class MergeError(ShardingError):
    """What a cross-shard merge cannot do correctly, for the client: (sqlstate, message)."""


def type_name(oid: int) -> str:
    return _NAMES.get(oid, f"type {oid}")


# --- integers, bool ------------------------------------------------------------------------

_signed = partial(int.from_bytes, byteorder="big", signed=True)
_unsigned = partial(int.from_bytes, byteorder="big", signed=False)


def _bool_text(cell: bytes) -> bool:
    return cell == b"t"


def _bool_binary(cell: bytes) -> bool:
    return cell != b"\x00"


# --- floats ---------------------------------------------------------------------------------

_MAGNITUDE = (1 << 63) - 1
_INF_BITS = 0x7FF0_0000_0000_0000
_NAN_KEY = _INF_BITS + 1


def float_key(x: float) -> int:
    """An int ordered as PostgreSQL orders floats: NaN greatest (and equal to NaN), -0 = 0."""
    if x != x:
        return _NAN_KEY
    (bits,) = _Q.unpack(_D.pack(x))
    magnitude = bits & _MAGNITUDE
    return magnitude if bits >= 0 else -magnitude


def _float8_binary_key(cell: bytes) -> int:
    bits = _signed(cell)
    magnitude = bits & _MAGNITUDE
    if magnitude > _INF_BITS:
        return _NAN_KEY
    return magnitude if bits >= 0 else -magnitude


def _float_text_key(cell: bytes) -> int:
    return float_key(float(cell))


def _float4_binary_key(cell: bytes) -> int:
    return float_key(_F.unpack(cell)[0])


def _float_text_value(cell: bytes) -> float:
    return float(cell)


def _float8_binary_value(cell: bytes) -> float:
    return _D.unpack(cell)[0]


def _float4_binary_value(cell: bytes) -> float:
    return _F.unpack(cell)[0]


# --- numeric --------------------------------------------------------------------------------

_NUMERIC_NAN_KEY = (1, 0)
_POS, _NEG, _NAN, _PINF, _NINF = 0x0000, 0x4000, 0xC000, 0xD000, 0xF000


def numeric_from_text(cell: bytes) -> Decimal:
    try:
        return Decimal(cell.decode("ascii"))
    except (InvalidOperation, UnicodeDecodeError):
        raise MergeError("0A000", f"cannot read numeric value {cell[:40]!r}") from None


def numeric_from_binary(cell: bytes) -> Decimal:
    ndigits, weight, sign, dscale = _NUMERIC_HEAD.unpack_from(cell)
    if sign == _NAN:
        return Decimal("NaN")
    if sign == _PINF:
        return Decimal("Infinity")
    if sign == _NINF:
        return Decimal("-Infinity")
    coefficient = 0
    for (digit,) in struct.iter_unpack("!h", cell[8 : 8 + 2 * ndigits]):
        coefficient = coefficient * 10000 + digit
    exponent = -4 * (ndigits - 1 - weight)  # of the last base-10000 digit
    if exponent > -dscale:
        coefficient *= 10 ** (exponent + dscale)
    elif exponent < -dscale:
        coefficient //= 10 ** (-dscale - exponent)  # digits past the display scale are zeros
    # A string is the cheap exact way in: the value with exactly `dscale` decimals.
    return Decimal(f"{'-' if sign == _NEG else ''}{coefficient}E-{dscale}")


def _numeric_key(value: Decimal) -> tuple[int, Decimal | int]:
    return _NUMERIC_NAN_KEY if value.is_nan() else (0, value)


def _numeric_text_key(cell: bytes) -> tuple[int, Decimal | int]:
    return _numeric_key(numeric_from_text(cell))


def _numeric_binary_key(cell: bytes) -> tuple[int, Decimal | int]:
    return _numeric_key(numeric_from_binary(cell))


# --- dates and times ------------------------------------------------------------------------

_DAY_US = 86_400_000_000
_EPOCH_2000 = 10_957  # 2000-01-01 in days since 1970-01-01
DATE_INFINITY, DATE_MINUS_INFINITY = (1 << 31) - 1, -(1 << 31)
TS_INFINITY, TS_MINUS_INFINITY = (1 << 63) - 1, -(1 << 63)


def _days(year: int, month: int, day: int) -> int:
    """Days since 2000-01-01 in the proleptic Gregorian calendar (year 0 = 1 BC)."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    return era * 146_097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719_468 - _EPOCH_2000


def _bad_date(cell: bytes, what: str) -> MergeError:
    return MergeError("0A000", f"cannot read {what} value {cell[:40]!r}: the proxy merges dates "
                     "and times printed in the ISO DateStyle (SET DateStyle TO ISO)")


def _date_days(text: bytes, cell: bytes, what: str) -> int:
    parts = text.split(b"-")
    if len(parts) != 3:
        raise _bad_date(cell, what)
    try:
        return _days(int(parts[0]), int(parts[1]), int(parts[2]))
    except ValueError:
        raise _bad_date(cell, what) from None


def _date_text_key(cell: bytes) -> int:
    if cell == b"infinity":
        return DATE_INFINITY
    if cell == b"-infinity":
        return DATE_MINUS_INFINITY
    if cell.endswith(b" BC"):
        return _bc_days(cell[:-3], cell, "date")
    return _date_days(cell, cell, "date")


def _bc_days(text: bytes, cell: bytes, what: str) -> int:
    """Days of a BC date: year Y BC is the astronomical year 1 - Y."""
    parts = text.split(b"-")
    if len(parts) != 3:
        raise _bad_date(cell, what)
    try:
        return _days(1 - int(parts[0]), int(parts[1]), int(parts[2]))
    except ValueError:
        raise _bad_date(cell, what) from None


def _time_us(text: bytes, cell: bytes, what: str) -> int:
    """HH:MM:SS[.ffffff] in microseconds."""
    if len(text) < 8 or text[2:3] != b":" or text[5:6] != b":":
        raise _bad_date(cell, what)
    try:
        us = (int(text[0:2]) * 3600 + int(text[3:5]) * 60 + int(text[6:8])) * 1_000_000
        if len(text) > 8:
            if text[8:9] != b".":
                raise _bad_date(cell, what)
            fraction = text[9:]
            us += int(fraction) * 10 ** (6 - len(fraction))
    except ValueError:
        raise _bad_date(cell, what) from None
    return us


def _time_text_key(cell: bytes) -> int:
    return _time_us(cell, cell, "time")


_ORDINAL_2000 = 730_120  # date(2000, 1, 1).toordinal()
_fromisoformat = datetime.fromisoformat


def _timestamp_us(cell: bytes, zoned: bool) -> int:
    if cell[4:5] == b"-" and cell[-3:] != b" BC":
        # Years 1 to 9999: the C parser (about 1 µs instead of 7).
        try:
            moment = _fromisoformat(cell.decode("ascii"))
        except ValueError:
            pass
        else:
            us = ((((moment.toordinal() - _ORDINAL_2000) * 24 + moment.hour) * 60
                   + moment.minute) * 60 + moment.second) * 1_000_000 + moment.microsecond
            if zoned:
                offset = moment.utcoffset()
                if offset is None:
                    raise _bad_date(cell, "timestamptz")
                us -= (offset.days * 86_400 + offset.seconds) * 1_000_000
            elif moment.tzinfo is not None:
                raise _bad_date(cell, "timestamp")
            return us
    return _timestamp_us_slow(cell, zoned)


def _timestamp_us_slow(cell: bytes, zoned: bool) -> int:
    what = "timestamptz" if zoned else "timestamp"
    if cell == b"infinity":
        return TS_INFINITY
    if cell == b"-infinity":
        return TS_MINUS_INFINITY
    text, bc = (cell[:-3], True) if cell.endswith(b" BC") else (cell, False)
    date, _, rest = text.partition(b" ")
    if not rest:
        raise _bad_date(cell, what)
    offset = 0
    if zoned:
        cut = max(rest.rfind(b"+"), rest.rfind(b"-"))
        if cut < 8:
            raise _bad_date(cell, what)
        zone, rest = rest[cut:], rest[:cut]
        pieces = zone[1:].split(b":")
        try:
            seconds = int(pieces[0]) * 3600 + (int(pieces[1]) * 60 if len(pieces) > 1 else 0) \
                + (int(pieces[2]) if len(pieces) > 2 else 0)
        except ValueError:
            raise _bad_date(cell, what) from None
        offset = seconds if zone[:1] == b"+" else -seconds
    days = _bc_days(date, cell, what) if bc else _date_days(date, cell, what)
    return days * _DAY_US + _time_us(rest, cell, what) - offset * 1_000_000


def _timestamp_text_key(cell: bytes) -> int:
    return _timestamp_us(cell, False)


def _timestamptz_text_key(cell: bytes) -> int:
    return _timestamp_us(cell, True)


# --- interval -------------------------------------------------------------------------------

_MONTH_US = 30 * _DAY_US
_INTERVAL_UNITS = {b"year": 12 * _MONTH_US, b"years": 12 * _MONTH_US, b"mon": _MONTH_US,
                   b"mons": _MONTH_US, b"day": _DAY_US, b"days": _DAY_US}


def _interval_text_key(cell: bytes) -> int:
    """The span of an interval printed in IntervalStyle postgres ('1 year 2 mons -3 days
    +04:05:06.5'), in microseconds, a month counted as 30 days as PostgreSQL compares them."""
    words = cell.split()
    span = 0
    i = 0
    try:
        while i < len(words):
            word = words[i]
            if b":" in word:
                negative = word[:1] == b"-"
                hours, minutes, seconds = word.lstrip(b"+-").split(b":")
                whole, _, fraction = seconds.partition(b".")
                us = (int(hours) * 3600 + int(minutes) * 60 + int(whole)) * 1_000_000
                if fraction:
                    us += int(fraction) * 10 ** (6 - len(fraction))
                span += -us if negative else us
                i += 1
                continue
            span += int(word) * _INTERVAL_UNITS[words[i + 1]]
            i += 2
    except (ValueError, KeyError, IndexError):
        raise MergeError("0A000", f"cannot read interval value {cell[:40]!r}: the proxy merges "
                        "intervals printed in IntervalStyle postgres (the default)") from None
    return span


def _interval_binary_key(cell: bytes) -> int:
    us, days, months = struct.unpack("!qii", cell)
    return us + days * _DAY_US + months * _MONTH_US


# --- bytea ----------------------------------------------------------------------------------


def _bytea_text(cell: bytes) -> bytes:
    if cell[:2] != b"\\x":
        raise MergeError("0A000", "the proxy merges bytea printed in hex (bytea_output = hex)")
    return bytes.fromhex(cell[2:].decode("ascii"))


def _bpchar_key(cell: bytes) -> bytes:
    return cell.rstrip(b" ")


def _identity(cell: bytes) -> bytes:
    return cell


# --- the tables -----------------------------------------------------------------------------

# (oid, format) -> key reader. Format 0 is text, 1 binary.
_KEYS: dict[tuple[int, int], Reader] = {
    (INT2, 0): int, (INT4, 0): int, (INT8, 0): int, (OID, 0): int,
    (INT2, 1): _signed, (INT4, 1): _signed, (INT8, 1): _signed, (OID, 1): _unsigned,
    (BOOL, 0): _bool_text, (BOOL, 1): _bool_binary,
    (FLOAT4, 0): _float_text_key, (FLOAT8, 0): _float_text_key,
    (FLOAT4, 1): _float4_binary_key, (FLOAT8, 1): _float8_binary_key,
    (NUMERIC, 0): _numeric_text_key, (NUMERIC, 1): _numeric_binary_key,
    (TEXT, 0): _identity, (TEXT, 1): _identity, (VARCHAR, 0): _identity,
    (VARCHAR, 1): _identity, (NAME, 0): _identity, (NAME, 1): _identity,
    (BPCHAR, 0): _bpchar_key, (BPCHAR, 1): _bpchar_key,
    (UUID, 0): _identity, (UUID, 1): _identity,
    (BYTEA, 0): _bytea_text, (BYTEA, 1): _identity,
    (DATE, 0): _date_text_key, (DATE, 1): _signed,
    (TIME, 0): _time_text_key, (TIME, 1): _signed,
    (TIMESTAMP, 0): _timestamp_text_key, (TIMESTAMP, 1): _signed,
    (TIMESTAMPTZ, 0): _timestamptz_text_key, (TIMESTAMPTZ, 1): _signed,
    (INTERVAL, 0): _interval_text_key, (INTERVAL, 1): _interval_binary_key,
}
# Keys made of bytes that never hold a NUL byte: complementing them reverses their order.
_NUL_FREE_BYTES = frozenset({TEXT, VARCHAR, NAME, BPCHAR, UUID})


def key_reader(oid: int, fmt: int) -> Reader | None:
    """cell bytes -> key (ascending order), or None when the proxy cannot order the type."""
    return _KEYS.get((oid, fmt))


# Types the proxy cannot order but whose cells are equal exactly when the values are (each
# value has one printed form): "char", money, macaddr, macaddr8, inet, cidr, bit, varbit,
# timetz, and arrays of integers, text, varchar, uuid and bool.
_CANONICAL = frozenset({18, 790, 829, 774, 869, 650, 1560, 1562, 1266,
                        1005, 1007, 1016, 1009, 1015, 2951, 1000})


# (type, format) whose cells are equal exactly when the values are, whatever the session's
# settings: no need to decode them to compare for equality. (Not numeric: 1.0 = 1.00; not
# float: -0 = 0; not text-format dates and times, printed per DateStyle and TimeZone.)
_CANONICAL_FORMATS = frozenset(
    {(oid, fmt) for oid in (INT2, INT4, INT8, OID, TEXT, VARCHAR, NAME, UUID, BOOL, BYTEA)
     for fmt in (0, 1)} | {(oid, 1) for oid in (DATE, TIME, TIMESTAMP, TIMESTAMPTZ)})


def canonical(oid: int, fmt: int) -> bool:
    """Equal cells <=> equal values, for this type and format."""
    return (oid, fmt) in _CANONICAL_FORMATS or oid in _CANONICAL


def _numeric_text_identity(cell: bytes) -> bytes:
    """1.500 and 1.5 alike (numeric's text has no exponent, and no negative zero)."""
    return cell.rstrip(b"0").rstrip(b".") if b"." in cell else cell


def _numeric_binary_identity(cell: bytes) -> bytes:
    # Digits are stored without leading or trailing zeros: all but the display scale.
    return cell[:6] + cell[8:]


_IDENTITIES: dict[tuple[int, int], Reader] = {
    (NUMERIC, 0): _numeric_text_identity, (NUMERIC, 1): _numeric_binary_identity,
}


def identity_reader(oid: int, fmt: int) -> Reader | None:
    """cell bytes -> a hashable value equal exactly when PostgreSQL's = says so (GROUP BY,
    DISTINCT), or None when the proxy cannot tell."""
    if canonical(oid, fmt):
        return _identity
    return _IDENTITIES.get((oid, fmt)) or _KEYS.get((oid, fmt))


_COMPLEMENT = bytes(range(255, -1, -1))


class _Reversed:
    """A key that sorts in the opposite order (for keys that cannot be negated)."""

    __slots__ = ("key",)

    def __init__(self, key: Any) -> None:
        self.key = key

    def __lt__(self, other: _Reversed) -> bool:
        return other.key < self.key

    def __gt__(self, other: _Reversed) -> bool:
        return other.key > self.key

    def __le__(self, other: _Reversed) -> bool:
        return other.key <= self.key

    def __ge__(self, other: _Reversed) -> bool:
        return other.key >= self.key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reversed) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)


def descending_key(oid: int, fmt: int) -> Reader | None:
    """cell bytes -> a key in descending order."""
    ascending = key_reader(oid, fmt)
    if ascending is None:
        return None
    if oid in _NUL_FREE_BYTES:
        # A NUL-free string's complement followed by 0xff orders the reverse way, prefixes
        # included: 'ab' > 'a' and ~'ab'+ff < ~'a'+ff because ~'b' < 0xff.
        def text_desc(cell: bytes, _key: Reader = ascending) -> bytes:
            return _key(cell).translate(_COMPLEMENT) + b"\xff"
        return text_desc
    if oid in (NUMERIC, BYTEA):
        def reversed_key(cell: bytes, _key: Reader = ascending) -> _Reversed:
            return _Reversed(_key(cell))
        return reversed_key
    if oid == BOOL:
        def bool_desc(cell: bytes, _key: Reader = ascending) -> int:
            return -_key(cell)
        return bool_desc

    def negated(cell: bytes, _key: Reader = ascending) -> int:
        return -_key(cell)
    return negated


# --- values (for sums and averages) ---------------------------------------------------------

_VALUES: dict[tuple[int, int], Reader] = {
    (INT2, 0): int, (INT4, 0): int, (INT8, 0): int,
    (INT2, 1): _signed, (INT4, 1): _signed, (INT8, 1): _signed,
    (NUMERIC, 0): numeric_from_text, (NUMERIC, 1): numeric_from_binary,
    (FLOAT4, 0): _float_text_value, (FLOAT8, 0): _float_text_value,
    (FLOAT4, 1): _float4_binary_value, (FLOAT8, 1): _float8_binary_value,
    (BOOL, 0): _bool_text, (BOOL, 1): _bool_binary,
}


def value_reader(oid: int, fmt: int) -> Reader | None:
    """cell bytes -> int, Decimal, float or bool for the types the merge computes with."""
    return _VALUES.get((oid, fmt))


def literal_key(oid: int, text: str) -> Key:
    """The key of a SQL constant compared with a column of type `oid` (a HAVING condition),
    read as PostgreSQL would compare them: a number against a float column as a float, an
    exact number against an integer or numeric column exactly."""
    raw = text.encode("utf-8")
    if oid in (FLOAT4, FLOAT8):
        try:
            return float_key(float(text))
        except ValueError:
            raise MergeError("22P02", f"invalid input syntax for type {type_name(oid)}: "
                            f"\"{text}\"") from None
    if oid in (INT2, INT4, INT8, OID):
        try:
            value = Decimal(text.strip())
        except InvalidOperation:
            raise MergeError("22P02", f"invalid input syntax for type {type_name(oid)}: "
                            f"\"{text}\"") from None
        if value.is_nan():
            return _NAN_KEY  # above every integer, as NaN is above every number
        return int(value) if value == value.to_integral_value() else value
    if oid == NUMERIC:
        try:
            return _numeric_key(Decimal(text.strip()))
        except InvalidOperation:
            raise MergeError("22P02", f"invalid input syntax for type numeric: \"{text}\"") from None
    if oid == BOOL:
        word = text.strip().lower()
        if word in ("t", "true", "y", "yes", "on", "1"):
            return True
        if word in ("f", "false", "n", "no", "off", "0"):
            return False
        raise MergeError("22P02", f"invalid input syntax for type boolean: \"{text}\"")
    if oid == UUID:
        hex_digits = text.strip().strip("{}").replace("-", "").lower()
        if len(hex_digits) != 32:
            raise MergeError("22P02", f"invalid input syntax for type uuid: \"{text}\"")
        h = hex_digits
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}".encode("ascii")
    if oid in (TEXT, VARCHAR, NAME, BPCHAR):
        return _KEYS[(oid, 0)](raw)
    if oid in (DATE, TIME, TIMESTAMP, TIMESTAMPTZ, INTERVAL):
        return _time_literal(oid, text)
    raise MergeError("0A000", f"the proxy cannot compare a {type_name(oid)} with a constant "
                    "after merging shards")


_ISO_LITERAL = re.compile(
    r"(?P<date>\d{4,}-\d{1,2}-\d{1,2})(?:[ T](?P<time>\d{1,2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?)"
    r"(?P<zone>[+-]\d{2}(?::?\d{2}(?::\d{2})?)?)?)?(?P<bc> BC)?")


def _time_literal(oid: int, text: str) -> Key:
    """A date or time constant in the ISO forms ('2024-01-31', '2024-01-31 10:00',
    '2024-01-31 10:00:00.5+02', 'infinity'), as the key of a column of type `oid`."""
    value = text.strip()
    if value.lower() in ("infinity", "-infinity"):
        infinite = {DATE: DATE_INFINITY, TIMESTAMP: TS_INFINITY, TIMESTAMPTZ: TS_INFINITY}
        if oid in infinite:
            return infinite[oid] if value[0] != "-" else -infinite[oid] - 1
    try:
        if oid == TIME:
            parts = ([*value.split(":"), "0", "0"])[:3]
            whole, _, fraction = parts[2].partition(".")
            us = (int(parts[0]) * 3600 + int(parts[1]) * 60 + int(whole)) * 1_000_000
            return us + (int(fraction.ljust(6, "0")) if fraction else 0)
        if oid == INTERVAL:
            return _interval_text_key(value.encode("ascii"))
        match = _ISO_LITERAL.fullmatch(value)
        if match is None:
            raise ValueError(value)
        year, month, day = (int(p) for p in match["date"].split("-"))
        days = _days(1 - year if match["bc"] else year, month, day)
        if oid == DATE:
            if match["time"]:
                raise ValueError(value)
            return days
        clock = match["time"] or "00:00"
        hms = ([*clock.split(":"), "0"])[:3]
        whole, _, fraction = hms[2].partition(".")
        us = (int(hms[0]) * 3600 + int(hms[1]) * 60 + int(whole)) * 1_000_000 \
            + (int(fraction.ljust(6, "0")) if fraction else 0)
        if oid == TIMESTAMPTZ:
            zone = match["zone"]
            if zone is None:
                raise MergeError("0A000", "a timestamptz constant without a UTC offset depends on "
                                 "the session's TimeZone: write it with one ('...+00') when "
                                 "comparing after merging shards")
            digits = zone[1:].replace(":", "")
            seconds = int(digits[:2]) * 3600 + int(digits[2:4] or 0) * 60 + int(digits[4:6] or 0)
            us -= (seconds if zone[0] == "+" else -seconds) * 1_000_000
        elif match["zone"]:
            raise ValueError(value)
        return days * _DAY_US + us
    except (ValueError, IndexError):
        raise MergeError("0A000", f"the constant '{text}' compared with a {type_name(oid)} after "
                         "merging shards must be written in ISO form ('2024-01-31 10:00:00')") from None


# --- writing --------------------------------------------------------------------------------

_INT8_MIN, _INT8_MAX = -(1 << 63), (1 << 63) - 1


def int8_cell(value: int, fmt: int) -> bytes:
    if not _INT8_MIN <= value <= _INT8_MAX:
        raise MergeError("22003", "bigint out of range")
    return _Q.pack(value) if fmt else str(value).encode("ascii")


def bool_cell(value: bool, fmt: int) -> bytes:
    if fmt:
        return b"\x01" if value else b"\x00"
    return b"t" if value else b"f"


def numeric_cell(value: Decimal, fmt: int) -> bytes:
    """A numeric as PostgreSQL sends it: text with the value's display scale, or the binary
    form (base-10000 digits, leading and trailing zero digits stripped)."""
    if value.is_nan():
        return _NUMERIC_HEAD.pack(0, 0, _NAN, 0) if fmt else b"NaN"
    if value.is_infinite():
        if fmt:
            # PostgreSQL sends display scale 32 here: numeric_send reads an infinity's scale
            # from header bits that its special-value flags overlap.
            return _NUMERIC_HEAD.pack(0, 0, _NINF if value < 0 else _PINF, 32)
        return b"-Infinity" if value < 0 else b"Infinity"
    sign, digits, exponent = value.as_tuple()
    dscale = max(0, -exponent)
    coefficient = int("".join(map(str, digits))) if digits else 0
    if exponent > 0:
        coefficient *= 10**exponent
    if coefficient == 0:
        sign = 0  # numeric has no negative zero
    if not fmt:
        text = str(coefficient).rjust(dscale + 1, "0")
        if dscale:
            text = f"{text[:-dscale]}.{text[-dscale:]}"
        return ("-" + text if sign else text).encode("ascii")
    # Binary: align the fraction to whole base-10000 digits.
    pad = -dscale % 4
    scaled = coefficient * 10**pad
    groups: list[int] = []
    while scaled:
        scaled, digit = divmod(scaled, 10000)
        groups.append(digit)
    groups.reverse()
    fraction_groups = (dscale + pad) // 4
    weight = len(groups) - fraction_groups - 1
    while groups and groups[-1] == 0:
        groups.pop()
    if not groups:
        weight = 0
    head = _NUMERIC_HEAD.pack(len(groups), weight, _NEG if sign else _POS, dscale)
    return head + struct.pack(f"!{len(groups)}h", *groups)


def _neighbours_interval(x: float, float4: bool) -> tuple[Fraction, Fraction]:
    """The open interval of reals that round to the positive float `x`: halfway to each
    neighbour in x's own precision."""
    if float4:
        (bits,) = _U32.unpack(_F.pack(x))
        below = _F.unpack(_U32.pack(bits - 1))[0] if bits > 0 else 0.0
        above = _F.unpack(_U32.pack(bits + 1))[0]
    else:
        below, above = math.nextafter(x, 0.0), math.nextafter(x, math.inf)
    exact = Fraction(x)
    low = (exact + Fraction(below)) / 2
    high = exact + (exact - low) if math.isinf(above) else (exact + Fraction(above)) / 2
    return low, high


def _shortest(x: float, float4: bool) -> tuple[str, int]:
    """PostgreSQL's shortest digits for the positive float `x` (Ryu as built into
    PostgreSQL): the fewest significant digits of a decimal strictly inside the interval
    that rounds to `x` (the interval's ends excluded), the closest to `x` among those, as
    (digits, decimal exponent of the first digit)."""
    low, high = _neighbours_interval(x, float4)
    exact = Fraction(x)
    first = 1
    if not float4:
        # Python's repr is the shortest with the ends included: when it is strictly inside,
        # it is PostgreSQL's answer too.
        mantissa, _, exp = f"{x!r}".partition("e")
        whole, _, fraction = mantissa.partition(".")
        number = int(whole + fraction)
        scale = len(fraction) - (int(exp) if exp else 0)
        value = Fraction(number, 10**scale) if scale >= 0 else Fraction(number * 10**-scale)
        digits = str(number).rstrip("0") or "0"
        if low < value < high:
            return digits, _exponent_of(value)
        first = len(digits)
    for precision in range(first, 18):
        mantissa, _, exp = f"{x:.{precision - 1}e}".partition("e")
        number = int(mantissa.replace(".", ""))
        unit = int(exp) - precision + 1  # exponent of the last digit
        best: tuple[Fraction, int, int] | None = None
        for candidate in (number - 1, number, number + 1):
            if candidate <= 0:
                continue
            value = Fraction(candidate) * Fraction(10) ** unit
            if not low < value < high:
                continue
            distance = abs(value - exact)
            if best is None or distance < best[0] or (distance == best[0] and candidate % 2 == 0):
                best = (distance, candidate, unit)
        if best is not None:
            _, candidate, unit = best
            digits = str(candidate)
            return digits.rstrip("0") or "0", unit + len(digits) - 1
    raise AssertionError(f"no shortest digits for {x!r}")


def _exponent_of(value: Fraction) -> int:
    """The decimal exponent of the first significant digit of a positive number."""
    exponent = len(str(value.numerator)) - len(str(value.denominator))
    if Fraction(10) ** exponent > value:
        exponent -= 1
    return exponent


def float_cell(value: float, fmt: int, *, float4: bool = False, extra_digits: int = 1) -> bytes:
    """A float8 (or float4) as PostgreSQL sends it. Text follows float8out/float4out: with
    extra_float_digits > 0 (the default, 1) the shortest exact digits, fixed notation for
    decimal exponents from -4 to 14 (float4: 5), else d.ddde+XX; with extra_float_digits <= 0
    printf's %.{15 + extra}g (float4: 6 + extra)."""
    if value != value:
        # One NaN: the one PostgreSQL reads from 'NaN'. (A sum's NaN bits depend on the order
        # of additions, which no merge can reproduce; text prints NaN either way.)
        if fmt:
            return b"\x7f\xc0\x00\x00" if float4 else b"\x7f\xf8\x00\x00\x00\x00\x00\x00"
        return b"NaN"
    if fmt:
        return _F.pack(value) if float4 else _D.pack(value)
    if value in (float("inf"), float("-inf")):
        return b"Infinity" if value > 0 else b"-Infinity"
    if extra_digits <= 0:
        digits = (6 if float4 else 15) + extra_digits
        return f"{value:.{max(digits, 1)}g}".encode("ascii")
    negative = value < 0 or (value == 0 and str(value)[0] == "-")
    if value == 0:
        return b"-0" if negative else b"0"
    digits, exponent = _shortest(abs(value), float4)
    if -4 <= exponent < (6 if float4 else 15):
        if exponent >= 0:
            whole = digits[: exponent + 1].ljust(exponent + 1, "0")
            fraction = digits[exponent + 1 :]
            text = f"{whole}.{fraction}" if fraction else whole
        else:
            text = "0." + "0" * (-exponent - 1) + digits
    else:
        mantissa = f"{digits[0]}.{digits[1:]}" if len(digits) > 1 else digits
        text = f"{mantissa}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"
    return ("-" + text if negative else text).encode("ascii")


# --- numeric division, as PostgreSQL's numeric_div --------------------------------------------

_MIN_SIG_DIGITS, _MAX_DISPLAY_SCALE = 16, 1000


def _base10000(value: Decimal) -> tuple[int, int, int]:
    """(weight, first non-zero base-10000 digit, display scale) of a finite numeric, as
    PostgreSQL's NumericVar holds it; (0, 0, dscale) for zero."""
    _sign, digits, exponent = value.as_tuple()
    dscale = max(0, -exponent)
    coefficient = int("".join(map(str, digits))) if digits else 0
    if exponent > 0:
        coefficient *= 10**exponent
    if coefficient == 0:
        return 0, 0, dscale
    # The integer part's and the fraction's digits, grouped by four from the point.
    pad = -dscale % 4
    scaled = coefficient * 10**pad
    groups = []
    while scaled:
        scaled, digit = divmod(scaled, 10000)
        groups.append(digit)
    groups.reverse()
    weight = len(groups) - (dscale + pad) // 4 - 1
    return weight, groups[0], dscale


def _div_scale(dividend: Decimal, divisor: Decimal) -> int:
    """PostgreSQL's select_div_scale: at least 16 significant digits, no less than either
    input's display scale, at most 1000."""
    weight1, first1, dscale1 = _base10000(dividend)
    weight2, first2, dscale2 = _base10000(divisor)
    qweight = weight1 - weight2
    if first1 <= first2:
        qweight -= 1
    rscale = max(_MIN_SIG_DIGITS - qweight * 4, dscale1, dscale2, 0)
    return min(rscale, _MAX_DISPLAY_SCALE)


def numeric_div(dividend: Decimal, count: int) -> Decimal:
    """sum / count as numeric_div computes it (avg of integers and numerics): the exact
    quotient rounded half away from zero at select_div_scale's scale."""
    if dividend.is_nan():
        return dividend
    if dividend.is_infinite():
        return dividend
    divisor = Decimal(count)
    rscale = _div_scale(dividend, divisor)
    sign, digits, exponent = dividend.as_tuple()
    coefficient = int("".join(map(str, digits))) if digits else 0
    # dividend = coefficient * 10^exponent; quotient * 10^rscale = coefficient * 10^(exponent
    # + rscale) / count, rounded half away from zero.
    shift = exponent + rscale
    numerator = coefficient * 10**shift if shift >= 0 else coefficient
    denominator = count if shift >= 0 else count * 10**-shift
    quotient, remainder = divmod(numerator, denominator)
    if 2 * remainder >= denominator:
        quotient += 1
    if quotient == 0:
        sign = 0
    return Decimal((sign, tuple(int(ch) for ch in str(quotient)), -rscale))
