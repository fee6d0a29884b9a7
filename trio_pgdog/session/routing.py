"""Where a client's next transaction goes: primary or replica (read/write splitting,
read-your-writes, the client's own choice with SET pgdog.role or a hook's)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from ..pool.hosts import PRIMARY, REPLICA, HostGroup
from ..protocol import extended as ext
from ..protocol import messages as m
from ..router.fastpath import plain_select
from .overrides import answer_role_set

if TYPE_CHECKING:
    from .tracker import Tracker



def first_sql(data: bytes, tracker: Tracker | None) -> bytes | None:
    """The SQL of the first statement in `data`: a Query, a Parse, or a Bind of a statement
    the client prepared earlier; None if there is none."""
    if len(data) < 6:
        return None
    kind = data[0]
    end = 1 + m.unpack_i32(data, 1)
    if kind == 0x51:  # Query
        return data[5:end].rstrip(b"\x00")
    # Names or a query without their NUL: no statement to route by (what reads the
    # message next refuses it, or PostgreSQL does).
    if kind == 0x50:  # Parse: name, then the query
        name_end = data.find(b"\x00", 5, end)
        sql_end = data.find(b"\x00", name_end + 1, end) if name_end >= 0 else -1
        return data[name_end + 1 : sql_end] if sql_end >= 0 else None
    if kind == 0x42 and tracker is not None:  # Bind of a named statement
        portal_end = data.find(b"\x00", 5, end)
        name_end = data.find(b"\x00", portal_end + 1, end) if portal_end >= 0 else -1
        known = tracker.statements.get(data[portal_end + 1 : name_end]) if name_end >= 0 else None
        return ext.parse_query_text(known[1]).encode() if known else None
    return None


class Routing:
    """The routing half of a ClientSession (session/session.py)."""

    __slots__ = ()

    def _route(self, data: bytes) -> str:
        """primary or replica for a transaction starting with `data` (design.md, routing)."""
        if self.role_override is not None:
            return self.role_override
        own, hint = self._classify(data)
        return own if hint is None else hint

    def _classify(self, data: bytes) -> tuple[str, str | None]:
        """The router's role for a transaction starting with `data`, and the role its
        `pgdog_role` comment asks for (None: no comment)."""
        sql = first_sql(data, self.tracker)
        if sql is None:
            return PRIMARY, None
        if plain_select(sql):  # no parse for the commonest read, whatever its literals
            return REPLICA, None
        facts = self.app.parse_cache.get(sql)
        own = REPLICA if facts.read_only_transaction_start or not facts.writes else PRIMARY
        return own, facts.role_hint

    def _route_fresh(self, data: bytes, decided: str | None, group: HostGroup) -> str:
        """_route with read_your_writes (docs/routing.md): a transaction on the primary that
        the router does not call read-only counts as this client's write when it ends; a
        read after such a write goes where the write is known to be, unless the client
        chose the role itself (SET pgdog.role, a pgdog_role comment). `decided`: the
        role a hook chose."""
        own, hint = self._classify(data)
        chosen = False
        if decided is not None:
            role = decided
        elif self.role_override is not None:
            role, chosen = self.role_override, True
        elif hint is not None:
            role, chosen = hint, True
        else:
            role = own
        self._since = None
        if role == PRIMARY:
            self._writing = own == PRIMARY
            return role
        self._writing = False
        wrote_at = self.wrote_at
        if wrote_at is not None and not chosen:
            if group.caught_up(wrote_at):
                self.wrote_at = None  # every replica has it: reads are free again
            else:
                self._since = wrote_at
        return role

    def _wrote(self) -> None:
        """A transaction that may have written is over: from now on this client's reads
        wait for the replicas to replay past this moment."""
        self._writing = False
        self.wrote_at = trio.current_time()

    async def _role_override(self, data: bytes, status: bytes) -> bool:
        """Answer `SET pgdog.role ...` locally; True if `data` was that."""
        answer = answer_role_set(data, status)
        if answer is None:
            return False
        reply, role = answer
        if role is not None:
            self.role_override = None if role == "auto" else role
        await self.client.send(reply)
        return True
