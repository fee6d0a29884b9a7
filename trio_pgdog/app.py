"""The running proxy: listeners, pools and client sessions under one root nursery."""

from __future__ import annotations

import hmac
import logging
import secrets
import signal
import socket
from collections.abc import Awaitable, Callable

import trio

from . import __version__
from .config import Config, ConfigError, load_config
from .hooks.api import ServerInfo
from .hooks.registry import HookRegistry, build_registry
from .netio import Conn, set_nodelay
from .pool.manager import PoolManager
from .pool.pool import Pool
from .pool.server import CONNECT_ERRORS, ServerConnection, send_cancel
from .protocol import ProxyError, ServerError
from .protocol import errors as codes
from .router.cache import ParseCache
from .session import departures
from .session.prepared import StatementRegistry
from .session.session import ClientSession
from .session.spellings import Spellings
from .session.startup import Cancel

log = logging.getLogger(__name__)

_LISTEN_BACKLOG = 4096
_SESSION_TASK = "trio_pgdog client session"


class Proxy:
    def __init__(self, config: Config):
        self.config = config
        self.pools = PoolManager(on_connect=self._after_connect)
        self.hooks = HookRegistry()  # loaded in run(), rebuilt on reload
        self.sessions: dict[int, ClientSession] = {}  # by the pid in their BackendKeyData
        self.statements = StatementRegistry()  # shared prepared-statement names
        self.spellings = Spellings()  # PostgreSQL's spelling of clients' setting values
        self.parse_cache = ParseCache()  # statement facts per distinct SQL text, for routing
        self.shutting_down = False
        self.listening: list[tuple[str, int]] = []
        self._no_sessions = trio.Event()
        self._no_sessions.set()

    # --- sessions -------------------------------------------------------------------------------

    def register(self, session: ClientSession) -> tuple[int, int]:
        """Give a logged-in session its own BackendKeyData (pid, secret)."""
        while True:
            pid = secrets.randbelow(0x7FFFFFFF - 1) + 1
            if pid not in self.sessions:
                break
        self.sessions[pid] = session
        if self._no_sessions.is_set():
            self._no_sessions = trio.Event()
        return pid, secrets.randbits(31)

    def forget(self, session: ClientSession) -> None:
        if self.sessions.get(session.pid) is session:
            del self.sessions[session.pid]
        if not self.sessions:
            self._no_sessions.set()

    async def cancel(self, request: Cancel) -> None:
        """Forward a CancelRequest to the server running that client's query, if any."""
        session = self.sessions.get(request.pid)
        if session is None or not hmac.compare_digest(
                session.secret.to_bytes(4, "big"), request.secret.to_bytes(4, "big", signed=True)):
            log.info("cancel request for unknown client key %d ignored", request.pid)
            return
        server = session.server
        if server is None:
            return
        if await send_cancel(server, self.config.general.connect_timeout / 1000):
            log.info("client %s: cancel forwarded to %r", session.addr, server)

    def spawn(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        """Run a short task owned by the proxy (not by a session that may end first)."""
        self._root.start_soon(fn, *args)

    # --- serving --------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        g = self.config.general
        # Plugins load (and pgdog_init runs) before the port opens: a client never meets a
        # proxy whose hooks are still loading.
        self.hooks = build_registry(self.config)
        try:
            listener = _listen(g.host, g.port)
            self.listening = [listener.getsockname()[:2]]
            await self._serve(listener, task_status)
        finally:
            self.hooks.close()  # native plugins' pgdog_fini, log files
        log.info("trio_pgdog stopped")

    async def _serve(self, listener: socket.socket, task_status: trio.TaskStatus) -> None:
        g = self.config.general
        async with trio.open_nursery() as root:
            self._root = root
            self.pools.apply(self.config, root)
            async with trio.open_nursery() as clients:
                root.start_soon(self._signals, root.cancel_scope, clients)
                root.start_soon(departures.watch, self.sessions)
                log.info("listening on %s:%d (%s pooling)", *self.listening[0], g.pooler_mode)
                task_status.started(self.listening[0])
                with trio.CancelScope() as accept_scope:
                    self._accept_scope = accept_scope
                    await self._accept(listener, clients)
                listener.close()
                await self._drain()
                clients.cancel_scope.cancel()
            self.pools.close()
            root.cancel_scope.cancel()

    async def _after_connect(self, pool: Pool, server: ServerConnection) -> None:
        """after_connect hooks: their statements run on a new server connection before it
        enters the pool; one failing refuses the connection (logged)."""
        hooks = self.hooks.for_database(pool.logical_database)
        if not hooks.after_connect:
            return
        s = pool.settings
        info = ServerInfo(database=pool.logical_database, user=s.user, host=s.host, port=s.port,
                          role=pool.role, shard=pool.shard)
        for label, sql in hooks.statements_for(info):
            try:
                with trio.fail_after(s.connect_timeout or None):
                    await server.execute(sql)
            except (*CONNECT_ERRORS, trio.TooSlowError) as exc:
                why = exc.fields.get("M", str(exc)) if isinstance(exc, ServerError) else repr(exc)
                log.error("pool %s: %s after_connect statement failed, connection discarded: "
                          "%s (%s)", pool.name, label, why, sql)
                raise ProxyError(codes.CONNECTION_FAILURE,
                                 f"new server connection for pool {pool.name} refused: {label} "
                                 f"after_connect statement failed: {why}") from None

    async def _accept(self, listener: socket.socket, clients: trio.Nursery) -> None:
        while True:
            await trio.lowlevel.wait_readable(listener)
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:  # e.g. EMFILE: keep serving the clients we have
                log.error("accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            set_nodelay(sock)
            peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
            # A name given: Trio would otherwise format one string per client.
            clients.start_soon(ClientSession(self, Conn(sock, peer), peer).run, name=_SESSION_TASK)

    async def _signals(self, root_scope: trio.CancelScope, clients: trio.Nursery) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    self.reload()
                    continue
                if self.shutting_down:
                    log.warning("second %s: stopping now", signal.Signals(signum).name)
                    root_scope.cancel()
                    return
                log.info("%s: shutting down (waiting up to %d ms for in-flight transactions)",
                         signal.Signals(signum).name, self.config.general.shutdown_timeout)
                self.shutdown()

    def reload(self) -> None:
        """SIGHUP: reread both files; an invalid one keeps the running configuration."""
        old = self.config
        if old.pgdog_path is None:
            log.warning("SIGHUP: configuration did not come from files; nothing to reload")
            return
        try:
            new = load_config(old.pgdog_path, old.users_path)
        except ConfigError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            return
        g_old, g_new = old.general, new.general
        if (g_old.host, g_old.port) != (g_new.host, g_new.port):
            log.warning("reload: host/port changes need a restart; still listening on %s:%d",
                        g_old.host, g_old.port)
        # From here to the pools' swap nothing awaits: a client sees the old configuration
        # or the new one, never half of each.
        self.config = new
        # Hooks that do not stay are unloaded before their replacements load: a native
        # plugin's library is loaded once per process, so old and new share its state.
        kept = [e for e in self.hooks.entries if e.key is not None and e.key in new.plugins]
        self.hooks.close(keep=kept)
        self.hooks = build_registry(new, self.hooks)
        self.pools.apply(new, self._root)
        log.info("configuration reloaded: %d users, %d pools", len(new.users), len(self.pools.pools))

    def shutdown(self) -> None:
        """Stop accepting; idle clients are told and closed, busy ones finish their transaction."""
        self.shutting_down = True
        self._accept_scope.cancel()
        for session in list(self.sessions.values()):
            session.interrupt_idle()

    async def _drain(self) -> None:
        with trio.move_on_after(self.config.general.shutdown_timeout / 1000):
            await self._no_sessions.wait()
            return
        log.warning("shutdown_timeout reached with %d clients still busy; closing them",
                    len(self.sessions))


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(_LISTEN_BACKLOG)
    sock.setblocking(False)
    return sock


def startup_banner() -> str:
    """The first log line: the proxy's version, the native plugin ABI it speaks and the SQL
    parser it uses (pglast, and the PostgreSQL release libpg_query's parser comes from), and
    whether the hook path's C speedups are on."""
    import pglast
    from pglast.parser import get_postgresql_version

    from . import speedups
    from .hooks.native import ABI_VERSION

    pg_major, pg_minor = get_postgresql_version()
    return (f"trio_pgdog {__version__} starting (plugin ABI version {ABI_VERSION}, "
            f"pglast {pglast.__version__.lstrip('v')}, libpg_query PostgreSQL {pg_major}.{pg_minor}, "
            f"C speedups {speedups.status()})")
