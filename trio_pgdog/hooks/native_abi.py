"""ctypes mirrors of hooks/include/pgdog_plugin.h (plugin ABI version 1).

Each string struct comes in two flavours with the same layout: the `...In` structs are what
the proxy passes to a plugin (`data` is a `c_char_p`, so a Python `bytes` can be assigned to
it and ctypes keeps that object alive as long as the struct), the others are what a plugin
returns (`data` is a `c_void_p`, read with `ctypes.string_at(data, len)` so embedded NULs
and missing terminators are handled). The layouts are checked against each other at import.
"""

from __future__ import annotations

import ctypes
from ctypes import (
    POINTER,
    Structure,
    c_char,
    c_char_p,
    c_int16,
    c_int32,
    c_size_t,
    c_uint8,
    c_uint16,
    c_uint32,
    c_uint64,
    c_void_p,
)

__all__ = [
    "ABI_VERSION",
    "EVENT_SYMBOLS",
    "NO_DECISION",
    "ROLE_PRIMARY",
    "ROLE_REPLICA",
    "ROLE_UNKNOWN",
    "SHARD_ALL",
    "SHARD_UNKNOWN",
    "PgdogColumn",
    "PgdogConnectIn",
    "PgdogError",
    "PgdogInputIn",
    "PgdogInputNested",
    "PgdogIntercept",
    "PgdogOutput",
    "PgdogParameterIn",
    "PgdogQueryDoneIn",
    "PgdogServerIn",
    "PgdogStr",
    "PgdogStrIn",
    "bind_functions",
]

ABI_VERSION = 1  # PGDOG_PLUGIN_ABI_VERSION

# PgdogOutput.decision: the values of api.Action.
NO_DECISION, FORWARD, BLOCK, INTERCEPT, REWRITE = 0, 1, 2, 3, 4
SHARD_UNKNOWN, SHARD_ALL = -2, -1
ROLE_UNKNOWN, ROLE_PRIMARY, ROLE_REPLICA = 0, 1, 2

# The event (api.EVENTS) each exported function implements.
EVENT_SYMBOLS = {
    "pre_connect": "pgdog_pre_connect",
    "after_connect": "pgdog_after_connect",
    "pre_query": "pgdog_route_query",
    "post_query": "pgdog_post_query",
}


# --- what a plugin returns ------------------------------------------------------------


class PgdogStr(Structure):
    _fields_ = [("data", c_void_p), ("len", c_size_t)]


class PgdogColumn(Structure):
    _fields_ = [("name", PgdogStr), ("type_oid", c_uint32)]


class PgdogError(Structure):
    _fields_ = [("sqlstate", c_char * 6), ("message", PgdogStr)]


class PgdogIntercept(Structure):
    _fields_ = [
        ("num_columns", c_uint32),
        ("columns", c_void_p),     # const PgdogColumn *
        ("num_rows", c_uint32),
        ("cells", c_void_p),       # const PgdogStr *
    ]


class PgdogOutput(Structure):
    _fields_ = [
        ("decision", c_int32),
        ("shard", c_int32),
        ("role", c_int32),
        ("error", PgdogError),
        ("intercept", PgdogIntercept),
        ("rewrite", PgdogStr),
    ]


# --- what the proxy passes ------------------------------------------------------------


class PgdogStrIn(Structure):
    _fields_ = [("data", c_char_p), ("len", c_size_t)]


class PgdogParameterIn(Structure):
    _fields_ = [("data", c_char_p), ("len", c_int32), ("format", c_int16)]


class PgdogInputNested(Structure):
    """PgdogInput as the header declares it; see PgdogInputIn."""

    _fields_ = [
        ("query", PgdogStrIn),
        ("num_parameters", c_uint32),
        ("parameters", POINTER(PgdogParameterIn)),
        ("database", PgdogStrIn),
        ("user", PgdogStrIn),
        ("shards", c_uint32),
        ("has_primary", c_uint8),
        ("has_replicas", c_uint8),
        ("in_transaction", c_uint8),
        ("ast_json", PgdogStrIn),
    ]


