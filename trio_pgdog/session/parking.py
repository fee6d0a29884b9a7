"""Parking a session in the C reactor while its traffic is plain (docs/benchmarks.md).

Between transactions a session whose next transaction needs nothing of the Python path parks
its client in the Reactor (trio_pgdog/_reactor.c) and its task waits. The Reactor then relays
plain transactions by itself, taking and giving back servers through `_c_take`/`_c_give`, and
hands the session back -- waking its task with an *outcome* -- at a message boundary when
anything else happens. `_resume` puts the outcome into the session's fields and goes on
exactly where the Python relay would have been: the session's task still owns the session
throughout, and cancelling it takes it out of the Reactor with its server (abort_fn below).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import outcome
import trio

from ..netio import ConnectionClosed
from ..pool.hosts import PRIMARY
from ..pool.server import ServerConnection
from ..reactor import c as _c
from .attach import give_back
from .failures import ClientGone
from .scan import ServerScan

if TYPE_CHECKING:
    from collections.abc import Sequence

# Outcome flags (see hand_back in _reactor.c).
if _c is not None:
    SERVER_LOST, CLIENT_GONE, BROKEN = _c.SERVER_LOST, _c.CLIENT_GONE, _c.BROKEN
    CLIENT_CLOSED, SERVER_STIRRED, TIMED_OUT = _c.CLIENT_CLOSED, _c.SERVER_STIRRED, _c.TIMED_OUT
else:
    SERVER_LOST, CLIENT_GONE, BROKEN, CLIENT_CLOSED, SERVER_STIRRED, TIMED_OUT = 1, 2, 4, 8, 16, 32

# (chunk, server, owed, status, server_rest, to_client, to_server, flags, counts, answered)
Outcome = tuple

# A session whose traffic keeps coming straight back from C (new statement names, SET...)
# skips parking for this many chances, doubling each time up to BACKOFF_MAX: parking and
# coming back costs more than the Python path alone.
BACKOFF_MAX = 64


class Parking:
    """The C path of a ClientSession (session/session.py)."""

    __slots__ = ()

    def _may_park(self) -> bool:
        """Is the session's state all the Reactor knows how to carry? (Between transactions,
        or idle inside one, with nothing of the Python path's in flight.)"""
        app = self.app
        if app.reactor is None or not self.transaction_mode or self.relay is not None:
            return False
        group = self.group
        recheck = self.recheck
        cscan, sscan, tracker = self.cscan, self.sscan, self.tracker
        return (self.hooked is None and self.role_override is None and not self.pending
                and not self.copy_in and not self.discarding and self.departure is None
                and recheck is not None and not recheck and self._replay is None
                and not self.client.tls and not self.client.buffered
                and not cscan.mid_message and not cscan.in_batch
                and (sscan is None or sscan.at_boundary) and (tracker is None or tracker.idle)
                and group is not None and not group.splits and not group.stale
                and app.hooks is self._registry and not app.shutting_down
                and (self.server is None or self._lendable(self.server))
                and not self._skip_turn())

    def _skip_turn(self) -> bool:
        """Backing off (BACKOFF_MAX): this chance to park is skipped."""
        if self._turns:
            self._turns -= 1
            return True
        return False

    def _lendable(self, server: ServerConnection) -> bool:
        return not server.conn.tls and not server.conn.buffered

    async def _park(self) -> None:
        """Wait in the Reactor until it hands the session back; then go on from there."""
        server = self.server
        group = self.group
        slot = self.app.reactor.park(self, self.client.fd, server,
                                     server.status if server is not None else b"I",
                                     group.choose(PRIMARY)[0], self.settings.key)
        self.server = None  # the slot holds it now (linked_server says which)
        self._slot = slot
        self._parked = trio.lowlevel.current_task()

        def abort(_raise_cancel: object) -> trio.lowlevel.Abort:
            # Cancelled while parked: out of the Reactor now, with whatever server it holds
            # (_release_server gives it back clean, rolls it back or closes it).
            self._parked = None
            taken = self.app.reactor.unpark(slot)
            if taken is not None:
                self._take_state(taken)
            return trio.lowlevel.Abort.SUCCEEDED

        try:
            result = await trio.lowlevel.wait_task_rescheduled(abort)
        finally:
            self._slot = None
        await self._resume(result)

    def _unpark_idle(self) -> None:
        """Shutdown or a departed client: wake the session now if the server owes it nothing
        (else the Reactor hands it back once the answer is complete)."""
        self._wake(now=False)

    def _force_out(self) -> None:
        """abort(): a departed client's server never answered: out now, server closed."""
        self._wake(now=True)

    def _wake(self, *, now: bool) -> None:
        """Take a parked session out of the Reactor (`now`: wherever it stands, its server
        not to be reused) and reschedule its task with the outcome."""
        slot, task = self._slot, self._parked
        if slot is None or task is None:
            return
        reactor = self.app.reactor
        result = reactor.unpark(slot) if now else reactor.release(slot)
        if result is None:
            return
        self._parked = None
        if now:
            result = (*result[:7], result[7] | BROKEN, *result[8:])
        trio.lowlevel.reschedule(task, outcome.Value(result))

    @property
    def linked_server(self) -> ServerConnection | None:
        """The server this client holds now (SHOW CLIENTS' link), parked or not."""
        if self._slot is not None:
            return self.app.reactor.server(self._slot)
        return self.server

    def _parked_servers(self) -> list[ServerConnection]:
        """busy_servers() of a parked session: the server running its request, if any."""
        server = self.app.reactor.busy(self._slot)
        return [] if server is None else [server]

    # --- called by the Reactor, synchronously, inside its run() ---------------------------------

    def _c_take(self) -> ServerConnection | float | None:
        """An idle server for a plain transaction; or, when the pool has none and may open no
        more, how long the request may wait in line in C (checkout_timeout, seconds); or None
        (the Python path takes over). (Called when the pool's lane in C has none with this
        client's settings.)"""
        app, group = self.app, self.group
        if group.stale or app.hooks is not self._registry or app.shutting_down:
            return None
        pool = group.choose(PRIMARY)[0]
        server = pool.take_idle()
        if server is None:
            # In line in C when no connection may be opened (that is the Python path's). A
            # connection coming back goes to the Python path's waiters first (Pool.checkin),
            # then to this line (reactor.offering, and _reactor.c's keep_server).
            if pool.total >= pool.settings.pool_size and not pool.paused and not pool.closed:
                return float(pool.settings.checkout_timeout)
            return None
        if not self._c_ready(server):
            pool.untake(server)  # the Python path checks or syncs it
            return None
        return server

    def _c_ready(self, server: ServerConnection) -> bool:
        """May the C path run this client's request on `server` as it is?"""
        return (not server.needs_check and self._lendable(server)
                and self.settings.sync_sql(server) is None)

    def _c_give(self, server: ServerConnection, counts: Sequence[int]) -> None:
        """A plain transaction ended (ReadyForQuery 'I'): its server goes back to its pool."""
        self._count(server, counts)
        server.status = b"I"
        give_back(server)

    # --- back on the Python path ----------------------------------------------------------------

    def _count(self, server: ServerConnection, counts: Sequence[int]) -> None:
        server.stats.add_relayed(*counts[:6])
        asked_at, xact_at = counts[6], counts[7]
        if asked_at:
            self._asked_at, self._xact_at = asked_at, xact_at

    def _take_state(self, result: Outcome) -> None:
        """The synchronous part of a hand-back: the session's fields as the Reactor left them."""
        server, owed, status, flags, counts = result[1], result[2], result[3], result[7], result[8]
        self.server = server
        if server is None:
            return
        server.status = status
        self._count(server, counts)
        self.pending = owed
        if owed and self.tracker is not None:
            self.tracker.owe_ready(owed)
        if flags & BROKEN:
            server.broken = True

    async def _resume(self, result: Outcome) -> None:
        """Go on from a hand-back as the Python relay would have from the same bytes."""
        chunk, server, owed, _status, rest, to_client, to_server, flags, _counts, answered = result
        self._take_state(result)
        if flags & TIMED_OUT:  # in line in C for checkout_timeout: as a pool checkout fails
            self.cscan.feed(chunk)
            await self._fail_batch(self.group.choose(PRIMARY)[0].timeout_error())
            return
        if chunk is not None and not answered:  # straight back: not worth parking for a while
            self._backoff = min(max(1, self._backoff * 2), BACKOFF_MAX)
            self._turns = self._backoff
        elif answered:
            self._backoff //= 2  # (decays: a client that often finds no server parks less)
        if server is not None:
            if flags & BROKEN:
                raise ClientGone  # cut mid-message: _release_server closes the server
            if to_server:
                try:
                    await server.conn.send(to_server)
                except ConnectionClosed:
                    await self._server_lost(b"")
                    return
            if flags & SERVER_LOST:
                await self._server_lost(b"")
                return
        if to_client:
            try:
                await self.client.send(to_client)
            except ConnectionClosed:
                raise ClientGone from None
        if flags & CLIENT_GONE:
            raise ClientGone
        if flags & CLIENT_CLOSED:
            raise ConnectionClosed("connection closed by peer")
        if rest:
            if self.tracker is None and self.sscan is None:
                self.sscan = ServerScan()
            await self._from_server(rest)
        elif server is not None and not owed and chunk is None:
            await self._answered(server)  # (a chunk comes with a server only when none was sent)
        if chunk is not None:
            await self._from_client(chunk)
        elif flags & SERVER_STIRRED:
            # Its server closed (or spoke) while idle in a transaction: the client hears of it
            # on its next statement, as on the Python path, which waits for that one.
            await self._from_client(await self.client.recv())

