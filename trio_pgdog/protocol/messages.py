"""Builders and parsers for the PostgreSQL v3 messages the proxy writes or inspects.

Sans-IO: bytes in, bytes out. The data path forwards most messages untouched; only the
messages listed here are ever decoded or produced by the proxy.
"""

from __future__ import annotations

import struct

PROTOCOL_V3 = 196608  # 3.0
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102

# Startup packets are tiny; PostgreSQL itself refuses anything over 10000 bytes.
MAX_STARTUP_LENGTH = 10000
# PostgreSQL's own upper bound for a message (1 GiB).
MAX_MESSAGE_LENGTH = 0x3FFFFFFF

_I32 = struct.Struct("!i")
_HEADER = struct.Struct("!ci")

AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12


def message(kind: bytes, body: bytes = b"") -> bytes:
    """Frame a typed message: type byte, int32 length (including itself), body."""
    return kind + _I32.pack(len(body) + 4) + body


def cstr(value: str) -> bytes:
    return value.encode() + b"\x00"


# --- messages the proxy sends to clients -------------------------------------------------


def error_response(sqlstate: str, text: str, *, severity: str = "ERROR", hint: str | None = None,
                   kind: bytes = b"E") -> bytes:
    body = b"S" + cstr(severity) + b"V" + cstr(severity) + b"C" + cstr(sqlstate) + b"M" + cstr(text)
    if hint:
        body += b"H" + cstr(hint)
    return message(kind, body + b"\x00")


def auth_request(code: int, payload: bytes = b"") -> bytes:
    return message(b"R", _I32.pack(code) + payload)


def auth_ok() -> bytes:
    return auth_request(AUTH_OK)


def auth_sasl(mechanisms: list[str]) -> bytes:
    return auth_request(AUTH_SASL, b"".join(cstr(m) for m in mechanisms) + b"\x00")


def parameter_status(name: str, value: str) -> bytes:
    return message(b"S", cstr(name) + cstr(value))


def backend_key_data(pid: int, secret: int) -> bytes:
    return message(b"K", struct.pack("!ii", pid, secret))


def negotiate_protocol_version(minor: int, unsupported: list[str]) -> bytes:
    body = _I32.pack(minor) + _I32.pack(len(unsupported)) + b"".join(cstr(o) for o in unsupported)
    return message(b"v", body)


def ready_for_query(status: bytes = b"I") -> bytes:
    return message(b"Z", status)


# --- messages the proxy sends to servers -------------------------------------------------


def startup_message(params: dict[str, str]) -> bytes:
    body = _I32.pack(PROTOCOL_V3) + b"".join(cstr(k) + cstr(v) for k, v in params.items()) + b"\x00"
    return _I32.pack(len(body) + 4) + body


def cancel_request(pid: int, secret: int) -> bytes:
    return struct.pack("!iiii", 16, CANCEL_REQUEST, pid, secret)


def query(sql: str) -> bytes:
    return message(b"Q", cstr(sql))


def password_message(payload: bytes) -> bytes:
    return message(b"p", payload)


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return message(b"p", cstr(mechanism) + _I32.pack(len(data)) + data)


def terminate() -> bytes:
    return message(b"X")


# --- parsers ------------------------------------------------------------------------------


def parse_header(data: bytes | bytearray | memoryview, offset: int = 0) -> tuple[bytes, int]:
    """Type byte and length (which counts itself, not the type byte) at `offset`."""
    kind, length = _HEADER.unpack_from(data, offset)
    return kind, length


def parse_cstrings(body: bytes) -> list[str]:
    """A run of NUL-terminated strings (the terminating empty string is dropped)."""
    parts = body.split(b"\x00")
    return [p.decode("utf-8", "replace") for p in parts if p]


def parse_startup_params(body: bytes) -> dict[str, str]:
    """Key/value pairs of a StartupMessage body after the protocol version."""
    if not body.endswith(b"\x00"):
        raise ValueError("startup packet parameters are not NUL-terminated")
    items = body[:-1].split(b"\x00")
    if items and items[-1] == b"":
        items.pop()
    if len(items) % 2:
        raise ValueError("startup packet has a parameter name without a value")
    it = iter(items)
    return {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in zip(it, it, strict=True)}


def parse_error_fields(body: bytes) -> dict[str, str]:
    """ErrorResponse/NoticeResponse body into {field code: value}."""
    fields: dict[str, str] = {}
    for part in body.split(b"\x00"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields


def parse_parameter_status(body: bytes) -> tuple[str, str]:
    name, _, rest = body.partition(b"\x00")
    value, _, _ = rest.partition(b"\x00")
    return name.decode("utf-8", "replace"), value.decode("utf-8", "replace")


def parse_auth(body: bytes) -> tuple[int, bytes]:
    (code,) = _I32.unpack_from(body)
    return code, body[4:]


def parse_sasl_initial(body: bytes) -> tuple[str, bytes]:
    mech, sep, rest = body.partition(b"\x00")
    if not sep or len(rest) < 4:
        raise ValueError("malformed SASLInitialResponse")
    (n,) = _I32.unpack_from(rest)
    data = rest[4:] if n < 0 else rest[4 : 4 + n]
    return mech.decode("ascii", "replace"), data


def parse_data_row(body: bytes) -> list[str | None]:
    """A DataRow's columns as text; None for NULL."""
    (count,) = struct.unpack_from("!h", body)
    pos, values = 2, []
    for _ in range(count):
        (n,) = _I32.unpack_from(body, pos)
        pos += 4
        if n < 0:
            values.append(None)
        else:
            values.append(body[pos : pos + n].decode("utf-8", "replace"))
            pos += n
    return values


def unpack_i32(data: bytes, offset: int = 0) -> int:
    return _I32.unpack_from(data, offset)[0]