class PgdogInputIn(Structure):
    """PgdogInput with its PgdogStr members flattened (query_data, query_len, ...): the same
    bytes (checked below), but setting a field costs one ctypes store instead of building a
    PgdogStr, which is most of the adapter's time per statement."""

    _fields_ = [
        ("query_data", c_char_p),
        ("query_len", c_size_t),
        ("num_parameters", c_uint32),
        ("parameters", POINTER(PgdogParameterIn)),
        ("database_data", c_char_p),
        ("database_len", c_size_t),
        ("user_data", c_char_p),
        ("user_len", c_size_t),
        ("shards", c_uint32),
        ("has_primary", c_uint8),
        ("has_replicas", c_uint8),
        ("in_transaction", c_uint8),
        ("ast_json_data", c_char_p),
        ("ast_json_len", c_size_t),
    ]


class PgdogConnectIn(Structure):
    _fields_ = [
        ("user", PgdogStrIn),
        ("database", PgdogStrIn),
        ("application_name", PgdogStrIn),
        ("client_addr", PgdogStrIn),
    ]


class PgdogServerIn(Structure):
    _fields_ = [
        ("database", PgdogStrIn),
        ("host", PgdogStrIn),
        ("port", c_uint16),
        ("role", c_int32),
        ("shard", c_int32),
    ]


class PgdogQueryDoneIn(Structure):
    _fields_ = [
        ("query", PgdogStrIn),
        ("database", PgdogStrIn),
        ("user", PgdogStrIn),
        ("duration_us", c_uint64),
        ("rows", c_uint64),
        ("sqlstate", c_char * 6),
        ("shard", c_int32),
        ("role", c_int32),
    ]


def _flat_fields(cls: type[Structure], base: int = 0, prefix: str = "") -> list[tuple[str, int, int]]:
    """(name, offset, size) of every scalar member, nested structures flattened."""
    out = []
    for name, ctype, *_ in cls._fields_:
        field = getattr(cls, name)
        if isinstance(ctype, type) and issubclass(ctype, Structure):
            out += _flat_fields(ctype, base + field.offset, f"{prefix}{name}_")
        else:
            out.append((prefix + name, base + field.offset, field.size))
    return out


assert ctypes.sizeof(PgdogInputIn) == ctypes.sizeof(PgdogInputNested)
assert ctypes.alignment(PgdogInputIn) == ctypes.alignment(PgdogInputNested)
assert _flat_fields(PgdogInputIn) == _flat_fields(PgdogInputNested)
assert _flat_fields(PgdogStrIn) == _flat_fields(PgdogStr)


# --- function signatures --------------------------------------------------------------

# symbol: (restype, argtypes). Set once per loaded library.
_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "pgdog_plugin_abi_version": (c_uint32, []),
    "pgdog_init": (None, []),
    "pgdog_fini": (None, []),
    "pgdog_configure": (c_int32, [PgdogStrIn]),
    "pgdog_route_query": (PgdogOutput, [PgdogInputIn]),
    "pgdog_output_free": (None, [POINTER(PgdogOutput)]),
    "pgdog_pre_connect": (PgdogOutput, [PgdogConnectIn]),
    "pgdog_after_connect": (PgdogStr, [PgdogServerIn]),
    "pgdog_post_query": (None, [PgdogQueryDoneIn]),
}


def bind_functions(lib: ctypes.CDLL) -> dict[str, ctypes._CFuncPtr]:
    """The ABI's functions `lib` exports, by symbol name, with restype/argtypes set."""
    found = {}
    for symbol, (restype, argtypes) in _SIGNATURES.items():
        try:
            fn = getattr(lib, symbol)
        except AttributeError:
            continue
        fn.restype = restype
        fn.argtypes = argtypes
        found[symbol] = fn
    return found
