"""The running proxy: listeners, pools and client sessions under one root nursery."""

from __future__ import annotations

import functools
import hmac
import logging
import secrets
import signal
import socket
from collections.abc import Awaitable, Callable, Mapping

import attrs
import trio

from . import __version__, listener, logs, tls, workers
from . import reactor as c_path
from .config import Config, ConfigError, load_config
from .hooks.api import ServerInfo
from .hooks.errors import HookLoadError
from .hooks.registry import HookRegistry, build_registry
from .metrics import server as metrics_server
from .netio import Conn, set_nodelay
from .pool import probe
from .pool.manager import PoolManager
from .pool.pool import Pool
from .pool.server import CONNECT_ERRORS, ServerConnection, send_cancel
from .protocol import ProxyError, ServerError
from .protocol import errors as codes
from .router.cache import ParseCache
from .router.sharding.keys import FactsCache
from .router.sharding.schema import ShardingSchema
from .session import departures
from .session.prepared import StatementRegistry
from .session.session import ClientSession
from .session.spellings import Spellings
from .session.startup import Cancel
from .twophase import recovery
from .twophase.journal import Journal
from .workers import WorkerSlot

log = logging.getLogger(__name__)

_SESSION_TASK = "trio_pgdog client session"  # one shared name: no string per task

def with_general(config: Config, overrides: Mapping[str, object]) -> Config:
    """`config` with some [general] keys replaced (--host, --port on the command line)."""
    if not overrides:
        return config
    return attrs.evolve(config, general=attrs.evolve(config.general, **overrides))


