"""A pool of server connections for one (user, database) pair.

Checkout is LIFO over idle connections (the most recently used one is the warmest) and
FIFO over waiting clients. A waiting client is handed a connection directly by checkin,
so a burst of clients cannot starve the one that waited longest.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable

import trio

from ..protocol import ProxyError
from ..protocol import errors as codes
from .lag import UNWATCHED, ReplicaLag
from .server import CONNECT_ERRORS, ServerConnection, check_server, describe_connect_error
from .settings import PoolSettings
from .stats import PoolStats

log = logging.getLogger(__name__)

# Prefill retries back off up to this many seconds while the server is unreachable.
_MAX_PREFILL_BACKOFF = 5.0


class PoolRetired(ProxyError):
    """A reload replaced or removed the pool: the client retries on its current hosts."""

    def __init__(self, name: str):
        super().__init__(codes.ADMIN_SHUTDOWN,
                         f"pool {name} was retired by a configuration reload",
                         hint="retry: the reloaded configuration serves the next attempt")


class _Waiter:
    __slots__ = ("event", "may_connect", "pool", "server", "since")

    def __init__(self, pool: Pool, since: float) -> None:
        self.since = since  # trio time it started waiting (SHOW POOLS' maxwait)
        self.event = trio.Event()
        self.pool = pool  # whose queue it is in: a reload moves it to the pool's replacement
        self.server: ServerConnection | None = None
        self.may_connect = False


class Pool:
    def __init__(self, name: str, settings: PoolSettings):
        self.name = name
        self.settings = settings
        self.idle: list[ServerConnection] = []
        self.total = 0  # open connections plus connections being opened
        self.waiters: deque[_Waiter] = deque()
        self.server_params: dict[str, str] | None = None
        self.closed = False
        self.retired = False  # closed by a reload, which may have named a successor
        self.successor: Pool | None = None
        self.banned_until = float("-inf")  # trio time until which the host gets no traffic
        self.lag: ReplicaLag = UNWATCHED  # a replica's replication lag (HostGroup.watch)
        self.on_failure: Callable[[Pool, str], None] | None = None  # the host group bans
        # after_connect hooks: run on each new connection before it is used; raises to refuse.
        self.on_connect: Callable[[Pool, ServerConnection], Awaitable[None]] | None = None
        self.logical_database = ""  # the [[databases]] name, its role and shard (for hooks)
        self.role = "primary"
        self.shard = 0
        self.stats = PoolStats()
        # Gives back the idle servers the C path keeps between transactions (app.settle).
        self.reclaim: Callable[[], None] | None = None
        # Hands a connection to a request waiting for one in the C path (reactor.offering),
        # unless a waiter here has waited as long (seconds); with None, a freed slot: the
        # request goes to the Python path, which opens one.
        self.offer: Callable[[Pool, ServerConnection | None, float | None], bool] | None = None
        self.opening = 0  # connections logging in now (SHOW POOLS' sv_login)
        self.paused = False  # the admin console's PAUSE: new checkouts wait for RESUME
        self._resumed = trio.Event()
        # The admin console's RECONNECT: connections made before this trio time are closed
        # when they come back instead of being reused.
        self.reconnect_before = float("-inf")
        self._drained = trio.Event()
        self._wake = trio.Event()
        self._deadline = float("inf")  # when the janitor next wakes by itself
        self._last_check = trio.current_time()
        self._scope: trio.CancelScope | None = None

    def __repr__(self) -> str:
        return f"<pool {self.name} total={self.total} idle={len(self.idle)}>"

    @property
    def in_use(self) -> int:
        return self.total - len(self.idle)

    # --- checkout / checkin ----------------------------------------------------------------

    def take_idle(self) -> ServerConnection | None:
        """The warmest idle connection without waiting, if one is free (checkout's fast path)."""
        while self.idle and not self.closed and not self.paused:
            server = self.idle.pop()
            now = trio.current_time()
            if now - server.created_at < self.settings.server_lifetime:
                # Idle for a whole health-check interval: the caller checks it before use.
                server.needs_check = now - server.last_used >= self.settings.healthcheck_interval
                return server
            self._discard(server)  # expired while idle, before the janitor got to it
        return None

    def untake(self, server: ServerConnection) -> None:
        """Undo take_idle (the C path declined the connection): idle again, as it was."""
        self.idle.append(server)

    async def checkout(self) -> ServerConnection:
        while self.paused and not self.closed:
            await self._resumed.wait()  # PAUSE holds new transactions until RESUME
        if self.closed:
            raise self._closed_error()
        server = self.take_idle()
        if server is None and self.reclaim is not None:
            self.reclaim()  # idle servers the C path keeps (session/parking.py) come back
            server = self.take_idle()
        if server is not None:
            return server
        if self.total < self.settings.pool_size:
            self.total += 1
            return await self._open()
        return await self._wait()

    def checkin(self, server: ServerConnection, reusable: bool = True) -> None:
        """Take a connection back; closes it unless it is idle, healthy and young enough."""
        now = trio.current_time()
        server.last_used = now
        if (not reusable or server.broken or self.closed or server.status != b"I"
                or now - server.created_at >= self.settings.server_lifetime
                or server.created_at <= self.reconnect_before):
            self._discard(server)
            return
        if not self.paused and self._to_waiter(server):
            return
        self.idle.append(server)
        if self.paused:
            self._drained.set()  # PAUSE waits for the last connection in use to come back
        expiry = min(now + self.settings.idle_timeout, server.created_at + self.settings.server_lifetime)
        if expiry < self._deadline:
            self._wake.set()  # the janitor sleeps past this connection's expiry

    def _to_waiter(self, server: ServerConnection) -> bool:
        """Hand `server` to whoever has waited longest for one: the first waiter here, or the
        first request in line in the C path (Pool.offer). False if nobody waits."""
        waited = trio.current_time() - self.waiters[0].since if self.waiters else None
        if self.offer is not None and self.offer(self, server, waited):
            return True
        if not self.waiters:
            return False
        waiter = self.waiters.popleft()
        waiter.server = server
        waiter.event.set()
        return True

    def _discard(self, server: ServerConnection) -> None:
        server.close()
        self._slot_freed()

    def _slot_freed(self) -> None:
        """A connection slot became free: hand it to the first waiter, if any."""
        if self.paused:
            self._drained.set()
        if self.waiters and not self.closed and not self.paused:
            waiter = self.waiters.popleft()
            waiter.may_connect = True  # the slot stays counted in total, reserved for it
            waiter.event.set()
            return
        self.total -= 1
        if self.offer is not None and not self.closed and not self.paused:
            self.offer(self, None, None)  # a request in line in C: its Python path opens one
        if self.total < self.settings.min_pool_size:
            self._wake.set()

    async def _open(self) -> ServerConnection:
        """Open a connection in a slot already counted in `total`."""
        s = self.settings
        self.opening += 1
        try:
            with trio.fail_after(s.connect_timeout):
                server = await ServerConnection.connect(s.host, s.port, s.startup_params(),
                                                        s.password, s.statements_limit, s.tls)
        except trio.TooSlowError:
            self.stats.errors += 1
            self._slot_freed()
            raise ProxyError(codes.CONNECTION_FAILURE,
                             f"could not connect to server {s.host}:{s.port} for pool {self.name}"
                             f" within connect_timeout ({s.connect_timeout * 1000:.0f} ms)") from None
        except CONNECT_ERRORS as exc:
            self.stats.errors += 1
            self._slot_freed()
            raise ProxyError(getattr(exc, "sqlstate", codes.CONNECTION_FAILURE),
                             f"could not connect to server {s.host}:{s.port} for pool "
                             f"{self.name}: {describe_connect_error(exc)}") from None
        except BaseException:
            self._slot_freed()
            raise
        finally:
            self.opening -= 1
        server.pool = self
        server.stats = self.stats
        if self.on_connect is not None:
            try:
                await self.on_connect(self, server)
            except BaseException:
                server.close()
                self._slot_freed()
                raise
        if self.server_params is None:
            self.server_params = dict(server.params)
        return server

    async def _wait(self) -> ServerConnection:
        now = trio.current_time()
        waiter = _Waiter(self, now)
        self.waiters.append(waiter)
        # One deadline, wherever a reload moves the waiter: moving is not starting over.
        deadline = now + self.settings.checkout_timeout
        while True:
            try:
                with trio.move_on_at(deadline):
                    await waiter.event.wait()
            except BaseException:
                waiter.pool._abandon(waiter)
                raise
            pool = waiter.pool
            if waiter.server is not None:
                return waiter.server
            if waiter.may_connect:
                if not pool.closed:
                    return await pool._open()
                # Handed a slot by a pool a reload retired before this task ran: the slot
                # goes back, and the waiter is first in line at the pool's replacement.
                waiter.may_connect = False
                pool._slot_freed()
                successor = pool._live_successor()
                if successor is None:
                    raise pool._closed_error()
                waiter.event = trio.Event()
                successor._adopt(waiter, first=True)
                continue
            if pool.closed:
                raise pool._closed_error()
            pool._abandon(waiter)
            raise pool.timeout_error()

    def timeout_error(self) -> ProxyError:
        """What a client hears when no connection came within checkout_timeout."""
        return ProxyError(codes.TOO_MANY_CONNECTIONS,
                          f"no server connection available in pool {self.name} within "
                          f"checkout_timeout ({self.settings.checkout_timeout * 1000:.0f} ms): "
                          f"all {self.settings.pool_size} connections are busy")

    # --- the admin console: PAUSE, RESUME, RECONNECT --------------------------------------------

    def pause(self) -> None:
        """Hand out no connection until resume(); transactions under way go on."""
        if not self.paused:
            self.paused = True
            self._resumed = trio.Event()

    async def wait_drained(self) -> None:
        """Return once no connection of this paused pool is in use."""
        while self.paused and not self.closed and self.in_use > 0:
            self._drained = trio.Event()
            await self._drained.wait()

    def resume(self) -> None:
        """Serve again: the clients that queued meanwhile get connections, first come first."""
        if not self.paused:
            return
        self.paused = False
        self._resumed.set()
        while self.waiters and self.idle:
            waiter = self.waiters.popleft()
            waiter.server = self.idle.pop()
            waiter.event.set()
        while self.waiters and self.total < self.settings.pool_size:
            self.total += 1
            waiter = self.waiters.popleft()
            waiter.may_connect = True
            waiter.event.set()

    def reconnect(self) -> None:
        """Replace every connection: idle ones now, those in use as they come back."""
        self.reconnect_before = trio.current_time()
        self._close_idle()
        self._wake.set()  # the janitor refills min_pool_size with new connections

    def _abandon(self, waiter: _Waiter) -> None:
        """A waiter gave up (timeout, client gone): return whatever it was handed."""
        with contextlib.suppress(ValueError):
            self.waiters.remove(waiter)
        if waiter.server is not None:
            self.checkin(waiter.server)
        elif waiter.may_connect:
            self._slot_freed()

    def _adopt(self, waiter: _Waiter, first: bool = False) -> None:
        """Take over a waiter of the pool this one replaces: a connection or a free slot if
        there is one, else a place in the queue (`first`: at its head)."""
        waiter.pool = self
        server = self.take_idle()
        if server is not None:
            waiter.server = server
            waiter.event.set()
        elif self.total < self.settings.pool_size:
            self.total += 1
            waiter.may_connect = True
            waiter.event.set()
        elif first:
            self.waiters.appendleft(waiter)
        else:
            self.waiters.append(waiter)

    def _closed_error(self) -> ProxyError:
        if self.retired:
            return PoolRetired(self.name)
        return ProxyError(codes.ADMIN_SHUTDOWN, f"pool {self.name} is closed")

    def _live_successor(self) -> Pool | None:
        """The pool serving what this retired one did, following reloads that came since."""
        pool = self.successor
        while pool is not None and pool.closed:
            pool = pool.successor
        return pool

    async def startup_params(self) -> dict[str, str]:
        """The server's ParameterStatus values, connecting once if none is known yet."""
        if self.server_params is None:
            self.checkin(await self.checkout())
        assert self.server_params is not None
        return self.server_params

    # --- maintenance -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """The pool's own nursery: prefill and reaping. Returns when the pool is closed."""
        try:
            with trio.CancelScope() as self._scope:
                task_status.started()
                if not self.closed:  # a reload may retire a pool before its task starts
                    await self._maintain()
        finally:
            self._close_idle()

    def close(self) -> None:
        self.closed = True
        self._resumed.set()  # checkouts held by PAUSE find the pool closed (or retired)
        if self._scope is not None:
            self._scope.cancel()
        self._close_idle()
        for waiter in self.waiters:
            waiter.event.set()  # they find neither a server nor a slot: the pool is closed
        self.waiters.clear()

    def retire(self, successor: Pool | None) -> None:
        """A reload replaced this pool by `successor` (None: removed it). Its waiters move to
        the successor in their order, or retry on their client's current hosts; connections
        in use are closed when they come back."""
        self.retired = True
        self.successor = successor
        if successor is not None:
            waiters, self.waiters = self.waiters, deque()
            for waiter in waiters:
                successor._adopt(waiter)
        self.close()

    def _close_idle(self) -> None:
        while self.idle:
            self.idle.pop().close()
            self.total -= 1

    async def _maintain(self) -> None:
        backoff = 0.1
        while True:
            self._wake = trio.Event()
            self._reap()
            if await self._prefill():
                backoff = 0.1
                deadline = self._next_expiry()
            else:
                deadline = trio.current_time() + backoff
                backoff = min(backoff * 2, _MAX_PREFILL_BACKOFF)
            deadline = min(deadline, self._last_check + self.settings.healthcheck_interval)
            self._deadline = deadline
            with trio.move_on_at(deadline):
                await self._wake.wait()
            if trio.current_time() >= self._last_check + self.settings.healthcheck_interval:
                await self._healthcheck()

    async def _healthcheck(self) -> None:
        """Check idle connections unused for a whole interval; a failure closes the connection
        and tells the host group, which bans the host."""
        self._last_check = now = trio.current_time()
        due = [s for s in self.idle if now - s.last_used >= self.settings.healthcheck_interval]
        for server in due:
            if server not in self.idle:
                continue  # handed out meanwhile
            self.idle.remove(server)
            try:
                healthy = await check_server(server, self.settings.healthcheck_timeout)
            except BaseException:  # the pool closed meanwhile: the slot must not leak
                self._discard(server)
                raise
            if healthy:
                self.checkin(server)
            else:
                self._discard(server)
                self.report_failure("health check failed")

    def report_failure(self, why: str) -> None:
        self.stats.errors += 1
        if self.on_failure is not None:
            self.on_failure(self, why)

    async def _prefill(self) -> bool:
        """Open connections up to min_pool_size; False if the server could not be reached."""
        while self.total < self.settings.min_pool_size and not self.closed:
            self.total += 1
            try:
                server = await self._open()
            except ProxyError as exc:
                log.warning("pool %s: prefill failed: %s", self.name, exc.message)
                return False
            self.checkin(server)
        return True

    def _reap(self) -> None:
        """Close connections idle past idle_timeout (down to min_pool_size) or past server_lifetime."""
        now = trio.current_time()
        s = self.settings
        keep: list[ServerConnection] = []
        spare = self.total - s.min_pool_size
        for server in self.idle:  # oldest use first: the stack's bottom
            too_old = now - server.created_at >= s.server_lifetime
            too_idle = spare > 0 and now - server.last_used >= s.idle_timeout
            if too_old or too_idle:
                server.close()
                self.total -= 1
                spare -= 1
            else:
                keep.append(server)
        self.idle[:] = keep

    def _next_expiry(self) -> float:
        s = self.settings
        deadlines = [srv.created_at + s.server_lifetime for srv in self.idle]
        if self.total > s.min_pool_size:  # connections kept for min_pool_size never idle out
            deadlines += [srv.last_used + s.idle_timeout for srv in self.idle]
        # checkin wakes the janitor when a connection expires sooner than this; the
        # minute cap keeps it honest otherwise.
        return min([*deadlines, trio.current_time() + 60.0])
