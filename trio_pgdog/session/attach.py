"""A session's server side: taking a server connection for a transaction (the client's
hosts, health checks, its settings), giving it back clean, and losing it."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING, NoReturn

import trio

from ..netio import ConnectionClosed
from ..pool.hosts import REPLICA, HostGroup
from ..pool.pool import PoolRetired
from ..pool.server import ServerConnection, check_server, try_execute
from ..pool.stats import clock_ns
from ..protocol import ProtocolError, ProxyError, ServerError
from ..protocol import errors as codes
from ..router.keywords import leading_keywords
from .departures import Departure
from .failures import ClientGone
from .params import IDENTITY, NO_NAMES, set_targets
from .sqltext import quote_literal

if TYPE_CHECKING:
    from ..pool.pool import Pool

log = logging.getLogger(__name__)


def give_back(server: ServerConnection, reusable: bool = True) -> None:
    """Return a server connection to the pool it came from."""
    if server.pool is not None:
        server.pool.checkin(server, reusable)
    else:
        server.close()


# Server connections tried for one transaction when health checks before use keep failing.
ATTACH_ATTEMPTS = 3


# How long a departing client's server may take to roll back / reset before it is dropped.
CLEANUP_TIMEOUT = 5.0


class Attach:
    """Server connections for a ClientSession (session/session.py)."""

    __slots__ = ()

    def _current_group(self) -> HostGroup:
        """The client's hosts; after a reload replaced them, the new ones (users.toml decides)."""
        group = self.group
        assert group is not None
        if group.stale:
            replacement = self.app.pools.get(self.user, self.database)
            if replacement is None:
                raise ProxyError(codes.INVALID_AUTHORIZATION,
                                 f'user "{self.user}" for database "{self.database}" was removed '
                                 "from the configuration", fatal=True)
            self.group = group = replacement
        return group

    async def _attach(self, role: str, avoid: Pool | None = None) -> bool:
        """Take a server connection for a transaction needing `role` (not from `avoid`, a
        host that just failed); False if the client was told why there is none."""
        for _attempt in range(ATTACH_ATTEMPTS):
            try:
                server = await self._checkout(role, avoid)
            except ProxyError as exc:
                await self._fail_batch(exc)
                return False
            if not server.needs_check or await check_server(
                    server, server.pool.settings.healthcheck_timeout):  # type: ignore[union-attr]
                self.server = server
                return True
            # Idle too long and dead: drop it (the host may get banned) and pick again.
            give_back(server, reusable=False)
            server.pool.report_failure("health check before use failed")  # type: ignore[union-attr]
        await self._fail_batch(ProxyError(codes.CONNECTION_FAILURE,
                                          f"no healthy server connection for {self.database}"))
        return False

    async def _checkout(self, role: str, avoid: Pool | None) -> ServerConnection:
        """A server connection from the client's current hosts. A reload that retires the
        pool being tried sends the client on to the new hosts (no error: moving a waiter
        to the pool that replaced its own happens inside the pool, this covers the rest)."""
        while True:
            pools = self._current_group().choose(role, self._since)
            if avoid is not None and len(pools) > 1:
                pools = [p for p in pools if p is not avoid] or pools
            server = pools[0].take_idle()
            if server is not None:
                return server
            try:
                return await self._checkout_watching_client(pools)
            except PoolRetired:
                continue  # the group is stale now: _current_group() picks the new one

    async def _checkout_watching_client(self, pools: list[Pool]) -> ServerConnection:
        """Wait for a server connection; if the client hung up meanwhile, pass the connection
        on at once instead of running its query for nobody. (Checked once, after the wait:
        watching the socket during the wait would cost a task per checkout.)"""
        started = clock_ns()
        server = await self._current_group().checkout(pools)
        server.stats.waited((clock_ns() - started) // 1000)
        try:
            alive = self.client.sock.recv(1, socket.MSG_PEEK) != b""
        except BlockingIOError:
            alive = True
        except OSError:
            alive = False
        if not alive:
            give_back(server)
            raise ClientGone
        return server

    async def _retry_read(self) -> bool:
        """A read's server died before answering: run it on another host instead."""
        replay, self._replay = self._replay, None
        server = self.server
        if replay is None or server is None:
            return False
        data, at_boundary, at_sync, pending = replay
        log.info("client %s (%s@%s): %s:%d failed before answering; retrying the read "
                 "elsewhere", self.addr, self.user, self.database, server.host, server.port)
        self._drop_server(server)
        self.pending = pending
        if await self._attach(REPLICA, avoid=server.pool):
            await self._send_to_server(data, at_boundary, at_sync)
        return True

    def _drop_server(self, server: ServerConnection) -> None:
        """Forget a server connection that failed: nothing more is read from it."""
        self.server = None
        if self._writing:  # it may have committed before the connection failed
            self._wrote()
        if self.sscan is not None:
            self.sscan.reset()
        if self.tracker is not None:
            self.tracker.reset_server_side()
        give_back(server, reusable=False)

    async def _sync_settings(self, server: ServerConnection, identity: str | None,
                             other: str | None) -> bool:
        """Give a freshly checked-out server this client's settings before its transaction;
        False if the server died doing it (the client was told)."""
        reported: set[str] = set()
        sql = identity
        try:
            with trio.fail_after(CLEANUP_TIMEOUT):
                if identity is not None:
                    await server.execute(identity)
                    reported |= server.reported
                    self.settings.synced(server, reported, IDENTITY)
                sql = other
                if other is not None:
                    await server.execute(other)
                    reported |= server.reported
            self.settings.synced(server, reported)
        except ServerError as exc:
            if exc.fields.get("S") in ("FATAL", "PANIC"):  # the server is going away
                return await self._settings_server_lost(server, exc)
            if sql == identity:
                self._identity_lost(server, exc)
            log.warning("client %s (%s@%s): server refused its settings (%s): %s", self.addr,
                        self.user, self.database, sql, exc)
            self.settings.give_up(server)
        except (ConnectionClosed, ProtocolError, OSError, trio.TooSlowError) as exc:
            return await self._settings_server_lost(server, exc)
        return True

    def _identity_lost(self, server: ServerConnection, exc: ServerError) -> NoReturn:
        """The server would not run as this client's role or session authorization (say its
        membership was revoked): end the session rather than run it as another role."""
        log.warning("client %s (%s@%s): server refused its role or session authorization: %s",
                    self.addr, self.user, self.database, exc)
        self._drop_server(server)  # who it runs as now is not known for sure
        raise ProxyError(exc.sqlstate, "trio_pgdog could not restore this session's role on a "
                         f"pooled server connection: {exc}", fatal=True,
                         hint="reconnect; the proxy does not run the session as another role")

    async def _settings_server_lost(self, server: ServerConnection, exc: BaseException) -> bool:
        log.warning("client %s (%s@%s): server connection failed while applying settings: %s",
                    self.addr, self.user, self.database, exc)
        if await self._retry_read():
            return False
        self._drop_server(server)
        await self._fail_batch(ProxyError(codes.CONNECTION_FAILURE,
                                          f"server connection lost: {exc or 'timeout'}"))
        return False

    def _note_sets(self, statements: Iterable[bytes]) -> None:
        """Remember which unreported settings these SET/RESET statements change."""
        for sql in statements:
            targets = set_targets(sql, self.settings.reported_names)
            if targets is None and self.server is not None and \
                    leading_keywords(sql, 1) == ["DISCARD"]:
                self.server.statements.expect_drop()  # DISCARD ALL, as a Query's
            if targets is None or self.recheck is None:
                self.recheck = None
            else:
                self.recheck = self.recheck | targets

    async def _refresh_settings(self, server: ServerConnection) -> bool:
        """After a transaction that ran SET/RESET of settings PostgreSQL does not report, read
        their values back (a rollback may have undone them) so they follow the client."""
        names = sorted(self.settings.unreported() if self.recheck is None else self.recheck)
        self.recheck = NO_NAMES
        if not names:
            return True
        sql = "SELECT " + ", ".join(f"current_setting({quote_literal(n)}, true)" for n in names)
        try:
            with trio.fail_after(CLEANUP_TIMEOUT):
                values = await server.query_row(sql)
        except ServerError as exc:
            log.warning("client %s: could not read back its settings: %s", self.addr, exc)
            return True
        except (ConnectionClosed, ProtocolError, OSError, trio.TooSlowError):
            if server is self.server:
                self._drop_server(server)
            else:  # a sharded session's shard connection: its relay gives it back
                server.broken = True
            return False
        self.settings.refreshed(server, dict(zip(names, values, strict=False)))
        return True

    async def _release_server(self) -> None:
        """Give the server back clean when the client leaves: roll back, reset, or drop it."""
        server, self.server = self.server, None
        if server is None:
            return
        clean = not (self.pending or self.copy_in or self.cscan.in_batch or self.cscan.mid_message)
        departure = self.departure
        if clean and departure is not None and not await self._cancel_delivered(departure):
            clean = False
        if not clean or server.pool is None or server.pool.closed:
            if not clean and departure is None:  # (a departure was logged already)
                log.info("client %s (%s@%s): gone in the middle of a query; closing its server "
                         "connection %r", self.addr, self.user, self.database, server)
            give_back(server, reusable=False)
            return
        with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_TIMEOUT):
            # After a cancel, a statement of ours runs first: if the cancel were still on its
            # way it would hit this one (the connection is then dropped), not a client's.
            if server.status != b"I" or departure is not None:
                await try_execute(server, "ROLLBACK", CLEANUP_TIMEOUT)
            if not self.transaction_mode and not server.broken:
                await try_execute(server, "DISCARD ALL", CLEANUP_TIMEOUT)
        give_back(server)

    async def _cancel_delivered(self, departure: Departure) -> bool:
        """A cancel sent for a departed client's query must have reached PostgreSQL before
        its connection serves anyone else (a late one would cancel the next client's query)."""
        with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_TIMEOUT):
            await departure.cancelled.wait()
        return departure.cancelled.is_set() and not departure.aborted
