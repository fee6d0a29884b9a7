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
import time
from typing import TYPE_CHECKING

import trio

from ..hooks.registry import EMPTY, HookRegistry, HookSet
from ..netio import Conn, ConnectionClosed, Poller
from ..pool.hosts import PRIMARY, REPLICA, HostGroup
from ..pool.server import ServerConnection
from ..pool.stats import clock_ns
from ..protocol import ProtocolError
from ..protocol import errors as codes
from ..protocol import messages as m
from .attach import Attach, give_back
from .departures import Departure
from .failures import ClientGone, Failures, shutdown_error
from .guards import guard_session_sql, only_notices, statements_in
from .hooked import HookedStream
from .login import Login
from .params import NO_NAMES, ClientParams
from .parking import Parking
from .routing import Routing
from .scan import ClientScan, ServerScan
from .sharded import ShardedRelay
from .sqltext import unmark_errors
from .tracker import Tracker
from .unique_ids import ids_in_queries

if TYPE_CHECKING:
    from .host import Host

log = logging.getLogger(__name__)


_wait_readable = trio.lowlevel.wait_readable


class ClientSession(Login, Attach, Routing, Failures, Parking):
    # An idle client costs the proxy what its session keeps (docs/benchmarks.md, "memory per
    # idle client"): slots instead of a __dict__, shared empty values, objects made when
    # first needed, and no coroutine frame but run's above Trio's wait while the client is
    # quiet (so the relay loop lives in run).
    __slots__ = (
        "_asked_at",
        "_backoff",
        "_hooked_syncs",
        "_idle_on",
        "_parked",
        "_poller",
        "_registry",
        "_replay",
        "_since",
        "_slot",
        "_turns",
        "_writing",
        "_xact_at",
        "addr",
        "app",
        "client",
        "connected_at",
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
        "relay",
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
        self.recheck: frozenset[str] | None = NO_NAMES  # settings a SET may have changed; None: all
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
        self.relay: ShardedRelay | None = None  # a sharded database's clients only
        # When the request under way and the transaction under way started (clock_ns()), for
        # the pool's query and transaction time (pool/stats.py).
        self._asked_at = 0
        self._xact_at = 0
        self.connected_at = time.time()  # SHOW CLIENTS' connect_time
        # While parked in the C reactor (session/parking.py): its slot, and the task waiting.
        self._slot: object | None = None
        self._parked: trio.lowlevel.Task | None = None
        self._backoff = self._turns = 0  # parking skipped after coming straight back

    # --- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        """The session's task: login, then the relay loop until the client leaves. (The loop
        is written out here rather than in a coroutine of its own: see the class comment.)"""
        try:
            if not await self._login():
                return
            sharding = self.app.shard_facts(self.database)
            if sharding is not None:  # a sharded database: its own relay (session/sharded.py)
                self.relay = ShardedRelay(self, sharding)
                await self.relay.serve()
                return
            client = self.client
            while True:
                data = b""  # the last chunk (up to RECV_SIZE) is not kept through the next wait
                server = self.server
                if server is None:  # between transactions: wait for the client
                    if self.app.shutting_down:
                        raise shutdown_error()
                    if client.buffered:
                        data = await client.recv()
                    elif self._may_park():  # plain traffic runs in C until it is not
                        await self._park()
                        continue
                    else:
                        self._idle_on = client.sock
                        try:
                            await _wait_readable(client.fd)
                        except trio.ClosedResourceError:  # shutdown interrupted the wait
                            raise shutdown_error() from None
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
                    if self._may_park():
                        await self._park()
                    else:
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

    def busy_servers(self) -> list[ServerConnection]:
        """Servers running something for this client (or for it when it left)."""
        if self.relay is not None:
            return self.relay.busy_servers()
        if self._slot is not None:
            return self._parked_servers()
        server = self.server
        if server is not None and (self.pending or self.departure is not None):
            return [server]
        return []

    @property
    def asked_at(self) -> int:
        """clock_ns() when the client's latest request went to a server (0: none yet)."""
        return self._asked_at

    def kill(self, why: str) -> None:
        """The admin console's KILL: tell the client (if its socket takes it now), hang up
        (a session waiting on its client wakes to the end of its stream), and cancel the
        query it is running; the session ends as for a client that left."""
        with contextlib.suppress(OSError):
            self.client.sock.send(m.error_response(codes.ADMIN_SHUTDOWN, why, severity="FATAL"))
        with contextlib.suppress(OSError):
            self.client.sock.shutdown(socket.SHUT_RDWR)
        for server in self.busy_servers():
            self.app.spawn(self.app.cancel_server, self, server)

    def interrupt_idle(self) -> None:
        """Shutdown: wake this session if it is waiting for its client between transactions."""
        if self._idle_on is not None:
            trio.lowlevel.notify_closing(self._idle_on)
        self._unpark_idle()


    # --- login ----------------------------------------------------------------------------------


    # --- relay ----------------------------------------------------------------------------------

    async def _wait_both(self, server: ServerConnection) -> None:
        if self._poller is None:
            self._poller = Poller()
        self._poller.watch(self.client, server.conn)
        idle = not self.pending and not self.copy_in and not self.cscan.in_batch
        if idle and self.app.shutting_down:
            raise shutdown_error()
        self._idle_on = self._poller.waitable if idle else None
        try:
            client_ready, server_ready = await self._poller.wait()
        except trio.ClosedResourceError:
            raise shutdown_error() from None
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
            if (b"unique_id" in data or b"UNIQUE_ID" in data) and at_boundary \
                    and not cscan.mid_message:  # whole messages: pgdog.unique_id() in Queries
                data = ids_in_queries(data, self.app.node_id)
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
                        give_back(server)  # due for a check: _attach does it properly
                    if not await self._attach(role):
                        return
                if role == REPLICA and self.transaction_mode and not cscan.in_batch:
                    # A read may be retried on another host if this one fails before
                    # answering anything (never a write: it may have been done).
                    self._replay = (data, at_boundary, at_sync, self.pending)
            await self._send_to_server(data, at_boundary, at_sync)
        if cscan.terminate >= 0:
            raise ClientGone

    async def _send_to_server(self, data: bytes, at_boundary: bool, at_sync: bool) -> None:
        cscan = self.cscan
        server = self.server
        assert server is not None
        if not self.pending:  # a request starts: the clock of the pool's query time
            self._asked_at = now = clock_ns()
            if server.status == b"I":
                self._xact_at = now
        sync = self.settings.sync_sql(server)
        if sync is not None and not await self._sync_settings(server, *sync):
            return
        if cscan.sets and self.transaction_mode and at_boundary:
            self._note_sets(statements_in(data))
        if self.transaction_mode and cscan.special and at_boundary:
            data = self.guard_session_sql(data, server)
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
        server.stats.bytes_received += len(data)
        try:
            sent = conn.send_nowait(data)
            if sent != len(data):
                await conn.send(data, sent)
        except ConnectionClosed:
            await self._server_lost(b"")

    def guard_session_sql(self, data: bytes, server: ServerConnection) -> bytes:
        """Transaction mode: refuse what cannot be shared (see _guard_session_sql below)."""
        data, discarded_all, sets = guard_session_sql(data, server)
        if discarded_all:
            self.recheck = None  # every setting is back to its default
        elif sets:  # after a comment: the scan did not see them
            self._note_sets(sets)
        return data

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
            if sscan.dropped:  # DEALLOCATE or DISCARD ALL ran (nothing of the proxy's was sent)
                server.statements.dropped(sscan.dropped)
            if sscan.errors:
                server.stats.errors += sscan.errors
                sscan.errors = 0
            ready = sscan.ready
            self.copy_in = sscan.copy_in
        else:
            data, ready, fatal = tracker.from_server(data, server.statements)
            if fatal:
                await self._server_lost(data, m.parse_error_fields(tracker.fatal_body))
                return
            if tracker.errors:
                server.stats.errors += tracker.errors
                tracker.errors = 0
            self.copy_in = tracker.copy_in
        hooked = self.hooked
        if hooked is not None:
            if hooked.tracking:
                data = hooked.from_server(data)
            else:  # everything went as the client sent it: only the status matters
                hooked.server_ready(ready, self.copy_in)
        client = self.client
        stats = server.stats
        if data and self.departure is None:
            stats.bytes_sent += len(data)
            if data[0] != 0x4E or not only_notices(data):
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
        stats.query_count += len(ready)
        stats.xact_count += ready.count(b"I")  # each idle ReadyForQuery ends a transaction
        if not self.pending:
            now = clock_ns()
            stats.query_time_us += (now - self._asked_at) // 1000
            if server.status == b"I":
                stats.xact_time_us += (now - self._xact_at) // 1000
        await self._answered(server)

    async def _answered(self, server: ServerConnection) -> None:
        """The server answered (some of) what it owed: a departed client's session ends once
        it owes nothing; a transaction-mode server idle again goes back to its pool."""
        tracker = self.tracker
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
            give_back(server)

    # --- errors on the data path ----------------------------------------------------------------
