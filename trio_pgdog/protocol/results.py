"""Result messages the proxy writes itself (hook answers), and the Bind/Parse details hooks
read. Bodies follow the PostgreSQL v3 protocol; everything here is sans-IO."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from .. import speedups
from .messages import cstr, message

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")

PARSE_COMPLETE = message(b"1")
BIND_COMPLETE = message(b"2")
CLOSE_COMPLETE = message(b"3")
NO_DATA = message(b"n")

TEXT_OID = 25


def row_description(columns: Sequence[tuple[str, int]]) -> bytes:
    """RowDescription for text-format columns (name, type oid); NoData for none."""
    if not columns:
        return NO_DATA
    body = [_I16.pack(len(columns))]
    for name, oid in columns:
        # table oid 0, column 0, type oid, type size -1 (variable), modifier -1, text format
        body.append(cstr(name) + struct.pack("!ihIhih", 0, 0, oid, -1, -1, 0))
    return message(b"T", b"".join(body))


def data_row(cells: Sequence[str | None]) -> bytes:
    body = [_I16.pack(len(cells))]
    for cell in cells:
        if cell is None:
            body.append(_I32.pack(-1))
        else:
            raw = cell.encode()
            body.append(_I32.pack(len(raw)) + raw)
    return message(b"D", b"".join(body))


def command_complete(tag: str) -> bytes:
    return message(b"C", cstr(tag))


def parameter_description(oids: Sequence[int]) -> bytes:
    return message(b"t", _I16.pack(len(oids)) + b"".join(_U32.pack(o) for o in oids))


def select_result(columns: Sequence[tuple[str, int]], rows: Sequence[Sequence[str | None]],
                  *, describe: bool) -> bytes:
    """The answer to a SELECT: RowDescription (if `describe`), DataRows, CommandComplete."""
    out = [row_description(columns)] if describe else []
    out += [data_row(row) for row in rows]
    out.append(command_complete(f"SELECT {len(rows)}"))
    return b"".join(out)


def bind_parameters_py(rest: bytes) -> tuple[tuple[bytes | None, ...], tuple[int, ...]]:
    """A Bind body after its portal and statement names: (values, format per value); a
    length of -1 is NULL (None). Twin of _speedups.bind_parameters.

    Raises ValueError when the body is malformed (PostgreSQL would reject it too): counts
    that are negative or disagree, a value running past the message, a negative length
    other than -1, result format codes missing, or bytes after them.
    """
    try:
        (nformats,) = _I16.unpack_from(rest, 0)
        if nformats < 0:
            raise ValueError("malformed Bind message: negative parameter format count")
        formats = struct.unpack_from(f"!{nformats}h", rest, 2)
        pos = 2 + 2 * nformats
        (count,) = _I16.unpack_from(rest, pos)
        pos += 2
        if count < 0:
            raise ValueError("malformed Bind message: negative parameter count")
        if nformats > 1 and nformats != count:
            raise ValueError("malformed Bind message: as many format codes as parameters, "
                             "one, or none are expected")
        values: list[bytes | None] = []
        for _ in range(count):
            (n,) = _I32.unpack_from(rest, pos)
            pos += 4
            if n == -1:
                values.append(None)
            elif n < 0:
                raise ValueError(f"malformed Bind message: parameter length {n}")
            else:
                if pos + n > len(rest):
                    raise ValueError("malformed Bind message: a parameter runs past the message")
                values.append(rest[pos : pos + n])
                pos += n
        (nresults,) = _I16.unpack_from(rest, pos)
        if nresults < 0:
            raise ValueError("malformed Bind message: negative result format count")
        if len(rest) != pos + 2 + 2 * nresults:
            raise ValueError(f"malformed Bind message: {nresults} result format codes declared "
                             f"but {len(rest) - pos - 2} bytes of them sent")
    except struct.error:
        raise ValueError("malformed Bind message: it ends too soon") from None
    if nformats == 0:
        per_value = (0,) * count
    elif nformats == 1:
        per_value = formats * count
    else:
        per_value = formats
    return tuple(values), per_value


bind_parameters = speedups.c.bind_parameters if speedups.c is not None else bind_parameters_py


def bind_values_end(rest: bytes) -> tuple[tuple[int, ...], int, int]:
    """A Bind body after its names (already checked whole): (its parameter format codes,
    how many values, where the values end and the result format codes begin)."""
    (nformats,) = _I16.unpack_from(rest, 0)
    formats = struct.unpack_from(f"!{nformats}h", rest, 2)
    pos = 2 + 2 * nformats
    (count,) = _I16.unpack_from(rest, pos)
    pos += 2
    for _ in range(count):
        (size,) = _I32.unpack_from(rest, pos)
        pos += 4 + max(size, 0)
    return formats, count, pos


def bind_result_formats(rest: bytes) -> tuple[int, ...]:
    """The result format codes at the end of a Bind body after its names."""
    pos = bind_values_end(rest)[2]
    (nresults,) = _I16.unpack_from(rest, pos)
    return struct.unpack_from(f"!{nresults}h", rest, pos + 2)


def build_bind_rest(values: Sequence[bytes | None], formats: Sequence[int],
                    results: Sequence[int]) -> bytes:
    """A Bind body after its names: parameter formats, values (None: NULL), result formats."""
    parts = [_I16.pack(len(formats)), *(_I16.pack(f) for f in formats), _I16.pack(len(values))]
    for value in values:
        parts.append(b"\xff\xff\xff\xff" if value is None else _I32.pack(len(value)) + value)
    parts += [_I16.pack(len(results)), *(_I16.pack(f) for f in results)]
    return b"".join(parts)


def parse_parameter_types(rest: bytes) -> tuple[int, ...]:
    """The parameter type oids a Parse declares (its body after the name: query, types)."""
    end = rest.find(b"\x00") + 1
    try:
        (count,) = _I16.unpack_from(rest, end)
        return struct.unpack_from(f"!{count}I", rest, end + 2)
    except struct.error:
        return ()


def result_rows(tag: bytes) -> int:
    """Rows returned or affected, from a CommandComplete tag ("SELECT 3", "INSERT 0 1")."""
    last = tag.rstrip(b"\x00").rpartition(b" ")[2]
    return int(last) if last.isdigit() else 0
