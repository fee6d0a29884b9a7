"""One shard's server connection as a sharded session uses it (session/sharded.py).

What goes to the server passes through a Tracker of its own (statement names shared between
clients, statements prepared where they are needed; the client's statement names are shared
by every shard's Tracker), and its answers come back one message at a time, as the client
is to see them (the Tracker's hidden answers removed, its own put in place).

When a statement runs on several shards, each link reads its server in a task of its own
(`prefetch`, in a nursery the session owns) while the merger takes the answers in the order
the client needs them: a shard that fails is seen at once, whatever the others are doing, and
the others' statements can be cancelled. A link holds at most PREFETCH_LIMIT bytes of answers
the merger has not taken; past that it waits (the server then waits too).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import trio

from ..netio import ConnectionClosed
from ..pool.server import ServerConnection
from ..protocol import ProxyError
from ..protocol import errors as codes
from ..protocol import messages as m
from .tracker import Tracker

_LEN = struct.Struct("!i").unpack_from
PREFETCH_LIMIT = 256 * 1024
_ERROR = ord("E")


class ShardLost(Exception):
    """A shard's server connection failed in the middle of a statement."""

    def __init__(self, shard: int, server: ServerConnection, why: str):
        super().__init__(why)
        self.shard = shard
        self.server = server
        self.why = why

    def error(self) -> ProxyError:
        return ProxyError(codes.CONNECTION_FAILURE,
                          f"shard {self.shard}: server connection lost ({self.server.host}:"
                          f"{self.server.port}: {self.why}); any open transaction was rolled back",
                          hint="the proxy is still connected: retry the transaction")


class ShardLink:
    __slots__ = ("_arrived", "_buf", "_failure", "_pos", "_prefetching", "_taken", "last_copy_in",
                 "params", "server", "shard", "tracker")

    def __init__(self, shard: int, server: ServerConnection, tracker: Tracker):
        self.shard = shard
        self.server = server
        self.tracker = tracker
        self._buf = b""   # answers for the client not yet read, from _pos on
        self._pos = 0
        self.params: list[bytes] = []  # ParameterStatus bodies the server sent since last asked
        self.last_copy_in: bytes | None = None  # its CopyInResponse to a COPY under way
        self._prefetching = False
        self._arrived = trio.Event()   # the prefetch task read more (or failed)
        self._taken = trio.Event()     # the merger took answers (room to read more)
        self._failure: ShardLost | None = None

    def reset_for_reuse(self) -> bool:
        """Can this link (its Tracker) serve the shard's next connection? Only when nothing
        of the last one is left in it; the server is replaced before it is used again."""
        if self._prefetching or self._pos < len(self._buf) or not self.tracker.idle:
            return False
        self._buf, self._pos, self.params = b"", 0, []
        self.last_copy_in, self._failure = None, None
        return True

    def outgoing(self, data: bytes) -> bytes:
        """Client messages for this shard as the server is to get them; the Tracker's own
        answers to them (a Parse it answers itself) join the answers to read."""
        data, now = self.tracker.from_client(data, self.server.statements)
        if now:
            self._buf = self._buf[self._pos:] + now
            self._pos = 0
        return data

    async def send(self, data: bytes) -> None:
        self.server.stats.bytes_received += len(data)
        try:
            await self.server.conn.send(data)
        except ConnectionClosed as exc:
            raise ShardLost(self.shard, self.server, str(exc)) from None

    async def message(self) -> bytes:
        """The next whole message of this shard's answers (as the client is to see it)."""
        while True:
            buf, pos = self._buf, self._pos
            if pos + 5 <= len(buf):
                nxt = pos + 1 + _LEN(buf, pos + 1)[0]
                if nxt <= len(buf):
                    self._pos = nxt
                    if self._prefetching:
                        self._taken.set()
                    return buf[pos:nxt]
            await self.fill()

    async def error_until_ready(self) -> bytes | None:
        """Read the answers up to the ReadyForQuery: the first ErrorResponse, or None (for
        the proxy's own statements, whose answers the client does not see)."""
        error = None
        while True:
            message = await self.message()
            if message[:1] == b"E":
                error = error or message
            elif message[:1] == b"Z":
                return error

    def take(self) -> bytes:
        """Every answer already read (whole messages only: the Tracker keeps a partial one)."""
        data = self._buf[self._pos:]
        self._buf, self._pos = b"", 0
        return data

    @property
    def owes(self) -> bool:
        """The server still owes answers to what was sent."""
        return bool(self.tracker.queue)

    async def fill(self) -> None:
        """More answers: from the prefetch task if one runs, else read here."""
        if not self._prefetching:
            await self._read()
            return
        if self._failure is not None:
            raise self._failure
        self._arrived = trio.Event()
        await self._arrived.wait()
        if self._failure is not None:
            raise self._failure

    def prefetching(self) -> None:
        """From now on the prefetch task (about to start) reads this server, not `fill`."""
        self._prefetching = True
        self._failure = None

    async def prefetch(self, on_error: Callable[[ShardLink], None]) -> None:
        """Read the server's answers ahead of the merger until it owes nothing more (the
        task is cancelled when the unit is done); `on_error` as soon as one is an error.
        Call `prefetching` first."""
        try:
            while self.owes:
                if len(self._buf) - self._pos > PREFETCH_LIMIT:
                    self._taken = trio.Event()
                    await self._taken.wait()
                    continue
                start = len(self._buf) - self._pos
                try:
                    await self._read()
                except ShardLost as lost:
                    self._failure = lost
                    return
                finally:
                    self._arrived.set()
                if has_error(self._buf, self._pos + start):
                    on_error(self)
        finally:
            self._prefetching = False
            self._arrived.set()

    async def _read(self) -> None:
        server = self.server
        try:
            data = await server.conn.recv()
        except ConnectionClosed as exc:
            raise ShardLost(self.shard, server, str(exc)) from None
        except trio.ClosedResourceError:  # the departure watch gave up on this server
            raise ShardLost(self.shard, server, "closed by the proxy") from None
        visible, ready, fatal = self.tracker.from_server(data, server.statements)
        if fatal:
            said = m.parse_error_fields(self.tracker.fatal_body)
            raise ShardLost(self.shard, server, f"FATAL {said.get('C', '?')}: {said.get('M', '')}")
        # The shard's pool counts what its server answered (pool/stats.py); the merged
        # answer the client gets is the sharded relay's.
        server.stats.answered(len(visible), ready)
        if self.tracker.errors:
            server.stats.errors += self.tracker.errors
            self.tracker.errors = 0
        if ready:
            server.status = ready[-1]
        if self.tracker.params:
            self.params += self.tracker.params
        self._buf = self._buf[self._pos:] + visible
        self._pos = 0


def has_error(buf: bytes, pos: int) -> bool:
    """Is there an ErrorResponse among the whole messages of `buf` from `pos` on?"""
    end = len(buf)
    while pos + 5 <= end:
        if buf[pos] == _ERROR:
            return True
        pos += 1 + _LEN(buf, pos + 1)[0]
    return False
