"""A client's login: the startup packet, authentication, admission, and the
ParameterStatus burst it gets (as PostgreSQL would send it)."""

from __future__ import annotations

import logging
import ssl
import sys

import trio

from ..admin import console as admin_console
from ..auth import client as client_auth
from ..hooks.api import ConnectInfo
from ..netio import ConnectionClosed
from ..pool.hosts import REPLICA
from ..pool.pool import PoolRetired
from ..protocol import ProtocolError, ProxyError
from ..protocol import errors as codes
from ..protocol import messages as m
from ..tlsio import TlsConn, TlsError
from .attach import give_back
from .failures import ClientGone
from .params import ClientParams
from .startup import START_TLS, Cancel, Startup, read_startup

log = logging.getLogger(__name__)


class Login:
    """The login half of a ClientSession (session/session.py)."""

    __slots__ = ()

    async def _login(self) -> bool:
        timeout = self.app.config.general.client_login_timeout / 1000
        console = False
        with trio.move_on_after(timeout):
            packet = await self._read_startup()
            if isinstance(packet, Cancel):
                await self.app.cancel(packet)
                return False
            if admin_console.wants_console(self.app, packet):
                self.user, self.database = packet.user, packet.database
                await admin_console.login(self.app, self.client, packet)
                console = True
            else:
                await self._admit(packet)
                return True
        if console:  # the console's session is not a pooled one: it ends here
            await admin_console.serve(self.app, self.client, self.addr)
            return False
        raise ProxyError(codes.PROTOCOL_VIOLATION,
                         f"login not completed within client_login_timeout ({timeout * 1000:.0f} ms)",
                         fatal=True)

    async def _read_startup(self) -> Startup | Cancel:
        """The startup packet, over TLS if the client asked and the proxy has a certificate;
        a plain one refused (28000) when tls_client_required, before any password."""
        context = self.app.client_tls  # read once: a reload may replace it meanwhile
        while True:
            packet = await read_startup(self.client, offer_tls=context is not None)
            if packet is not START_TLS:
                break
            await self._start_tls(context)  # type: ignore[arg-type]
        if isinstance(packet, Startup) and not self.client.tls \
                and self.app.config.general.tls_client_required:
            raise ProxyError(codes.INVALID_AUTHORIZATION,
                             "trio_pgdog accepts only TLS connections: connect with "
                             "sslmode=require (or verify-ca, verify-full)", fatal=True)
        return packet  # type: ignore[return-value]

    async def _start_tls(self, context: ssl.SSLContext) -> None:
        """Answer the SSLRequest with S and run the handshake; a failed handshake costs
        this client its connection, with one log line."""
        await self.client.send(b"S")
        self.client = conn = TlsConn(self.client.sock, self.addr, context, server_side=True)
        try:
            await conn.handshake()
        except TlsError as exc:
            log.info("client %s: %s", self.addr, exc)
            raise ClientGone from None
        log.debug("client %s: TLS on (%s)", self.addr, conn.describe())

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
                give_back(server)
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

    async def _startup_params(self) -> dict[str, str]:
        """The ParameterStatus values a new client gets, from its current hosts."""
        while True:
            try:
                return await self._current_group().startup_params()
            except PoolRetired:
                continue
