"""Finding message boundaries in forwarded byte streams without decoding them.

The relay forwards whole chunks as they arrive; these scanners walk the headers (type
byte + length) across chunk boundaries and report only what the session must know.
"""

from __future__ import annotations

import struct

from ..pool.statements import DROPS_NONE, drop_tag
from ..protocol import ProtocolError
from ..protocol.messages import MAX_MESSAGE_LENGTH
from .sqltext import MARK_FIELD

_LEN = struct.Struct("!i").unpack_from

# Client message types that matter to the session (as ints: indexing bytes yields ints).
QUERY, SYNC, TERMINATE, PARSE = ord("Q"), ord("S"), ord("X"), ord("P")
FUNCTION_CALL, FLUSH = ord("F"), ord("H")
COPY_DATA, COPY_DONE, COPY_FAIL = ord("d"), ord("c"), ord("f")
_COPY_STREAM = frozenset((COPY_DATA, COPY_DONE, COPY_FAIL))
# The other message types a client may send after login (Parse, Bind, Describe, Execute,
# Close, Flush, FunctionCall); PostgreSQL ends the connection on any other type.
_OTHER_KNOWN = frozenset(b"PBDECHF")
_KNOWN = _OTHER_KNOWN | {QUERY, SYNC, TERMINATE, COPY_DATA, COPY_DONE, COPY_FAIL}
# Types PostgreSQL caps at 10000 bytes (PQ_SMALL_MESSAGE_LIMIT): past that it drops the
# connection without a word, so the proxy refuses them itself.
_SMALL_LIMIT = 10000
_SMALL = frozenset(b"CDEHSXcf")
# First bytes of a Query that may be PREPARE/DEALLOCATE/DISCARD/LISTEN (or a comment).
_SPECIAL_FIRST = frozenset(bytes([c]) for c in b"pPdDlL-/ \t\r\n")
# Server message types whose body the session reads.
READY, COPY_IN, COPY_BOTH, ERROR, PARAMETER = ord("Z"), ord("G"), ord("W"), ord("E"), ord("S")
COMPLETE, _D = ord("C"), ord("D")
_SERVER_WATCH = frozenset((READY, COPY_IN, COPY_BOTH, ERROR, PARAMETER, COMPLETE))
_FATAL = (b"SFATAL\x00", b"SPANIC\x00")


def _starts_set(data: bytes, at: int) -> bool:
    """Does the SQL at `at` start with SET or RESET? (A SELECT costs one slice.)"""
    first = data[at : at + 1]
    if first in b"sS" and first:
        return data[at : at + 4].upper() in (b"SET ", b"SET\t", b"SET\n")
    if first in b"rR" and first:
        return data[at : at + 6].upper() in (b"RESET ", b"RESET\t", b"RESET\n")
    return False


# First bytes of SQL whose first keyword the session must find past a comment or spaces.
_LEADING_NOISE = frozenset(bytes([c]) for c in b"-/ \t\r\n")


def _starts_change(data: bytes, at: int) -> bool:
    """Does an unnamed Parse's SQL at `at` start with SET, RESET or DISCARD, or perhaps so
    behind a comment? (A Query's DISCARD and comments are `special` instead.)"""
    first = data[at : at + 1]
    if first in (b"d", b"D"):
        return data[at : at + 8].upper() in (b"DISCARD ", b"DISCARD\t", b"DISCARD\n")
    return first in _LEADING_NOISE or _starts_set(data, at)


class ClientScan:
    """Counts what a chunk of client bytes asks of the server.

    After `feed`: `syncs` = Query, FunctionCall and Sync messages (each earns one
    ReadyForQuery unless PostgreSQL skips it: session/owed.py); `copy` = COPY messages
    (CopyData, CopyDone, CopyFail) were seen; `terminate` = offset of a Terminate
    message in the chunk, or -1; `extended` = extended-protocol messages were seen;
    `special` = a Query may start with PREPARE/DEALLOCATE/DISCARD/LISTEN (or a comment or
    space before its first keyword): the session takes a closer look; `sets` = a Query or
    unnamed Parse starts with SET or RESET (a Parse also with DISCARD, or a comment or
    space that may hide one): the session takes a closer look. Across feeds:
    `in_batch` = extended-protocol messages were sent since the last Sync, so the server
    may answer (after a Flush) or wait.
    """

    __slots__ = ("_carry", "_skip", "copy", "extended", "in_batch", "sets", "special", "syncs",
                 "terminate")

    def __init__(self) -> None:
        self._skip = 0
        self._carry = b""
        self.syncs = 0
        self.in_batch = False
        self.copy = False
        self.extended = False
        self.special = False
        self.sets = False
        self.terminate = -1

    @property
    def mid_message(self) -> bool:
        """True while the stream is inside a message (its rest has not arrived)."""
        return bool(self._skip or self._carry)

    def feed(self, data: bytes) -> None:
        self.syncs = 0
        self.copy = False
        self.extended = False
        self.special = False
        self.sets = False
        self.terminate = -1
        carried = len(self._carry)
        if carried:
            data = self._carry + data
            self._carry = b""
        pos = self._skip
        end = len(data)
        while pos + 5 <= end:
            kind = data[pos]
            length = _LEN(data, pos + 1)[0]
            if length < 4 or length > MAX_MESSAGE_LENGTH or (
                    length > _SMALL_LIMIT and kind in _SMALL):
                raise ProtocolError(f"invalid message length {length} for message type "
                                    f"{chr(kind)!r}")
            if kind == SYNC:
                self.syncs += 1
                self.in_batch = False
            elif kind == QUERY:
                self.syncs += 1
                if data[pos + 5 : pos + 6] in _SPECIAL_FIRST:
                    self.special = True
                elif _starts_set(data, pos + 5):
                    self.sets = True
            elif kind in _COPY_STREAM:
                self.copy = True
            elif kind == FUNCTION_CALL:
                self.syncs += 1  # answered like a Query, outside any batch
            elif kind == FLUSH:
                pass  # asks for pending answers; earns none of its own
            elif kind == TERMINATE:
                self.terminate = pos - carried
                self._skip = 0
                return
            elif kind not in _OTHER_KNOWN:
                raise ProtocolError(f"invalid frontend message type {kind} ({chr(kind)!r})")
            else:
                self.in_batch = True
                self.extended = True
                if kind == PARSE and _starts_change(data, pos + 6) and data[pos + 5] == 0:
                    self.sets = True
            pos += 1 + length
        if pos >= end:
            self._skip = pos - end
        else:
            # A header cut short is forwarded as it came, and PostgreSQL reads the type
            # byte first: refuse an unknown one now, as the complete headers above.
            kind = data[pos]
            if kind not in _KNOWN:
                raise ProtocolError(f"invalid frontend message type {kind} ({chr(kind)!r})")
            self._carry = data[pos:]
            self._skip = 0

    def reset(self) -> None:
        self._skip = 0
        self._carry = b""
        self.in_batch = False


