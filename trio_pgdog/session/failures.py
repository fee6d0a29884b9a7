"""What a session says when things fail: ends of session, errors answered in place of
a batch, a server connection lost, and a client that left while its query ran."""

from __future__ import annotations

import contextlib
import logging

import trio

from ..netio import ConnectionClosed
from ..pool.server import ServerConnection, send_cancel
from ..protocol import ProtocolError, ProxyError
from ..protocol import errors as codes
from ..protocol import messages as m
from .departures import Departure

log = logging.getLogger(__name__)


def shutdown_error() -> ProxyError:
    return ProxyError(codes.ADMIN_SHUTDOWN, "terminating connection: trio_pgdog is shutting down",
                      fatal=True)


class ClientGone(Exception):
    """The client closed its connection or sent Terminate."""


class Failures:
    """Failure handling of a ClientSession (session/session.py)."""

    __slots__ = ()

    async def _ended_by(self, exc: Exception) -> None:
        """Log why the session ends and tell the client where it should know."""
        if isinstance(exc, ConnectionClosed):
            log.debug("client %s: connection lost: %s", self.addr, exc)
        elif isinstance(exc, ProtocolError):
            log.info("client %s: protocol violation: %s", self.addr, exc)
            await self._send_error(ProxyError(codes.PROTOCOL_VIOLATION, str(exc), fatal=True))
        elif isinstance(exc, ProxyError):
            log.info("client %s (%s@%s): %s: %s%s", self.addr, self.user or "?",
                     self.database or "?", exc.sqlstate, exc.message,
                     f" ({exc.note})" if exc.note else "")
            await self._send_error(exc)
        else:  # a bug of ours: this client gets an error, nobody else notices
            log.error("client %s (%s@%s): internal error, connection closed: %r", self.addr,
                      self.user or "?", self.database or "?", exc)
            log.debug("internal error details", exc_info=exc)
            await self._send_error(ProxyError(codes.INTERNAL_ERROR,
                                              f"trio_pgdog internal error: {exc!r}", fatal=True))

    async def _send_error(self, exc: ProxyError) -> None:
        """Best effort: the client may already be gone."""
        with trio.move_on_after(1):
            with contextlib.suppress(ConnectionClosed, trio.ClosedResourceError):
                await self.client.send(m.error_response(exc.sqlstate, exc.message,
                                                        severity=exc.severity, hint=exc.hint))

    async def _fail_batch(self, exc: ProxyError) -> None:
        """Answer the client's messages with `exc` as PostgreSQL would answer a failed batch:
        one ErrorResponse, then a ReadyForQuery for every Sync/Query, skipping up to the
        next Sync if the batch is not complete yet."""
        log.info("client %s (%s@%s): %s", self.addr, self.user, self.database, exc.message)
        out = m.error_response(exc.sqlstate, exc.message, hint=exc.hint)
        if self.hooked is None:
            out += m.ready_for_query() * self.cscan.syncs
        else:  # what the server was to answer, and what the proxy still owed itself
            out += m.ready_for_query() * (self._hooked_syncs + self.hooked.abandon())
        self.discarding = self.cscan.in_batch or self.cscan.mid_message
        await self.client.send(out)

    async def _discard_client_data(self) -> None:
        if self.cscan.syncs:
            await self.client.send(m.ready_for_query() * self.cscan.syncs)
        self.discarding = self.cscan.in_batch or self.cscan.mid_message

    async def _server_lost(self, before: bytes, said: dict[str, str] | None = None) -> None:
        """The server closed (or announced FATAL, `said`) while this client was using it."""
        if not before and await self._retry_read():
            return
        server = self.server
        assert server is not None
        server.stats.errors += 1
        self._drop_server(server)
        self.copy_in = False
        why = f"{server.host}:{server.port} closed the connection"
        if said:  # PostgreSQL's own reason, e.g. an admin's pg_terminate_backend()
            why += f" (FATAL {said.get('C', '?')}: {said.get('M', '')})"
        log.warning("client %s (%s@%s): lost server connection (pid %s): %s", self.addr,
                    self.user, self.database, server.pid, why)
        if not self.transaction_mode:
            # Session state lived on that connection. What the server sent before its
            # FATAL still goes to the client first.
            if before:
                try:
                    await self.client.send(before)
                except ConnectionClosed:
                    raise ClientGone from None
            raise ProxyError(codes.CONNECTION_FAILURE,
                             f"server connection lost: {why}; session state is gone, reconnect",
                             fatal=True)
        out = before + m.error_response(
            codes.CONNECTION_FAILURE,
            f"server connection lost: {why} while running this client's query; any open "
            "transaction was rolled back",
            hint="the proxy is still connected: retry the transaction")
        # A batch without its Sync yet gets its ReadyForQuery when the Sync comes: until
        # then the client's messages are discarded, as PostgreSQL does after an error.
        out += m.ready_for_query() * self.pending
        if self.hooked is not None:
            out += m.ready_for_query() * self.hooked.abandon()
        self.pending = 0
        self.discarding = self.cscan.in_batch or self.cscan.mid_message
        if self.discarding:
            self.cscan.in_batch = False
        try:
            await self.client.send(out)
        except ConnectionClosed:
            raise ClientGone from None

    def client_departed(self, now: float) -> None:
        """The departure watch saw the client hang up while its query runs: cancel the
        query; the session gives its server back once PostgreSQL has answered."""
        servers = self.busy_servers()
        if not servers or self.departure is not None:
            return
        self.departure = departure = Departure(now)
        self._unpark_idle()  # parked in C: back to Python once the server has answered
        log.info("client %s (%s@%s): gone while its query runs on %s; cancelling the query",
                 self.addr, self.user, self.database,
                 ", ".join(f"{s.host}:{s.port} (pid {s.pid})" for s in servers))
        self.app.spawn(self._cancel_queries, servers, departure.cancelled)

    async def _cancel_queries(self, servers: list[ServerConnection], done: trio.Event) -> None:
        try:
            timeout = self.app.config.general.connect_timeout / 1000
            async with trio.open_nursery() as nursery:
                for server in servers:
                    nursery.start_soon(send_cancel, server, timeout)
        finally:
            done.set()

    def abort(self) -> None:
        """End a departed client's session whose server did not answer after the cancel:
        the session's wait on the server ends, and the connection is closed, not reused."""
        servers, departure = self.busy_servers(), self.departure
        if not servers or departure is None or departure.aborted:
            return
        departure.aborted = True
        self._force_out()  # parked in C: out now
        for server in servers:
            log.warning("client %s (%s@%s): server %r did not answer after the cancel; closing "
                        "the connection", self.addr, self.user, self.database, server)
            trio.lowlevel.notify_closing(server.conn.sock)
