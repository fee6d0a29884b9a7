"""PostgreSQL type names to type OIDs, for result columns the proxy describes itself.

The OIDs are fixed in PostgreSQL's catalog (``pg_type.dat``) and the same on every server
version, so a static table is enough for the built-in types; user-defined types have
per-database OIDs and are not known here.

``type_oid`` accepts the spellings SQL accepts: canonical names (``int4``), SQL names
(``integer``, ``character varying``, ``timestamp with time zone``), any case and spacing, an
optional ``pg_catalog.`` prefix, a type modifier (``varchar(20)``, ``numeric(10, 2)``) and
a trailing ``[]`` for the array type.
"""

from __future__ import annotations

import re

__all__ = ["ARRAY_OIDS", "TYPE_OIDS", "require_type_oid", "type_oid"]

# Canonical pg_type names -> OID.
_CANONICAL: dict[str, int] = {
    "bool": 16,
    "bytea": 17,
    '"char"': 18,  # the one-byte internal type; plain `char` is character(1), i.e. bpchar
    "name": 19,
    "int8": 20,
    "int2": 21,
    "int4": 23,
    "regproc": 24,
    "text": 25,
    "oid": 26,
    "tid": 27,
    "xid": 28,
    "cid": 29,
    "json": 114,
    "xml": 142,
    "point": 600,
    "cidr": 650,
    "float4": 700,
    "float8": 701,
    "unknown": 705,
    "money": 790,
    "macaddr": 829,
    "inet": 869,
    "bpchar": 1042,
    "varchar": 1043,
    "date": 1082,
    "time": 1083,
    "timestamp": 1114,
    "timestamptz": 1184,
    "interval": 1186,
    "timetz": 1266,
    "bit": 1560,
    "varbit": 1562,
    "numeric": 1700,
    "regclass": 2205,
    "regtype": 2206,
    "record": 2249,
    "void": 2278,
    "uuid": 2950,
    "pg_lsn": 3220,
    "jsonb": 3802,
    "xid8": 5069,
}

# SQL spellings -> canonical name.
_ALIASES: dict[str, str] = {
    "boolean": "bool",
    "char": "bpchar",
    "character": "bpchar",
    "character varying": "varchar",
    "smallint": "int2",
    "int": "int4",
    "integer": "int4",
    "bigint": "int8",
    "real": "float4",
    "float": "float8",
    "double precision": "float8",
    "decimal": "numeric",
    "time without time zone": "time",
    "time with time zone": "timetz",
    "timestamp without time zone": "timestamp",
    "timestamp with time zone": "timestamptz",
    "bit varying": "varbit",
}

# Element type OID -> array type OID (`text[]` is `_text`, ...).
ARRAY_OIDS: dict[int, int] = {
    16: 1000,  # _bool
    17: 1001,  # _bytea
    18: 1002,  # _char
    19: 1003,  # _name
    20: 1016,  # _int8
    21: 1005,  # _int2
    23: 1007,  # _int4
    25: 1009,  # _text
    26: 1028,  # _oid
    114: 199,  # _json
    142: 143,  # _xml
    650: 651,  # _cidr
    700: 1021,  # _float4
    701: 1022,  # _float8
    790: 791,  # _money
    829: 1040,  # _macaddr
    869: 1041,  # _inet
    1042: 1014,  # _bpchar
    1043: 1015,  # _varchar
    1082: 1182,  # _date
    1083: 1183,  # _time
    1114: 1115,  # _timestamp
    1184: 1185,  # _timestamptz
    1186: 1187,  # _interval
    1266: 1270,  # _timetz
    1560: 1561,  # _bit
    1562: 1563,  # _varbit
    1700: 1231,  # _numeric
    2205: 2210,  # _regclass
    2206: 2211,  # _regtype
    2950: 2951,  # _uuid
    3220: 3221,  # _pg_lsn
    3802: 3807,  # _jsonb
}

# Every accepted plain name (no modifiers, no []) -> OID, including the `_text` array spellings.
TYPE_OIDS: dict[str, int] = {
    **_CANONICAL,
    **{alias: _CANONICAL[canonical] for alias, canonical in _ALIASES.items()},
}
_BY_OID = {oid: name for name, oid in _CANONICAL.items()}
for _element, _array in ARRAY_OIDS.items():
    TYPE_OIDS["_" + _BY_OID[_element].strip('"')] = _array

_SPACES = re.compile(r"\s+")
# `varchar(20)`, `numeric(10, 2)`, `timestamp(3) with time zone`: the modifier does not change the OID.
_MODIFIER = re.compile(r"\s*\(\s*\d+\s*(?:,\s*-?\d+\s*)?\)")
_ARRAY_SUFFIX = re.compile(r"(?:\s*\[\s*\d*\s*\])+$")


def type_oid(name: str) -> int | None:
    """The OID of a built-in type given by any SQL spelling, or None when it is not known."""
    text = _SPACES.sub(" ", name.strip())
    if not text.startswith('"'):
        text = text.lower()
    array = False
    suffix = _ARRAY_SUFFIX.search(text)
    if suffix:
        array = True
        text = text[: suffix.start()]
    elif text.endswith(" array"):  # `integer ARRAY`, the SQL standard spelling
        array = True
        text = text[: -len(" array")]
    text = _MODIFIER.sub("", text).strip()
    if text.startswith("pg_catalog."):
        text = text[len("pg_catalog.") :]
    oid = TYPE_OIDS.get(text)
    if oid is None or not array:
        return oid
    return ARRAY_OIDS.get(oid)


def require_type_oid(name: str) -> int:
    """`type_oid`, raising ValueError with the accepted names when the type is not known."""
    oid = type_oid(name)
    if oid is None:
        examples = ", ".join(
            ("text", "varchar", "integer", "bigint", "boolean", "numeric", "double precision",
             "json", "jsonb", "uuid", "bytea", "date", "timestamptz", "interval", "text[]")
        )
        raise ValueError(f"unknown type {name!r} (use a built-in PostgreSQL type such as {examples})")
    return oid
