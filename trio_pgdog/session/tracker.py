"""The extended-protocol path: rename statements, inject and hide responses, in order.

Once the proxy rewrites a client's extended-protocol stream (renaming statements, preparing
them on the server first, answering Close or a repeated Parse itself) the responses no longer
line up one-to-one with what the client sent. The Tracker keeps a queue of the responses the
client is owed, one entry per message that earns a response, and rebuilds the server's
stream from it: hiding responses to messages the proxy added, inserting the ones the proxy
answers itself, and dropping both where PostgreSQL answers nothing (session/owed.py: the
messages skipped after an error, a Sync inside COPY data). In session pooling it only counts:
statements keep their names.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import TYPE_CHECKING

from ..pool.statements import drop_tag
from ..protocol import ProtocolError
from ..protocol import extended as ext
from ..protocol.messages import MAX_MESSAGE_LENGTH
from .owed import COPY_END, ENDS_READY, CopyInput, Owed, drop_copy_ends, enter_copy, skip_to_sync
from .params import changes_settings
from .sqltext import MARK_FIELD, unmarked

if TYPE_CHECKING:
    from ..pool.statements import ServerStatements
    from .prepared import StatementRegistry

_LEN = struct.Struct("!i").unpack_from

PARSE_COMPLETE = b"1\x00\x00\x00\x04"
CLOSE_COMPLETE = b"3\x00\x00\x00\x04"
READY_IDLE = b"Z\x00\x00\x00\x05I"

# What ends the server's answer to each kind of client message.
_ENDS_PARSE = frozenset(b"1")
_ENDS_BIND = frozenset(b"2")
_ENDS_CLOSE = frozenset(b"3")
_ENDS_DESCRIBE = frozenset(b"Tn")
_ENDS_EXECUTE = frozenset(b"CIs")
_ENDS_READY = ENDS_READY
_ENDS_NOTHING: frozenset[int] = frozenset()  # the proxy's own answers: nothing from the server

_READY, _ERROR, _COPY_IN, _PARAMETER = ord("Z"), ord("E"), ord("G"), ord("S")
_COMPLETE = ord("C")
# Server messages read past the response queue (a DataRow tests them all at once).
_ALSO_READ = frozenset((_COPY_IN, _PARAMETER, _COMPLETE))
_FATAL = (b"SFATAL\x00", b"SPANIC\x00")


class Expect(Owed):
    """One response the client is owed, or a synthetic one the proxy will send itself."""

    __slots__ = ("hidden", "statement", "synthetic")

    def __init__(self, ends: frozenset[int] = _ENDS_READY, *, sync: bool = False,
                 hidden: bool = False, statement: bytes | None = None,
                 synthetic: bytes | None = None):
        super().__init__(ends, sync=sync)
        self.hidden = hidden          # the proxy added the message: the client sees no answer
        self.statement = statement    # a Parse of this shared name: forget it if it fails
        self.synthetic = synthetic    # the proxy answers this one itself


# Shared, never mutated entries for messages forwarded unchanged.
_E_PARSE, _E_BIND = Expect(_ENDS_PARSE), Expect(_ENDS_BIND)
_E_DESCRIBE, _E_CLOSE = Expect(_ENDS_DESCRIBE), Expect(_ENDS_CLOSE)
_E_EXECUTE, _E_SYNC = Expect(_ENDS_EXECUTE), Expect(sync=True)
_E_QUERY = Expect()  # Query, FunctionCall: a ReadyForQuery, unless skipped after an error
_NAMED = Expect()  # marker: the message may name a statement
_COPY_ENDS = frozenset(b"cf")
# Execute, Sync, Query, FunctionCall earn a response; Flush and COPY data do not.
_PLAIN: dict[int, Expect | None] = {
    0x45: _E_EXECUTE, 0x53: _E_SYNC, 0x51: _E_QUERY, 0x46: _E_QUERY, 0x48: None, 0x64: None,
    0x63: None, 0x66: None, 0x50: _NAMED, 0x42: _NAMED, 0x44: _NAMED, 0x43: _NAMED,
}
_UNNAMED: dict[int, Expect] = {0x50: _E_PARSE, 0x42: _E_BIND, 0x44: _E_DESCRIBE, 0x43: _E_CLOSE}


def _names_statement(kind: int, buf: bytes, pos: int, nxt: int) -> bool:
    """Does this Parse/Bind/Describe/Close name a prepared statement (not unnamed, not a
    portal), or are the names the proxy looks at malformed? Either way `_client_message`
    reads it (and refuses a malformed one)."""
    body = pos + 5
    if kind == 0x50:
        return body >= nxt or buf[body] != 0
    if kind == 0x42:
        portal_end = buf.find(0, body, nxt)
        return portal_end < 0 or portal_end == nxt - 1 or buf[portal_end + 1] != 0
    # Describe/Close: 'S' or 'P', then a name whose NUL is the last byte.
    if body + 2 > nxt or buf[nxt - 1] != 0:
        return True
    which = buf[body]
    return which != 0x50 and (which != 0x53 or buf[body + 1] != 0)


class Tracker:
    """Per-client rewriting state for one session (sans-IO). `rename`: give statements
    shared names (transaction pooling); without it the Tracker only counts answers."""

    def __init__(self, registry: StatementRegistry, *, rename: bool = True):
        self.registry = registry
        self.rename = rename
        self.statements: dict[bytes, tuple[bytes, bytes]] = {}  # client name -> (shared, Parse rest)
        # Client names of statements that are SET/RESET/DISCARD, and the SQL of each Bind of
        # one in the last client chunk: the session follows the settings they change.
        self.set_statements: set[bytes] = set()
        self.ran_sets: list[bytes] = []
        self.queue: deque[Expect] = deque()
        self.skipping = False      # the server is ignoring messages up to the next Sync
        self.owed = 0              # ReadyForQuery the server will still send
        self.copy = CopyInput()    # the server reads the client's next messages as copy input
        self.copy_in = False       # the server is in COPY FROM STDIN (its last word was G)
        self.params: list[bytes] = []  # ParameterStatus bodies in the last server chunk
        self.fatal_body = b""      # the server's FATAL ErrorResponse body, once seen
        self.errors = 0            # ErrorResponses seen, until the session counts them
        self._cbuf = b""
        self._sbuf = b""

    # --- client to server -----------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Nothing owed and nothing half-received: the session may leave tracked mode."""
        return not self.queue and not self._cbuf and not self._sbuf

    def owe_ready(self, count: int, copy_in: bool = False) -> None:
        """Responses to untracked messages still due, each a ReadyForQuery (they come from a
        Query or Sync with nothing extended before it: nothing skips them); `copy_in`: the
        server is reading copy input."""
        self.queue.extend(Expect(sync=True) for _ in range(count))
        self.owed += count
        self.copy_in = self.copy.open = copy_in

    def from_client(self, data: bytes, server: ServerStatements) -> tuple[bytes, bytes]:
        """(bytes for the server, bytes for the client now) for a chunk of client bytes.

        Messages that need no renaming (the common unnamed statements and portals) are
        forwarded as runs of the original bytes; only named ones are rebuilt.
        """
        buf = self._cbuf + data if self._cbuf else data
        out: list[bytes] = []
        queue = self.queue
        if self.ran_sets:
            self.ran_sets = []
        pos = start = 0
        end = len(buf)
        while pos + 5 <= end:
            kind = buf[pos]
            length = _LEN(buf, pos + 1)[0]
            if length < 4 or length > MAX_MESSAGE_LENGTH:
                raise ProtocolError(f"invalid message length {length}")
            nxt = pos + 1 + length
            if nxt > end:
                break
            if self.copy.open and self.copy.consumes(kind):
                pos = nxt  # copy input, forwarded as it is: no answer of its own
                continue
            expect = _PLAIN.get(kind)  # unknown types pass through; PostgreSQL answers them
            if expect is _NAMED and not (self.rename and _names_statement(kind, buf, pos, nxt)):
                expect = _UNNAMED.get(kind)
            if expect is _NAMED:
                out.append(buf[start:pos])
                self._client_message(kind, buf, pos, nxt, out, server)
                start = nxt
            elif kind == 0x53:  # Sync: answered even after an error, and ends the skipping
                self.skipping = False
                queue.append(expect)
                self.owed += 1
            elif expect is not None and not self.skipping:
                queue.append(expect)
                self.owed += expect.ends is _ENDS_READY
            elif kind in _COPY_ENDS and queue:
                queue.append(COPY_END)  # a COPY may start ahead of it
            pos = nxt
        self._cbuf = buf[pos:]
        if start == 0 and pos == end:
            return buf, self._drain_synthetic()
        out.append(buf[start:pos])
        return b"".join(out), self._drain_synthetic()

    def answer_locally(self, data: bytes) -> bytes | None:
        """Answers for a batch of only Parse (of statements some server accepted), Close
        statement, Flush and Sync messages, which need no server yet; None otherwise."""
        if self._cbuf or self.queue or data[:1] != b"P" or data[5:6] == b"\x00":
            return None  # cheap test first: such a batch starts with a named Parse
        messages = _split_complete(data)
        if messages is None or not messages or messages[-1][0] != 0x53:
            return None
        out: list[bytes] = []
        changes: list[tuple[bytes, bytes | None]] = []  # (name, Parse rest or None: closed)
        for kind, body in messages:
            if kind == 0x50:
                name, rest = ext.parse_name(body)  # ProtocolError when malformed
                if not name or self.registry.name_for(rest) not in self.registry.known_good:
                    return None
                changes.append((name, rest))
                out.append(PARSE_COMPLETE)
            elif kind == 0x43:
                which, name = ext.target(body, b"C")
                if which != b"S" or not name:
                    return None
                changes.append((name, None))
                out.append(CLOSE_COMPLETE)
            elif kind == 0x53:
                out.append(READY_IDLE)
            elif kind != 0x48:  # Flush
                return None
        for name, rest in changes:  # all answerable: apply them in order
            if rest is None:
                self._forget(name)
            else:
                self._learn(name, rest, self.registry.name_for(rest))
        return b"".join(out)

    def _client_message(self, kind: int, buf: bytes, pos: int, nxt: int, out: list[bytes],
                        server: ServerStatements) -> None:
        """A Parse, Bind, Describe or Close that names a statement: rename it."""
        body = buf[pos + 5 : nxt]
        if kind == 0x50:  # Parse
            name, rest = ext.parse_name(body)
            shared = self.registry.name_for(rest)
            self._learn(name, rest, shared)
            if shared in server:
                self._expect(synthetic=PARSE_COMPLETE)
            else:
                self._prepare(shared, rest, out, server, hidden=False)
        elif kind == 0x42:  # Bind
            portal, name, rest = ext.bind_statement(body)
            known = self.statements.get(name)
            if known is None:  # never prepared here: PostgreSQL reports it
                out.append(buf[pos:nxt])
            else:
                self._ensure(known, out, server)
                out.append(ext.build_bind(portal, known[0], rest))
                if self.set_statements and name in self.set_statements:
                    self.ran_sets.append(known[1])
            self._expect(_ENDS_BIND)
        elif kind == 0x44:  # Describe statement
            known = self.statements.get(ext.target(body, b"D")[1])
            if known is None:
                out.append(buf[pos:nxt])
            else:
                self._ensure(known, out, server)
                out.append(ext.build_target(b"D", b"S", known[0]))
            self._expect(_ENDS_DESCRIBE)
        else:  # Close statement: shared statements stay on the server for other clients
            self._forget(ext.target(body, b"C")[1])
            self._expect(synthetic=CLOSE_COMPLETE)

    def _learn(self, name: bytes, rest: bytes, shared: bytes) -> None:
        self.statements[name] = (shared, rest)
        if changes_settings(rest):
            self.set_statements.add(name)
        elif self.set_statements:
            self.set_statements.discard(name)

    def _forget(self, name: bytes) -> None:
        self.statements.pop(name, None)
        self.set_statements.discard(name)

    def _expect(self, ends: frozenset[int] = _ENDS_NOTHING, *, synthetic: bytes | None = None) -> None:
        if not self.skipping:  # PostgreSQL ignores everything up to Sync after an error
            self.queue.append(Expect(ends, synthetic=synthetic))

    def _ensure(self, known: tuple[bytes, bytes], out: list[bytes], server: ServerStatements) -> None:
        shared, rest = known
        if shared not in server:
            self._prepare(shared, rest, out, server, hidden=True)

    def _prepare(self, shared: bytes, rest: bytes, out: list[bytes], server: ServerStatements,
                 *, hidden: bool) -> None:
        if self.skipping:
            return  # the server would ignore it; the Bind/Describe after it fails the same way
        evicted = server.add(shared)
        if evicted is not None:
            self._close(evicted, out)
        if server.unsure:  # the server may have it after all: no duplicate Parse
            self._close(shared, out)
        out.append(ext.build_parse(shared, rest))
        self.queue.append(Expect(_ENDS_PARSE, hidden=hidden, statement=shared))

    def _close(self, shared: bytes, out: list[bytes]) -> None:
        out.append(ext.build_target(b"C", b"S", shared))
        self.queue.append(Expect(_ENDS_CLOSE, hidden=True))

    def _drain_synthetic(self) -> bytes:
        out = b""
        queue = self.queue
        while queue and queue[0].synthetic is not None:
            out += queue.popleft().synthetic  # type: ignore[operator]
            drop_copy_ends(queue)
        return out

    # --- server to client -----------------------------------------------------------------------

    def from_server(self, data: bytes, server: ServerStatements) -> tuple[bytes, list[bytes], bool]:
        """(bytes for the client, statuses of visible ReadyForQuery, FATAL seen).

        Incomplete trailing messages are kept until the rest arrives. After a FATAL error
        the bytes for the client stop just before it (the server is closing) and
        `fatal_body` holds it. `copy_in` is set when the server starts COPY FROM STDIN.
        """
        self.params: list[bytes] = []  # ParameterStatus bodies, hidden ones included
        buf = self._sbuf + data if self._sbuf else data
        out: list[bytes] = []
        ready: list[bytes] = []
        queue = self.queue
        pos, end, start = 0, len(buf), 0
        while pos + 5 <= end:
            kind = buf[pos]
            length = _LEN(buf, pos + 1)[0]
            if length < 4:
                raise ProtocolError(f"server sent invalid message length {length}")
            nxt = pos + 1 + length
            if nxt > end:
                break
            head = queue[0] if queue else None
            if kind == _ERROR and buf.startswith(_FATAL, pos + 5):
                out.append(buf[start:pos])
                self.fatal_body = buf[pos + 5 : nxt]
                self._sbuf = b""
                return b"".join(out), ready, True
            if head is not None and head.hidden and kind != _ERROR:
                out.append(buf[start:pos])  # drop this message from the client's stream
                start = nxt
            if kind == _READY:
                self.skipping = self.copy_in = self.copy.open = False
                if head is not None and head.ends is _ENDS_READY:
                    queue.popleft()
                    self.owed -= 1
                    drop_copy_ends(queue)
                    if not head.hidden:
                        ready.append(buf[pos + 5 : nxt])
                else:
                    ready.append(buf[pos + 5 : nxt])
            elif kind == _ERROR:
                self.errors += 1
                self.copy.open = False  # an error ends a COPY
                if MARK_FIELD in buf[pos + 5 : nxt]:  # raised for the proxy: shown without
                    out += [buf[start:pos], unmarked(buf[pos:nxt])]  # what is the proxy's own
                    start = nxt
                if head is not None and head.ends is not _ENDS_READY:
                    self._skip_to_sync(server)
            elif head is not None and kind in head.ends:
                queue.popleft()
                drop_copy_ends(queue)
                if head.statement is not None:
                    self.registry.known_good.add(head.statement)
                elif kind == _COMPLETE and buf[pos + 5 : pos + 6] == b"D":  # an Execute's
                    self._completed(buf[pos + 5 : nxt], server)
            elif kind in _ALSO_READ:
                if kind == _COPY_IN:
                    self.copy_in = True
                    removed, self.copy.open = enter_copy(queue)
                    self.owed -= sum(1 for e in removed if e.ends is _ENDS_READY)
                elif kind == _PARAMETER:
                    self.params.append(buf[pos + 5 : nxt])
                elif buf[pos + 5 : pos + 6] == b"D":  # a Query's CommandComplete
                    self._completed(buf[pos + 5 : nxt], server)
            pos = nxt
            if queue and queue[0].synthetic is not None:
                out.append(buf[start:pos])
                start = pos
                out.append(self._drain_synthetic())
        out.append(buf[start:pos])
        self._sbuf = buf[pos:]
        return b"".join(out), ready, False

    def _completed(self, tag: bytes, server: ServerStatements) -> None:
        """A CommandComplete: if it reports a DEALLOCATE or DISCARD ALL, the server kept
        only the statements whose Parse was sent after it (still in the queue)."""
        how = drop_tag(tag)
        if how:
            server.dropped(how, [e.statement for e in self.queue if e.statement is not None])

    def _skip_to_sync(self, server: ServerStatements) -> None:
        """An extended-protocol error: PostgreSQL skips to Sync, so do the owed answers."""
        for failed in skip_to_sync(self.queue):
            if failed is COPY_END:
                continue
            if failed.statement is not None:
                server.discard(failed.statement)  # the Parse did not create it
            elif failed.hidden and failed.ends is _ENDS_CLOSE:
                server.unsure = True  # an evicted statement's Close skipped: it is still there
            self.owed -= failed.ends is _ENDS_READY  # a Query or FunctionCall never run
        # With no Sync sent yet, the client's next messages up to its Sync are skipped too.
        self.skipping = not self.queue

    def reset_server_side(self) -> None:
        """The server connection went away: nothing more will come from it."""
        self.queue.clear()
        self._sbuf = b""
        self.skipping = self.copy_in = self.copy.open = False
        self.owed = 0


def _split_complete(data: bytes) -> list[tuple[int, bytes]] | None:
    """(type, body) of each message, or None unless `data` is whole messages only."""
    messages: list[tuple[int, bytes]] = []
    pos, end = 0, len(data)
    while pos < end:
        if pos + 5 > end:
            return None
        length = _LEN(data, pos + 1)[0]
        nxt = pos + 1 + length
        if length < 4 or nxt > end:
            return None
        messages.append((data[pos], data[pos + 5 : nxt]))
        pos = nxt
    return messages
