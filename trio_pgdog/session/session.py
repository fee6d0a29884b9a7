"""One client session: login, then the relay that moves bytes between client and servers.

The relay is one task that alternates between its client and its server (design.md,
"Data path"): while the server owes ReadyForQuery messages it waits on the server only;
while the client has the floor it waits on the client only; only where both sides may
speak at once (COPY FROM STDIN, an extended-protocol batch without its Sync yet, an idle
session-mode server) it waits on both through a Poller.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, NoReturn

import trio

from ..auth import client as client_auth
from ..hooks.api import ConnectInfo
from ..hooks.registry import EMPTY, HookRegistry, HookSet
from ..netio import Conn, ConnectionClosed, Poller
from ..pool.hosts import PRIMARY, REPLICA, HostGroup
from ..pool.pool import PoolRetired
from ..pool.server import ServerConnection, check_server, send_cancel, try_execute
from ..protocol import ProtocolError, ProxyError, ServerError
from ..protocol import errors as codes
from ..protocol import extended as ext
from ..protocol import messages as m
from ..router.fastpath import plain_select
from ..router.keywords import leading_keywords
from .departures import Departure
from .hooked import HookedStream
from .overrides import answer_role_set
from .params import IDENTITY, ClientParams, set_targets
from .scan import ClientScan, ServerScan
from .sqltext import quote_literal, raise_sql, unmark_errors
from .startup import Cancel, Startup, read_startup
from .tracker import Tracker

if TYPE_CHECKING:
    from ..pool.pool import Pool
    from .host import Host

log = logging.getLogger(__name__)

# Server connections tried for one transaction when health checks before use keep failing.
_ATTACH_ATTEMPTS = 3
# How long a departing client's server may take to roll back / reset before it is dropped.
_CLEANUP_TIMEOUT = 5.0


def _shutdown_error() -> ProxyError:
    return ProxyError(codes.ADMIN_SHUTDOWN, "terminating connection: trio_pgdog is shutting down",
                      fatal=True)


class ClientGone(Exception):
    """The client closed its connection or sent Terminate."""


_NO_NAMES: frozenset[str] = frozenset()
_wait_readable = trio.lowlevel.wait_readable


class ClientSession:
    # An idle client costs the proxy what its session keeps (docs/benchmarks.md, "memory per
    # idle client"): slots instead of a __dict__, shared empty values, objects made when
    # first needed, and no coroutine frame but run's above Trio's wait while the client is
    # quiet (so the relay loop lives in run).
    __slots__ = (
        "_hooked_syncs",
        "_idle_on",
        "_poller",
        "_registry",
        "_replay",
        "_since",
        "_writing",
        "addr",
        "app",
        "client",
        "copy_in",
        "cscan",
        "database",
        "departure",
        "discarding",
        "group",
        "hooked",
        "hooks",
        "pending",
        "pid",
        "recheck",
        "role_override",
        "secret",
        "server",
        "settings",
        "sscan",
        "tracker",
        "transaction_mode",
        "user",
        "wrote_at",
    )

    def __init__(self, app: Host, conn: Conn, addr: str):
        self.app = app
        self.client = conn
        self.addr = addr
        self.user = ""
        self.database = ""
        self.group: HostGroup | None = None
        self.role_override: str | None = None  # SET pgdog.role: "primary" or "replica"
        # read_your_writes: when this client's last write ended (trio time; None: none the
        # replicas may lack), whether the transaction under way may write, and for a read
        # the write it must see (HostGroup.choose).
        self.wrote_at: float | None = None
        self._writing = False
        self._since: float | None = None
        # The chunk that started a read on a fresh server, until the server answers.
        self._replay: tuple[bytes, bool, bool, int] | None = None
        self.server: ServerConnection | None = None
        self.pid = 0
        self.secret = 0
        self.transaction_mode = True
        self.pending = 0          # ReadyForQuery messages the server still owes the client
        self.copy_in = False      # the server is in COPY FROM STDIN, reading client data
        self.discarding = False   # dropping client messages up to a Sync after an error
        self.cscan = ClientScan()
        self.sscan: ServerScan | None = None  # made when the first server answers
        self.tracker: Tracker | None = None  # set once a transaction-mode client goes extended
        self.settings = ClientParams({}, {})  # the client's session parameters
        self.recheck: frozenset[str] | None = _NO_NAMES  # settings a SET may have changed; None: all
        self._poller: Poller | None = None
        # What the session waits on while it waits for its client between transactions.
        self._idle_on: object | None = None
        # Hooks that watch statements put the session on the statement-aware path.
        self.hooks: HookSet = EMPTY
        self.hooked: HookedStream | None = None
        self._registry: HookRegistry | None = None  # the registry `hooks` came from
        self._hooked_syncs = 0
        # Set by the departure watch (session/departures.py) when the client hung up while
        # its query ran: the query is cancelled and its answer goes nowhere.
        self.departure: Departure | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        """The session's task: login, then the relay loop until the client leaves. (The loop
        is written out here rather than in a coroutine of its own: see the class comment.)"""
        try:
            if not await self._login():
                return
            client = self.client
            while True:
                data = b""  # the last chunk (up to RECV_SIZE) is not kept through the next wait
                server = self.server
                if server is None:  # between transactions: wait for the client
                    if self.app.shutting_down:
                        raise _shutdown_error()
                    if client.buffered:
                        data = await client.recv()
                    else:
                        self._idle_on = client.sock
                        try:
                            await _wait_readable(client.fd)
                        except trio.ClosedResourceError:  # shutdown interrupted the wait
                            raise _shutdown_error() from None
                        finally:
                            self._idle_on = None
                        data = client.recv_nowait()
                        if data is None:
                            continue
                    await self._from_client(data)
                elif (self.pending and not self.copy_in and not self.cscan.in_batch
                      and not self.cscan.mid_message):
                    try:
                        data = await server.conn.recv()
                    except ConnectionClosed:
                        await self._server_lost(b"")
                        continue
                    except trio.ClosedResourceError:  # abort(): the server stays silent
                        raise ClientGone from None
                    await self._from_server(data)
                elif not self.pending and not self.copy_in and not self.cscan.in_batch \
                        and server.status != b"I":
                    # Idle inside a transaction: the client has the floor.
                    await self._from_client(await client.recv())
                else:
                    await self._wait_both(server)
        except ClientGone:
            pass
        except Exception as exc:
            await self._ended_by(exc)
        finally:
            await self._release_server()
            self.app.forget(self)
            if self._poller is not None:
                self._poller.close()
            self.client.close()

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

    def client_departed(self, now: float) -> None:
        """The departure watch saw the client hang up while its query runs: cancel the
        query; the session gives its server back once PostgreSQL has answered."""
        server = self.server
        if server is None or self.departure is not None:
            return
        self.departure = departure = Departure(now)
        log.info("client %s (%s@%s): gone while its query runs on %s:%d (pid %s); cancelling "
                 "the query", self.addr, self.user, self.database, server.host, server.port,
                 server.pid)
        self.app.spawn(self._cancel_query, server, departure.cancelled)

    async def _cancel_query(self, server: ServerConnection, done: trio.Event) -> None:
        try:
            await send_cancel(server, self.app.config.general.connect_timeout / 1000)
        finally:
            done.set()

    def abort(self) -> None:
        """End a departed client's session whose server did not answer after the cancel:
        the session's wait on the server ends, and the connection is closed, not reused."""
        server, departure = self.server, self.departure
        if server is None or departure is None or departure.aborted:
            return
        departure.aborted = True
        log.warning("client %s (%s@%s): server %r did not answer after the cancel; closing "
                    "the connection", self.addr, self.user, self.database, server)
        trio.lowlevel.notify_closing(server.conn.sock)

    def interrupt_idle(self) -> None:
        """Shutdown: wake this session if it is waiting for its client between transactions."""
        if self._idle_on is not None:
            trio.lowlevel.notify_closing(self._idle_on)

    async def _cancel_delivered(self, departure: Departure) -> bool:
        """A cancel sent for a departed client's query must have reached PostgreSQL before
        its connection serves anyone else (a late one would cancel the next client's query)."""
        with trio.CancelScope(shield=True), trio.move_on_after(_CLEANUP_TIMEOUT):
            await departure.cancelled.wait()
        return departure.cancelled.is_set() and not departure.aborted

    # --- login ----------------------------------------------------------------------------------

    async def _login(self) -> bool:
        timeout = self.app.config.general.client_login_timeout / 1000
        with trio.move_on_after(timeout):
            packet = await read_startup(self.client)
            if isinstance(packet, Cancel):
                await self.app.cancel(packet)
                return False
            await self._admit(packet)
            return True
        raise ProxyError(codes.PROTOCOL_VIOLATION,
                         f"login not completed within client_login_timeout ({timeout * 1000:.0f} ms)",
                         fatal=True)

    async def _admit(self, startup: Startup) -> None:
        app = self.app
        # One string object for all clients of the same user and database.
        self.user, self.database = sys.intern(startup.user), sys.intern(startup.database)
        if self.app.shutting_down:
            raise ProxyError(codes.CANNOT_CONNECT_NOW, "trio_pgdog is shutting down", fatal=True)
        await self._authenticate()
        # Only a client that proved its password learns whether the database or its entry
        # for it exists (PostgreSQL too reports an unknown database after authentication).
        if not app.config.databases_named(self.database):
            raise ProxyError(codes.UNDEFINED_DATABASE,
                             f'database "{self.database}" does not exist in trio_pgdog '
                             "(no [[databases]] entry with that name)", fatal=True)
        group = app.pools.get(self.user, self.database)
        if app.config.find_user(self.user, self.database) is None or group is None:
            raise ProxyError(codes.INVALID_AUTHORIZATION,
                             f'user "{self.user}" has no access to database "{self.database}" '
                             "in trio_pgdog (add a users.toml entry for both)", fatal=True)
        self._use_hooks()
        if self.hooks.pre_connect:
            refused = self.hooks.refuse(ConnectInfo(
                user=self.user, database=self.database,
                application_name=startup.params.get("application_name", ""),
                client_addr=self.addr))
            if refused is not None:
                decision, label = refused
                raise ProxyError(decision.sqlstate or codes.INSUFFICIENT_PRIVILEGE,
                                 decision.message or f"connection refused by {label}", fatal=True)
        self.group = group
        defaults = await self._startup_params()
        self.transaction_mode = self._current_group().any_pool.settings.pooler_mode == "transaction"
        self.settings = ClientParams(defaults, startup.params)
        await self._spell_settings(defaults)
        params = dict(defaults)
        params.update((k, v) for k, v in self.settings.wanted.items() if k in defaults)
        self.pid, self.secret = app.register(self)
        out = [m.auth_ok()]
        out += [m.parameter_status(k, v) for k, v in params.items()]
        out += [m.backend_key_data(self.pid, self.secret), m.ready_for_query()]
        await self.client.send(b"".join(out))
        log.debug("client %s logged in as %s@%s", self.addr, self.user, self.database)

    async def _spell_settings(self, reported: dict[str, str]) -> None:
        """The client's values of settings PostgreSQL reports, as PostgreSQL spells them
        (session/spellings.py); learned from a server the first time a value is seen."""
        spellings = self.app.spellings
        unknown = spellings.unknown(self.settings.wanted, reported)
        if unknown:
            try:  # any host will do: a replica if there is one
                server = await self._checkout(REPLICA, None)
            except ProxyError as exc:  # no server now: report the values as given
                log.warning("client %s: could not learn how the server spells its settings: %s",
                            self.addr, exc.message)
                return
            try:
                await spellings.learn(server, unknown)
            except (ConnectionClosed, ProtocolError, OSError, trio.TooSlowError) as exc:
                log.warning("client %s: could not learn how the server spells its settings: %r",
                            self.addr, exc)
                server.broken = True
            finally:
                _give_back(server)
        self.settings.respelled(spellings.spelled)

    async def _authenticate(self) -> None:
        """Check the client's password before telling it anything about users or databases.

        The password checked is the user's entry for this database, else its first entry for
        any database; a user name users.toml does not know gets the same exchange against a
        verifier that never matches, and the same 28P01 as a wrong password."""
        config = self.app.config
        method = config.general.auth_type
        entry = config.find_user(self.user, self.database) or config.first_user_named(self.user)
        if entry is None and method == "trust":  # no secret to protect: say what is wrong
            raise ProxyError(codes.INVALID_AUTHORIZATION,
                             f'no such user "{self.user}" in trio_pgdog (add it to users.toml)',
                             fatal=True)
        try:
            await client_auth.authenticate(self.client, method, self.user,
                                           entry.password if entry is not None else None)
        except ProxyError as exc:
            if entry is None:  # the operator may know what the client must not
                exc.note = (f'unknown user "{self.user}": not in users.toml; the client was '
                            "told only that the password failed")
            raise

    # --- relay ----------------------------------------------------------------------------------

    async def _wait_both(self, server: ServerConnection) -> None:
        if self._poller is None:
            self._poller = Poller()
        self._poller.watch(self.client, server.conn)
        idle = not self.pending and not self.copy_in and not self.cscan.in_batch
        if idle and self.app.shutting_down:
            raise _shutdown_error()
        self._idle_on = self._poller.waitable if idle else None
        try:
            client_ready, server_ready = await self._poller.wait()
        except trio.ClosedResourceError:
            raise _shutdown_error() from None
        finally:
            self._idle_on = None
        if server_ready:
            try:
                data = server.conn.recv_nowait()
            except ConnectionClosed:
                await self._server_lost(b"")
                return
            if data:
                await self._from_server(data)
        if client_ready and self.server is server:
            data = self.client.recv_nowait()
            if data:
                await self._from_client(data)

    async def _from_client(self, data: bytes) -> None:
        cscan = self.cscan
        at_boundary = not cscan.mid_message
        at_sync = at_boundary and not cscan.in_batch
        cscan.feed(data)
        if cscan.terminate >= 0:
            if cscan.terminate == 0 or self.discarding:
                raise ClientGone
            data = data[: cscan.terminate]
        if self.discarding:
            await self._discard_client_data()
        else:
            if cscan.sets and at_sync and not cscan.in_batch and await self._role_override(
                    data, self.server.status if self.server is not None else b"I"):
                return
            role: str | None = None
            if self.app.hooks is not self._registry and at_sync and not self.pending and (
                    self.hooked is None or self.hooked.idle):
                self._use_hooks()  # a reload changed the hooks: from this statement on
            if self.hooked is not None:
                outcome = self.hooked.from_client(data)
                if outcome.to_client:
                    await self._to_client(outcome.to_client)
                data, role = outcome.to_server, outcome.role
                at_boundary, at_sync = True, outcome.starts_batch
                self._hooked_syncs = outcome.syncs
                if not data:
                    if cscan.terminate >= 0:
                        raise ClientGone
                    return
            if self.server is None:
                if self.transaction_mode and cscan.extended and at_sync and not cscan.in_batch:
                    local = self._ensure_tracker().answer_locally(data)
                    if local is not None:
                        await self._to_client(self._hooked_answer(local))
                        return
                group = self._current_group()
                if group.read_your_writes:
                    role = self._route_fresh(data, role, group)
                elif role is None:
                    role = self._route(data) if group.splits else PRIMARY
                # Fast path (one host, a warm idle connection): no coroutine, no loop.
                server = None if group.splits else group.choose(PRIMARY)[0].take_idle()
                if server is not None and not server.needs_check:
                    self.server = server
                else:
                    if server is not None:
                        _give_back(server)  # due for a check: _attach does it properly
                    if not await self._attach(role):
                        return
                if role == REPLICA and self.transaction_mode and not cscan.in_batch:
                    # A read may be retried on another host if this one fails before
                    # answering anything (never a write: it may have been done).
                    self._replay = (data, at_boundary, at_sync, self.pending)
            await self._send_to_server(data, at_boundary, at_sync)
        if cscan.terminate >= 0:
            raise ClientGone

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
        _give_back(server, reusable=False)

    async def _attach(self, role: str, avoid: Pool | None = None) -> bool:
        """Take a server connection for a transaction needing `role` (not from `avoid`, a
        host that just failed); False if the client was told why there is none."""
        for _attempt in range(_ATTACH_ATTEMPTS):
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
            _give_back(server, reusable=False)
            server.pool.report_failure("health check before use failed")  # type: ignore[union-attr]
        await self._fail_batch(ProxyError(codes.CONNECTION_FAILURE,
                                          f"no healthy server connection for {self.database}"))
        return False

    async def _send_to_server(self, data: bytes, at_boundary: bool, at_sync: bool) -> None:
        cscan = self.cscan
        server = self.server
        assert server is not None
        sync = self.settings.sync_sql(server)
        if sync is not None and not await self._sync_settings(server, *sync):
            return
        if cscan.sets and self.transaction_mode and at_boundary:
            self._note_sets(_statements(data))
        if self.transaction_mode and cscan.special and at_boundary:
            data = self._guard_session_sql(data, server)
        tracker = self.tracker
        if tracker is None and at_sync and (cscan.extended or cscan.copy or self.copy_in
                                            or self.pending + cscan.syncs > 1):
            tracker = self._ensure_tracker()  # what the server answers needs counting
        if tracker is not None:
            try:
                data, now = tracker.from_client(data, server.statements)
            except ProtocolError:
                # A malformed message mid-chunk: the statements noted as prepared on this
                # server were never sent. Its next user must not rely on them: close it.
                server.broken = True
                raise
            self.pending = tracker.owed
            if self.transaction_mode and tracker.ran_sets:
                # executions of prepared SET/RESET/DISCARD statements
                self._note_sets(tracker.ran_sets)
            if now:
                self._replay = None  # the client has answers now: no silent retry
                await self._to_client(self._hooked_answer(now))
        elif self.hooked is None:
            self.pending += cscan.syncs
        else:
            self.pending += self._hooked_syncs
        if self.hooked is not None:
            self.hooked.server = server
        conn = server.conn
        try:
            sent = conn.send_nowait(data)
            if sent != len(data):
                await conn.send(data, sent)
        except ConnectionClosed:
            await self._server_lost(b"")

    def _guard_session_sql(self, data: bytes, server: ServerConnection) -> bytes:
        """Transaction mode: refuse what cannot be shared (see _guard_session_sql below)."""
        data, discarded_all, sets = _guard_session_sql(data, server)
        if discarded_all:
            self.recheck = None  # every setting is back to its default
        elif sets:  # after a comment: the scan did not see them
            self._note_sets(sets)
        return data

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

    async def _startup_params(self) -> dict[str, str]:
        """The ParameterStatus values a new client gets, from its current hosts."""
        while True:
            try:
                return await self._current_group().startup_params()
            except PoolRetired:
                continue

    async def _checkout_watching_client(self, pools: list[Pool]) -> ServerConnection:
        """Wait for a server connection; if the client hung up meanwhile, pass the connection
        on at once instead of running its query for nobody. (Checked once, after the wait:
        watching the socket during the wait would cost a task per checkout.)"""
        server = await self._current_group().checkout(pools)
        try:
            alive = self.client.sock.recv(1, socket.MSG_PEEK) != b""
        except BlockingIOError:
            alive = True
        except OSError:
            alive = False
        if not alive:
            _give_back(server)
            raise ClientGone
        return server

    async def _sync_settings(self, server: ServerConnection, identity: str | None,
                             other: str | None) -> bool:
        """Give a freshly checked-out server this client's settings before its transaction;
        False if the server died doing it (the client was told)."""
        reported: set[str] = set()
        sql = identity
        try:
            with trio.fail_after(_CLEANUP_TIMEOUT):
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
                self.server.statements.clear()  # DISCARD ALL dropped them, as a Query's does
            if targets is None or self.recheck is None:
                self.recheck = None
            else:
                self.recheck = self.recheck | targets

    async def _refresh_settings(self, server: ServerConnection) -> bool:
        """After a transaction that ran SET/RESET of settings PostgreSQL does not report, read
        their values back (a rollback may have undone them) so they follow the client."""
        names = sorted(self.settings.unreported() if self.recheck is None else self.recheck)
        self.recheck = _NO_NAMES
        if not names:
            return True
        sql = "SELECT " + ", ".join(f"current_setting({quote_literal(n)}, true)" for n in names)
        try:
            with trio.fail_after(_CLEANUP_TIMEOUT):
                values = await server.query_row(sql)
        except ServerError as exc:
            log.warning("client %s: could not read back its settings: %s", self.addr, exc)
            return True
        except (ConnectionClosed, ProtocolError, OSError, trio.TooSlowError):
            self._drop_server(server)
            return False
        self.settings.refreshed(server, dict(zip(names, values, strict=False)))
        return True

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

    def _route(self, data: bytes) -> str:
        """primary or replica for a transaction starting with `data` (design.md, routing)."""
        if self.role_override is not None:
            return self.role_override
        own, hint = self._classify(data)
        return own if hint is None else hint

    def _classify(self, data: bytes) -> tuple[str, str | None]:
        """The router's role for a transaction starting with `data`, and the role its
        `pgdog_role` comment asks for (None: no comment)."""
        sql = _first_sql(data, self.tracker)
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

    def _use_hooks(self) -> None:
        """Take the hooks of this client's database from the running registry."""
        app = self.app
        self._registry = app.hooks
        self.hooks = hooks = app.hooks.for_database(self.database)
        if not hooks.per_statement:
            self.hooked = None
            return
        group = app.pools.get(self.user, self.database)
        stream = HookedStream(hooks, app.parse_cache, user=self.user, database=self.database,
                              client_addr=self.addr,
                              has_replicas=bool(group is not None and group.replicas),
                              on_error=self._hook_error)
        old = self.hooked
        if old is not None:  # what the client prepared and bound stays known
            stream.statements, stream.portals = old.statements, old.portals
            stream.stand_ins, stream.status = old.stand_ins, old.status
        else:
            stream.status = self.server.status if self.server is not None else b"I"
            if self.tracker is not None:  # hooks enabled by a reload: learn them from the Tracker
                stream.learn(self.tracker.statements)
        self.hooked = stream

    def _hook_error(self, what: str) -> None:
        log.error("client %s (%s@%s): %s", self.addr, self.user, self.database, what)

    def _hooked_answer(self, data: bytes) -> bytes:
        """Answers given on the server side's behalf (the Tracker's), seen by the hooks' path."""
        return data if self.hooked is None else self.hooked.from_server(data)

    async def _to_client(self, data: bytes) -> None:
        if data:
            await self.client.send(data)

    def _ensure_tracker(self) -> Tracker:
        """The Tracker, from the first extended-protocol message, COPY or pipelined batch on:
        it renames statements in transaction pooling, and counts what the server answers."""
        if self.tracker is None:
            self.tracker = Tracker(self.app.statements, rename=self.transaction_mode)
            self.tracker.owe_ready(self.pending, self.copy_in)
        return self.tracker

    async def _from_server(self, data: bytes) -> None:
        server = self.server
        assert server is not None
        tracker = self.tracker
        if tracker is None:
            sscan = self.sscan
            if sscan is None:
                sscan = self.sscan = ServerScan()
            data = sscan.feed(data)
            if sscan.fatal:
                await self._server_lost(data, m.parse_error_fields(sscan.fatal_body))
                return
            if sscan.marked:
                data = unmark_errors(data, sscan.marked)
            ready = sscan.ready
            self.copy_in = sscan.copy_in
        else:
            data, ready, fatal = tracker.from_server(data, server.statements)
            if fatal:
                await self._server_lost(data, m.parse_error_fields(tracker.fatal_body))
                return
            self.copy_in = tracker.copy_in
        hooked = self.hooked
        if hooked is not None:
            if hooked.tracking:
                data = hooked.from_server(data)
            else:  # everything went as the client sent it: only the status matters
                hooked.server_ready(ready, self.copy_in)
        client = self.client
        if data and self.departure is None:
            if data[0] != 0x4E or not _only_notices(data):
                self._replay = None  # the client has seen an answer: no silent retry now
            try:
                sent = client.send_nowait(data)
                if sent != len(data):
                    await client.send(data, sent)
            except ConnectionClosed:
                raise ClientGone from None
        params = sscan.params if tracker is None else tracker.params
        if params:
            self.settings.reported(params, server)
        if tracker is not None:
            self.pending = tracker.owed  # errors and COPY may have cancelled answers too
        if not ready:
            return
        server.status = ready[-1]
        if tracker is None:
            self.pending -= len(ready)
            if self.pending < 0:
                raise ProtocolError("server sent an unexpected ReadyForQuery")
        if self.departure is not None:
            if not self.pending:
                raise ClientGone  # the departed client's query is over: release it
            return
        if (not self.pending and self.transaction_mode and server.status == b"I"
                and not self.copy_in and not self.cscan.in_batch and not self.cscan.mid_message
                and (tracker is None or tracker.idle)
                and (self.hooked is None or self.hooked.idle)):
            if (self.recheck is None or self.recheck) and not await self._refresh_settings(server):
                return
            self.server = None
            if self._writing:
                self._wrote()
            _give_back(server)

    # --- errors on the data path ----------------------------------------------------------------

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
            _give_back(server, reusable=False)
            return
        with trio.CancelScope(shield=True), trio.move_on_after(_CLEANUP_TIMEOUT):
            # After a cancel, a statement of ours runs first: if the cancel were still on its
            # way it would hit this one (the connection is then dropped), not a client's.
            if server.status != b"I" or departure is not None:
                await try_execute(server, "ROLLBACK", _CLEANUP_TIMEOUT)
            if not self.transaction_mode and not server.broken:
                await try_execute(server, "DISCARD ALL", _CLEANUP_TIMEOUT)
        _give_back(server)