class Proxy:
    def __init__(self, config: Config, overrides: Mapping[str, object] | None = None,
                 worker: WorkerSlot | None = None):
        # [general] keys from the command line: they win over the files, on reload too.
        self.overrides = dict(overrides or {})
        self.config = with_general(config, self.overrides)
        self.worker = worker  # one of several processes serving the port (workers.py)
        self.pools = PoolManager(on_connect=self._after_connect,
                                 share=worker.share if worker is not None else None)
        self.hooks = HookRegistry()  # loaded in run(), rebuilt on reload
        self.sessions: dict[int, ClientSession] = {}  # by the pid in their BackendKeyData
        self.statements = StatementRegistry()  # shared prepared-statement names
        self.spellings = Spellings()  # PostgreSQL's spelling of clients' setting values
        self.parse_cache = ParseCache()  # statement facts per distinct SQL text, for routing
        # Sharding facts per distinct SQL text, one cache per sharding schema in use.
        self._shard_facts: dict[ShardingSchema, FactsCache] = {}
        # Two-phase commits decided and not yet finished (its directory is read at start-up).
        self.journal = Journal(self.config.general.two_phase_journal_dir)
        self.shutting_down = False
        # The C path of plain transactions (session/parking.py); None: everything in Python.
        self.reactor: object | None = None
        # TLS towards clients: the context new clients' handshakes use (None: TLS off).
        # The configuration's checks loaded the same files, so this succeeds but for a race.
        self.client_tls = tls.client_context(self.config)
        self.listening: list[tuple[str, int]] = []
        self._no_sessions = trio.Event()
        self._no_sessions.set()

    # --- sessions -------------------------------------------------------------------------------

    def register(self, session: ClientSession) -> tuple[int, int]:
        """Give a logged-in session its own BackendKeyData (pid, secret)."""
        while True:
            if self.worker is None:
                pid = secrets.randbelow(0x7FFFFFFF - 1) + 1
            else:  # the pid says which worker the client is on (cancel requests)
                pid = self.worker.pid_for(secrets.randbelow(0x7FFFFFFF // self.worker.count - 1) + 1)
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
        """Forward a CancelRequest to the server running that client's query, if any (or to
        the worker process the client is on)."""
        if self.worker is not None and not self.worker.owns(request.pid):
            await workers.pass_cancel(self.worker, request.pid, request.secret)
            return
        await self._cancel(request.pid, request.secret)

    async def _cancel(self, pid: int, secret: int) -> None:
        session = self.sessions.get(pid)
        if session is None or not hmac.compare_digest(
                session.secret.to_bytes(4, "big"), secret.to_bytes(4, "big", signed=True)):
            log.info("cancel request for unknown client key %d ignored", pid)
            return
        # A sharded session's statement may run on several shards' servers: cancel each.
        servers = session.relay.busy_servers() if session.relay is not None else \
            [session.linked_server] if session.linked_server is not None else []
        async with trio.open_nursery() as nursery:
            for server in servers:
                nursery.start_soon(self._cancel_one, session, server)

    async def cancel_server(self, session: ClientSession, server: ServerConnection) -> None:
        """Cancel what `server` runs for `session` (the admin console's KILL)."""
        await self._cancel_one(session, server)

    async def _cancel_one(self, session: ClientSession, server: ServerConnection) -> None:
        if await send_cancel(server, self.config.general.connect_timeout / 1000):
            log.info("client %s: cancel forwarded to %r", session.addr, server)

    @property
    def node_id(self) -> int:
        """This process's node in unique ids and two-phase commit names: [general] node_id,
        plus the worker's index when several workers serve (node_id .. node_id + workers - 1)."""
        index = self.worker.index if self.worker is not None else 0
        return self.config.general.node_id + index

    def shard_facts(self, database: str) -> FactsCache | None:
        """The sharding facts cache of a sharded logical database; None if it is not one."""
        schema = self.config.sharding_schema(database)
        if schema is None:
            return None
        cache = self._shard_facts.get(schema)
        if cache is None:
            if len(self._shard_facts) > 16:  # schemas a reload left behind
                self._shard_facts.clear()
            cache = self._shard_facts[schema] = FactsCache(schema)
        return cache

    def spawn(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        """Run a short task owned by the proxy (not by a session that may end first)."""
        self._root.start_soon(fn, *args)

    # --- serving --------------------------------------------------------------------------------

    async def run(self, sock: socket.socket | None = None,
                  on_listening: Callable[[], object] | None = None, *,
                  task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until shut down, on `sock` (from listener.bind) or on [general] host:port.
        Raises HookLoadError (a configured hook cannot load) or ListenError before serving;
        `on_listening` runs once clients can connect."""
        g = self.config.general
        if sock is None:
            sock = listener.bind(g.host, g.port)
        # Plugins load (and pgdog_init runs) before the port opens: a client never meets a
        # proxy whose hooks are still loading, nor one without a hook it was configured with.
        self.hooks = build_registry(self.config)
        metrics_sock = None
        try:
            if g.openmetrics_port is not None:
                # One port per worker (each has its own counters): openmetrics_port + index.
                index = self.worker.index if self.worker is not None else 0
                metrics_sock = listener.bind(g.openmetrics_host, g.openmetrics_port + index)
            listener.listen(sock)
            self.listening = [sock.getsockname()[:2]]
            await self._serve(sock, task_status, on_listening, metrics_sock)
        finally:
            if metrics_sock is not None:
                metrics_sock.close()
            self.hooks.close()  # native plugins' pgdog_fini, log files
        log.info("trio_pgdog stopped")

    async def _serve(self, sock: socket.socket, task_status: trio.TaskStatus,
                     on_listening: Callable[[], object] | None,
                     metrics_sock: socket.socket | None = None) -> None:
        g = self.config.general
        async with trio.open_nursery() as root:
            self._root = root
            if c_path.c is not None:
                self.reactor = c_path.c.Reactor()
                self.pools.reclaim = functools.partial(c_path.reclaim, self.reactor)
                self.pools.offer = c_path.offering(self.reactor)
                root.start_soon(c_path.serve, self.reactor)
            self.pools.apply(self.config, root)
            if self.worker is not None:
                await root.start(workers.serve_peer_cancels, self.worker, self._cancel)
            root.start_soon(recovery.run, self)
            async with trio.open_nursery() as clients:
                root.start_soon(self._signals, root.cancel_scope, clients)
                root.start_soon(departures.watch, self.sessions)
                log.info("listening on %s:%d (%s pooling)", *self.listening[0], g.pooler_mode)
                log.info("%s; %s", tls.describe_clients(self.config), tls.describe_servers(g))
                task_status.started(self.listening[0])
                if on_listening is not None:
                    on_listening()
                root.start_soon(check_servers, self.config)
                root.start_soon(self._roll_stats)
                if metrics_sock is not None:
                    await root.start(metrics_server.serve, self, metrics_sock)
                with trio.CancelScope() as accept_scope:
                    self._accept_scope = accept_scope
                    await self._accept(sock, clients)
                sock.close()
                await self._drain()
                clients.cancel_scope.cancel()
            self.settle()
            self.pools.close()
            root.cancel_scope.cancel()

    def settle(self) -> None:
        """Idle servers and counts the C path keeps between transactions, back in their pools
        (reactor.reclaim), and the requests waiting there for a connection back on the Python
        path: before anything looks at the pools or changes them."""
        if self.reactor is not None:
            c_path.reclaim(self.reactor)
            c_path.unqueue(self.reactor)

    async def _roll_stats(self) -> None:
        """Every stats_period, each pool's averages for SHOW STATS."""
        while True:
            period = self.config.general.stats_period / 1000
            await trio.sleep(period)
            for pool in self.pools.pools.values():
                pool.stats.roll(period)

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

    async def _accept(self, listening: socket.socket, clients: trio.Nursery) -> None:
        while True:
            await trio.lowlevel.wait_readable(listening)
            try:
                sock, addr = listening.accept()
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

    def reload(self) -> bool:
        """SIGHUP (and the admin console's RELOAD): reread both files; an invalid one, or a
        hook that cannot load, keeps the running configuration (False)."""
        old = self.config
        if old.pgdog_path is None:
            log.warning("SIGHUP: configuration did not come from files; nothing to reload")
            return False
        try:
            new = with_general(load_config(old.pgdog_path, old.users_path), self.overrides)
        except ConfigError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            return False
        try:  # the files again, even if their names did not change: renewed certificates
            client_tls = tls.client_context(new)
        except tls.TlsFileError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            return False
        # From here to the pools' swap nothing awaits: a client sees the old configuration
        # or the new one, never half of each.
        try:
            self.hooks = self._reload_hooks(old, new)
        except HookLoadError as exc:
            log.error("reload failed, keeping the running configuration (hooks included): %s", exc)
            return False
        g_old, g_new = old.general, new.general
        for key in ("host", "port", "openmetrics_host", "openmetrics_port"):
            if getattr(g_old, key) != getattr(g_new, key):
                log.warning("reload: %s changes need a restart; keeping %s", key,
                            getattr(g_old, key))
        self.client_tls = client_tls
        tls.forget_server_contexts()
        if self.reactor is not None:  # parked sessions ask Python for servers again
            self.reactor.new_epoch()
        self.settle()
        self.install(new)
        log.info("configuration reloaded: %d users, %d pools", len(new.users), len(self.pools.pools))
        return True

    def install(self, new: Config) -> None:
        """Run with `new` from now on (its hooks already loaded): pools whose settings
        changed are replaced, the others keep their connections."""
        self.config = new
        logs.use_format(new.general.log_format)
        self.pools.apply(new, self._root)

    def _reload_hooks(self, old: Config, new: Config) -> HookRegistry:
        """The hooks of `new`; HookLoadError if one cannot load, with the running hooks back."""
        # Hooks that do not stay are unloaded before their replacements load: a native
        # plugin's library is loaded once per process, so old and new share its state.
        kept = HookRegistry([e for e in self.hooks.entries
                             if e.key is not None and e.key in new.plugins])
        self.hooks.close(keep=kept.entries)
        try:
            return build_registry(new, kept)
        except HookLoadError:
            # Load the running configuration's hooks again (they loaded before, so they
            # should now); one that cannot is named, and the proxy runs without it.
            self.hooks = build_registry(old, kept, on_error=lambda exc: log.error(
                "reload: a hook of the running configuration could not be loaded again and "
                "is now OFF until a reload or restart succeeds: %s", exc))
            raise

    def shutdown(self) -> None:
        """Stop accepting; idle clients are told and closed, busy ones finish their transaction."""
        self.shutting_down = True
        if self.reactor is not None:
            self.reactor.new_epoch()
        self.settle()
        self._accept_scope.cancel()
        for session in list(self.sessions.values()):
            session.interrupt_idle()

    async def _drain(self) -> None:
        with trio.move_on_after(self.config.general.shutdown_timeout / 1000):
            await self._no_sessions.wait()
            return
        log.warning("shutdown_timeout reached with %d clients still busy; closing them",
                    len(self.sessions))


async def check_servers(config: Config) -> None:
    """Log in to each configured server once, as its first user (in the background, right
    after the port opened): one WARNING per server that fails, one INFO line if none does."""
    found = probe.targets(config, every_user=False)
    if config.users:
        for db in probe.unused_databases(config):
            log.warning("server %s (%s) %s:%d: no user in users.toml may connect to database "
                        "%r, so no client can use it", db.name, db.role, db.host, db.port, db.name)
    if not found:
        return
    try:
        outcomes = await probe.probe_all(found)
    except Exception:  # a diagnostic must not take the proxy down with it
        log.exception("start-up check of the servers failed")
        return
    failed = [o for o in outcomes if o.error is not None]
    for outcome in failed:
        log.warning("server %s: cannot log in: %s (clients of %r get errors until it can)",
                    outcome.target.describe(), outcome.error, outcome.target.entry.name)
    if not failed:
        log.info("start-up check: logged in to every configured server (%d login%s)",
                 len(outcomes), "" if len(outcomes) == 1 else "s")


def startup_banner() -> str:
    """The first log line: the proxy's version, the native plugin ABI it speaks and the SQL
    parser it uses (pglast, and the PostgreSQL release libpg_query's parser comes from), and
    whether the hook path's C speedups and the C path of plain transactions are on."""
    import pglast
    from pglast.parser import get_postgresql_version

    from . import speedups
    from .hooks.native import ABI_VERSION

    pg_major, pg_minor = get_postgresql_version()
    return (f"trio_pgdog {__version__} starting (plugin ABI version {ABI_VERSION}, "
            f"pglast {pglast.__version__.lstrip('v')}, libpg_query PostgreSQL {pg_major}.{pg_minor}, "
            f"C speedups {speedups.status()}, C path of plain transactions {c_path.status()})")
