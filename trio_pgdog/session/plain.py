"""What the C path may carry by itself: the rules of trio_pgdog/_reactor.c, in Python.

The Reactor relays a client's chunk in C only if it is *plain* (`plain_owed`), and a server's
answer only up to the first message the session must read (`scan_answer`). These twins state
the rules where they are easy to read, and the differential tests (tests/test_plain_scan.py)
hold the C code to them on random byte streams cut at random points.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from ..protocol.messages import MAX_MESSAGE_LENGTH
from .scan import _SMALL, _SMALL_LIMIT, _SPECIAL_FIRST, _starts_change, _starts_set

_LEN = struct.Struct("!I").unpack_from

# Server messages relayed in C: the ordinary parts of an answer (RowDescription, DataRow,
# NoData, CommandComplete, ParseComplete, BindComplete, CloseComplete, PortalSuspended,
# ParameterDescription, EmptyQueryResponse, NoticeResponse, CopyOutResponse and its data).
RELAYED = frozenset(b"123CDInNTtsHdc")


def plain_owed(data: bytes) -> int:
    """How many ReadyForQuery the server owes for `data` if the chunk is plain, else 0.

    Plain: whole messages ending at a Query or Sync; no Query that the Python path looks at
    closer (PREPARE, DEALLOCATE, DISCARD, LISTEN, SET, RESET, a leading comment or space,
    pgdog.unique_id()); extended messages only for the unnamed portal, and for the unnamed
    statement parsed in the same chunk and not SET, RESET, DISCARD or COPY.
    """
    return classify(data, named=False)[0]


def classify(data: bytes, named: bool = True) -> tuple[int, bool]:
    """(plain_owed, whether a Bind names a statement); with `named`, a Bind may name one (the
    C path then checks that the session knows it and the server has it: rename_binds)."""
    pos, end = 0, len(data)
    owed, parsed, bound, in_batch, names = 0, False, False, False, False
    while pos < end:
        if end - pos < 5:
            return 0, False
        kind = data[pos]
        length = _LEN(data, pos + 1)[0]
        if length < 4 or length > MAX_MESSAGE_LENGTH or length > end - pos - 1:
            return 0, False
        if length > _SMALL_LIMIT and kind in _SMALL:
            return 0, False
        body, nxt = pos + 5, pos + 1 + length
        if kind == 0x51:  # Query
            sql = data[body:nxt]
            if (in_batch or not sql or sql[:1] in _SPECIAL_FIRST or _starts_set(sql, 0)
                    or b"unique_id" in sql or b"UNIQUE_ID" in sql):
                return 0, False
            owed += 1
        elif kind == 0x50:  # Parse
            sql = data[body + 1 : nxt]
            if nxt - body < 2 or data[body] != 0 or _starts_change(sql, 0) \
                    or sql[:4].upper() == b"COPY":  # its Sync is read as copy input: no answer
                return 0, False
            parsed = in_batch = True
        elif kind == 0x42:  # Bind: portal "", the statement parsed here or (named) known
            bind = data[body:nxt]
            if len(bind) < 2 or bind[0] != 0:
                return 0, False
            ok = parsed if bind[1] == 0 else named and 0 in bind[1:]
            if not ok:
                return 0, False
            names = names or bind[1] != 0
            bound = in_batch = True
        elif kind == 0x44:  # Describe the statement parsed here, or the unnamed portal
            target = data[body:nxt]
            if len(target) != 2 or target[1] != 0 or not (
                    parsed if target[:1] == b"S" else target[:1] == b"P" and (parsed or bound)):
                return 0, False
            in_batch = True
        elif kind == 0x45:  # Execute the unnamed portal
            if not (parsed or bound) or nxt - body < 5 or data[body] != 0:
                return 0, False
            in_batch = True
        elif kind == 0x53:  # Sync
            owed += 1
            in_batch = False
        else:
            return 0, False
        pos = nxt
    return (0, False) if in_batch else (owed, names)


class Answer:
    """A server's answer as the C path scans it: ReadyForQuery owed and counted."""

    __slots__ = ("owed", "queries", "skip", "status", "xacts")

    def __init__(self, owed: int):
        self.owed = owed
        self.skip = 0
        self.status = b"I"
        self.queries = self.xacts = 0

    def scan(self, data: bytes) -> int:
        """Where the C path hands `data` back (its length: nowhere)."""
        pos, end = 0, len(data)
        if self.skip:
            if self.skip >= end:
                self.skip -= end
                return end
            pos, self.skip = self.skip, 0
        while pos < end:
            if self.owed == 0 or end - pos < 5:
                return pos
            kind = data[pos]
            length = _LEN(data, pos + 1)[0]
            if length < 4 or length > MAX_MESSAGE_LENGTH:
                return pos
            nxt = pos + 1 + length
            if kind == 0x5A:  # ReadyForQuery
                if length != 5 or nxt > end or data[pos + 5] not in b"ITE":
                    return pos
                self._ready(data[pos + 5 : nxt])
            elif kind == 0x43:  # CommandComplete: DEALLOCATE and DISCARD go to Python
                if end - pos < 6:
                    return pos
                if data[pos + 5] == 0x44 and (nxt > end or data.startswith(
                        (b"DEALLOCATE", b"DISCARD"), pos + 5, nxt)):
                    return pos
            elif kind not in RELAYED:
                return pos
            if nxt > end:
                self.skip = nxt - end
                return end
            pos = nxt
        return pos

    def _ready(self, status: bytes) -> None:
        self.status = status
        self.owed -= 1
        self.queries += 1
        if status == b"I":
            self.xacts += 1


def scan_answer(chunks: Iterable[bytes], owed: int) -> tuple[int, int, bytes, int, int]:
    """(bytes relayed, owed left, last status, ReadyForQuery relayed, idle ones), feeding
    `chunks` in order up to the hand-back point (the C twin: _reactor.scan_server)."""
    answer, relayed = Answer(owed), 0
    for chunk in chunks:
        upto = answer.scan(chunk)
        relayed += upto
        if upto < len(chunk) or answer.owed == 0:
            break
    return relayed, answer.owed, answer.status, answer.queries, answer.xacts