class ServerScan:
    """Reports ReadyForQuery statuses, COPY-in and FATAL errors in server bytes.

    `feed` returns the bytes that may go to the client now: a message the session must
    read (ReadyForQuery, ErrorResponse, CopyInResponse) is held back until it is complete,
    so a FATAL error is never half-forwarded. `fatal` = a FATAL ErrorResponse was found (the
    server is about to close); the returned bytes stop before it and `fatal_body` is its body.
    `copy_in`: the server is in COPY FROM STDIN, reading client data (from its
    CopyInResponse to its next ReadyForQuery). `marked`: (start, end) in the returned bytes
    of errors the proxy had the server raise (session/sqltext.py). `dropped`: the last
    DEALLOCATE or DISCARD ALL completed in the chunk (pool/statements.py's drop_tag), or 0.
    """

    __slots__ = ("_carry", "_skip", "copy_in", "dropped", "errors", "fatal", "fatal_body", "marked",
                 "params", "ready")

    def __init__(self) -> None:
        self._skip = 0
        self._carry = b""
        # Empty tuples until a feed: no lists kept for a client that has sent nothing yet.
        self.ready: list[bytes] | tuple[()] = ()  # the status byte of each ReadyForQuery, in order
        self.copy_in = False
        self.fatal = False
        self.fatal_body = b""
        self.errors = 0  # ErrorResponses seen, until the session adds them to its pool's count
        self.params: list[bytes] | tuple[()] = ()  # ParameterStatus bodies in this chunk
        self.marked: list[tuple[int, int]] | tuple[()] = ()
        self.dropped = DROPS_NONE

    def feed(self, data: bytes) -> bytes:
        self.ready = ready = []
        if self.params:
            self.params = ()
        if self.marked:
            self.marked = ()
        if self.dropped:
            self.dropped = DROPS_NONE
        if self._carry:
            data = self._carry + data
            self._carry = b""
        pos = self._skip
        end = len(data)
        while pos + 5 <= end:
            kind = data[pos]
            length = _LEN(data, pos + 1)[0]
            if length < 4:
                raise ProtocolError(f"server sent invalid message length {length}")
            nxt = pos + 1 + length
            if kind in _SERVER_WATCH:
                if nxt > end:  # hold the whole (small) message until it is complete
                    break
                if kind == READY:
                    ready.append(data[pos + 5 : nxt])
                    self.copy_in = False
                elif kind == COMPLETE:
                    if nxt > pos + 5 and data[pos + 5] == _D:  # DEALLOCATE, DISCARD (or DELETE...)
                        self.dropped = drop_tag(data[pos + 5 : nxt]) or self.dropped
                elif kind == ERROR:
                    if data.startswith(_FATAL, pos + 5):
                        self.fatal = True
                        self.fatal_body = data[pos + 5 : nxt]
                        self._skip = 0
                        return data[:pos]
                    self.errors += 1
                    if MARK_FIELD in data[pos + 5 : nxt]:
                        self.marked = [*self.marked, (pos, nxt)]
                elif kind == PARAMETER:
                    if not self.params:
                        self.params = []
                    self.params.append(data[pos + 5 : nxt])  # type: ignore[union-attr]
                else:
                    self.copy_in = True
            pos = nxt
        if pos >= end:
            self._skip = pos - end
            return data
        self._carry = data[pos:]
        self._skip = 0
        return data[:pos]

    @property
    def at_boundary(self) -> bool:
        """True between messages (nothing of one half-read)."""
        return not self._skip and not self._carry

    def reset(self) -> None:
        self._skip = 0
        self._carry = b""
        self.fatal = self.copy_in = False
