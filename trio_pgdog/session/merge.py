"""One answer from several shards' answers to the same message (sans-IO).

When a statement runs on several shards, each answers as PostgreSQL answers; the client must
get one answer, as from one PostgreSQL holding all the rows: one ParseComplete, one
RowDescription (the shards' must agree), every shard's rows, one CommandComplete whose count is
the total, one ReadyForQuery whose status covers every shard, and at most one error, naming the
shard it came from.
"""

from __future__ import annotations

from ..protocol import messages as m
from ..router.sharding.row_merge import parse_row_description

# CommandComplete tags whose last word is a row count to add up across shards.
_COUNTED = frozenset((b"SELECT", b"INSERT", b"UPDATE", b"DELETE", b"MERGE", b"COPY", b"MOVE",
                      b"FETCH"))


def command_tag(message: bytes) -> bytes:
    """The tag of a whole CommandComplete message (`INSERT 0 3`)."""
    return message[5:].rstrip(b"\x00")


def total_tag(tags: list[bytes]) -> bytes:
    """One CommandComplete tag for the same statement run on several shards: counts added up
    (`SELECT 7`, `INSERT 0 7`), any other tag as the first shard gave it."""
    first = tags[0]
    words = first.split(b" ")
    if words[0] not in _COUNTED or not words[-1].isdigit():
        return first
    total = 0
    for tag in tags:
        count = tag.rsplit(b" ", 1)[-1]
        total += int(count) if count.isdigit() else 0
    return b" ".join([*words[:-1], str(total).encode()])


def command_complete(tag: bytes) -> bytes:
    return m.message(b"C", tag + b"\x00")


def combined_status(statuses: list[bytes], failed: bool = False) -> bytes:
    """The transaction status the client sees when each shard reports its own: failed if any
    failed (or the client was sent an error inside a transaction), in a transaction if any
    is, else idle."""
    if b"E" in statuses or (failed and b"T" in statuses):
        return b"E"
    if b"T" in statuses:
        return b"T"
    return b"I"


def naming_shard(error: bytes, shard: int) -> bytes:
    """A whole ErrorResponse message with `shard N: ` before its message text."""
    fields = error[5:].split(b"\x00")
    named = [b"M" + f"shard {shard}: ".encode() + f[1:] if f[:1] == b"M" else f
             for f in fields if f]
    return m.message(b"E", b"".join(f + b"\x00" for f in named) + b"\x00")


def disagreement(shard: int, what: str) -> bytes:
    """The error for shards whose answers cannot be one answer (e.g. other columns)."""
    return m.error_response("0A000", f"shard {shard} answered with {what} than shard 0's; the "
                            "statement cannot be answered as one result")


def same_columns(first: bytes, other: bytes) -> bool:
    """Do two shards' descriptions (RowDescription or NoData messages) agree? Their table
    oids aside: each cluster numbers its own tables."""
    if first == other:
        return True
    if first[:1] != b"T" or other[:1] != b"T":
        return False
    return columns(first) == columns(other)


def columns(description: bytes) -> list[tuple[object, ...]]:
    """A RowDescription's columns without their table oids."""
    return [(name, attnum, oid, size, mod, fmt)
            for name, _table, attnum, oid, size, mod, fmt in parse_row_description(description)]
