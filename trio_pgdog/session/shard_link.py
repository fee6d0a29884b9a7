"""One shard's server connection as a sharded session uses it (session/sharded.py).

What goes to the server passes through a Tracker of its own (statement names shared between
clients, statements prepared where they are needed; the client's statement names are shared
by every shard's Tracker), and its answers come back one message at a time, as the client
is to see them (the Tracker's hidden answers removed, its own put in place).
"""

from __future__ import annotations

import struct

import trio

from ..netio import ConnectionClosed
from ..pool.server import ServerConnection
from ..protocol import ProxyError
from ..protocol import errors as codes
from ..protocol import messages as m
from .tracker import Tracker

_LEN = struct.Struct("!i").unpack_from


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
    __slots__ = ("_buf", "_pos", "last_copy_in", "params", "server", "shard", "tracker")

    def __init__(self, shard: int, server: ServerConnection, tracker: Tracker):
        self.shard = shard
        self.server = server
        self.tracker = tracker
        self._buf = b""   # answers for the client not yet read, from _pos on
        self._pos = 0
        self.params: list[bytes] = []  # ParameterStatus bodies the server sent since last asked
        self.last_copy_in: bytes | None = None  # its CopyInResponse to a COPY under way

    def outgoing(self, data: bytes) -> bytes:
        """Client messages for this shard as the server is to get them; the Tracker's own
        answers to them (a Parse it answers itself) join the answers to read."""
        data, now = self.tracker.from_client(data, self.server.statements)
        if now:
            self._buf = self._buf[self._pos:] + now
            self._pos = 0
        return data

    async def send(self, data: bytes) -> None:
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
                    return buf[pos:nxt]
            await self._fill()

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
        """Read what the server sends next into the answers."""
        await self._fill()

    async def _fill(self) -> None:
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
        if ready:
            server.status = ready[-1]
        if self.tracker.params:
            self.params += self.tracker.params
        self._buf = self._buf[self._pos:] + visible
        self._pos = 0

    @property
    def idle(self) -> bool:
        """Nothing owed by the server and nothing unread: the connection may go back."""
        return self.tracker.idle and self._pos >= len(self._buf) and self.server.status == b"I"