_REFUSED = {
    "PREPARE": ("SQL-level PREPARE is not supported in transaction pooling mode",
                "use protocol-level prepared statements (e.g. psycopg prepare=True), which "
                "trio_pgdog keeps across transactions, or a session-mode pool"),
    "LISTEN": ("LISTEN is not supported in transaction pooling mode: notifications would reach "
               "whichever client holds the server connection next",
               "use a session-mode pool (pooler_mode = \"session\") for LISTEN/NOTIFY consumers"),
}


def _guard_session_sql(data: bytes, server: ServerConnection) -> tuple[bytes, bool, list[bytes]]:
    """SQL-level PREPARE and LISTEN cannot work in transaction mode (the next EXECUTE may run
    on another server or find another client's statement; notifications would reach another
    client): the server raises a clear error instead, so client and server agree on the
    transaction state. DISCARD/DEALLOCATE drop the server's
    shared statements, which the proxy then forgets. Also returns the SET/RESET statements
    found (behind a comment, where the ClientScan does not look)."""
    out: list[bytes] = []
    sets: list[bytes] = []
    pos = start = 0
    discarded_all = False
    while pos + 5 <= len(data):
        kind, length = m.parse_header(data, pos)
        nxt = pos + 1 + length
        if nxt > len(data):
            break
        if kind == b"Q":
            words = leading_keywords(data[pos + 5 : nxt])
            refusal = _REFUSED.get(words[0]) if words else None
            if refusal is not None:
                out += [data[start:pos], m.query(raise_sql("0A000", *refusal))]
                start = nxt
            elif words[:1] == ["DEALLOCATE"] or words[:2] in (["DISCARD", "ALL"], ["DISCARD", "PLANS"]):
                server.statements.clear()
                discarded_all = discarded_all or words[:2] == ["DISCARD", "ALL"]
            elif words[:1] in (["SET"], ["RESET"]):
                sets.append(data[pos + 5 : nxt])
        pos = nxt
    out.append(data[start:])
    return b"".join(out), discarded_all, sets


def _only_notices(data: bytes) -> bool:
    """Is `data` nothing but NoticeResponses (e.g. PostgreSQL's shutdown warning)?"""
    pos = 0
    while pos + 5 <= len(data):
        if data[pos] != 0x4E:
            return False
        pos += 1 + m.unpack_i32(data, pos + 1)
    return pos == len(data)


def _give_back(server: ServerConnection, reusable: bool = True) -> None:
    """Return a server connection to the pool it came from."""
    if server.pool is not None:
        server.pool.checkin(server, reusable)
    else:
        server.close()


def _first_sql(data: bytes, tracker: Tracker | None) -> bytes | None:
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


def _statements(data: bytes) -> list[bytes]:
    """The SQL of the complete Query and unnamed Parse messages in `data`."""
    found: list[bytes] = []
    pos = 0
    while pos + 5 <= len(data):
        kind, length = m.parse_header(data, pos)
        nxt = pos + 1 + length
        if nxt > len(data) or length < 4:
            break
        if kind == b"Q":
            found.append(data[pos + 5 : nxt])
        elif kind == b"P" and data[pos + 5 : pos + 6] == b"\x00":
            found.append(data[pos + 6 : nxt])
        pos = nxt
    return found
