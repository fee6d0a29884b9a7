"""`pgdog.unique_id()`: 64-bit ids made by the proxy, unique without a central sequence.

A sharded table cannot take its keys from one sequence per shard (each shard would hand out
the same numbers), so the proxy replaces every `pgdog.unique_id()` in a statement's text by a
fresh id before it routes the statement: `INSERT INTO t VALUES (pgdog.unique_id(), ...)` then
goes to the shard of the id it got. An id is, like Twitter's Snowflake:

    41 bits: milliseconds since 2026-01-01 UTC (until 2095)
    10 bits: `node_id` of [general] (0-1023, one per proxy process sharing the shards)
    12 bits: a per-process sequence within the millisecond (4,096 ids; past that, the next
             millisecond is waited for)

The clock going backwards never makes ids go back: the last millisecond used is kept and the
ids go on from it until the clock catches up. A restart starts from the clock, which has moved
on by then (a restart takes longer than a millisecond).

Each occurrence in a text is its own id, and the text is the statement's: the id is a literal
by the time PostgreSQL sees it, so `SELECT pgdog.unique_id() FROM generate_series(1, 3)` gives
the same id three times (one execution of one occurrence), as pgDog does.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

EPOCH_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
NODE_BITS, SEQUENCE_BITS = 10, 12
MAX_NODE = (1 << NODE_BITS) - 1
_SEQUENCE_MASK = (1 << SEQUENCE_BITS) - 1


def _now_ms() -> int:
    return time.time_ns() // 1_000_000 - EPOCH_MS


class UniqueIds:
    """The process's id generator (one per process: the sequence must be shared)."""

    def __init__(self, clock: Callable[[], int] = _now_ms):
        self._clock = clock
        self._last = -1      # the millisecond of the last id
        self._sequence = 0

    def next(self, node: int) -> int:
        now = self._clock()
        if now > self._last:
            self._last, self._sequence = now, 0
        else:  # the same millisecond, or the clock went back: go on from the last one
            self._sequence = (self._sequence + 1) & _SEQUENCE_MASK
            if self._sequence == 0:  # 4,096 ids this millisecond: the next one
                self._last = self._wait_past(self._last)
        return (self._last << (NODE_BITS + SEQUENCE_BITS)) | (node << SEQUENCE_BITS) \
            | self._sequence

    def _wait_past(self, last: int) -> int:
        """The first millisecond after `last`: at most one millisecond of spinning, unless
        the clock went back, when the ids run ahead of it (they must not repeat)."""
        deadline = time.monotonic() + 0.002
        while True:
            now = self._clock()
            if now > last:
                return now
            if time.monotonic() > deadline:
                return last + 1


IDS = UniqueIds()


def describe(unique_id: int) -> tuple[int, int, int]:
    """(unix time in ms, node, sequence) of an id: for logs and tests."""
    return ((unique_id >> (NODE_BITS + SEQUENCE_BITS)) + EPOCH_MS,
            (unique_id >> SEQUENCE_BITS) & MAX_NODE, unique_id & _SEQUENCE_MASK)


# What the scan steps over (kept as it is) and what it replaces: the call, spelt with any
# case and spaces; not inside a string, a quoted name or a comment.
_TOKEN = re.compile(
    r"""(pgdog\s*\.\s*unique_id\s*\(\s*\))"""     # 1 the call: replaced
    r"""|--[^\n]*|/\*.*?\*/"""                    # comments
    r"""|"(?:[^"]|"")*\""""                       # a quoted identifier
    r"""|[Ee]'(?:[^'\\]|\\.|'')*'"""              # an escape string
    r"""|'(?:[^']|'')*'"""                        # a standard string
    r"""|(\$(?:[A-Za-z_]\w*)?\$).*?\2"""          # 2 a dollar-quoted string
    r"""|\$(\d+)"""                               # 3 a parameter
    r"""|[A-Za-z_\x80-\uffff][\w$\x80-\uffff]*""",  # a word (`xpgdog` is not `pgdog`)
    re.S | re.I)


def mentions(data: bytes) -> bool:
    """Might this message's text call pgdog.unique_id()? A quick look before the scan, for
    every statement of a sharded database: the name in lower or upper case, as the
    `pgdog.*` settings are looked for (a mixed-case spelling is left to PostgreSQL)."""
    return b"unique_id" in data or b"UNIQUE_ID" in data


def replace_unique_ids(sql: str, node: int, ids: UniqueIds = IDS) -> str | None:
    """`sql` with each `pgdog.unique_id()` replaced by a fresh id; None if it has none."""
    pieces, _highest = _split(sql)
    if len(pieces) == 1:
        return None
    return "".join(piece if i % 2 == 0 else str(ids.next(node)) for i, piece in enumerate(pieces))


def parameterize_unique_ids(sql: str, declared: int) -> tuple[str, int, int] | None:
    """For a statement prepared once and run many times: `sql` with each
    `pgdog.unique_id()` replaced by a new parameter `$n::int8` after the statement's own
    (`declared`: the parameter types its Parse gave), whose value the proxy adds to each
    Bind. (the text, the first such parameter's number, how many); None if it has none."""
    pieces, highest = _split(sql)
    count = len(pieces) // 2
    if not count:
        return None
    first = max(highest, declared) + 1
    text = "".join(piece if i % 2 == 0 else f"${first + i // 2}::int8"
                   for i, piece in enumerate(pieces))
    return text, first, count


def _split(sql: str) -> tuple[list[str], int]:
    """The text around each call (text, call, text, ... call, text) and the highest `$n`."""
    pieces: list[str] = []
    highest = last = 0
    for match in _TOKEN.finditer(sql):
        if match.group(1) is not None:
            pieces += [sql[last:match.start()], match.group(1)]
            last = match.end()
        elif match.group(3) is not None:
            highest = max(highest, int(match.group(3)))
    pieces.append(sql[last:])
    return pieces, highest
