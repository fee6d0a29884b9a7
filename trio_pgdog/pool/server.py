"""One authenticated connection from the proxy to a PostgreSQL server."""

from __future__ import annotations

import contextlib
import itertools
import logging
from typing import Protocol

import trio

from ..auth import server as server_auth
from ..netio import Conn, ConnectionClosed, connect_tcp
from ..protocol import ProtocolError, ProxyError, ServerError
from ..protocol import errors as codes
from ..protocol import messages as m
from ..tls import ServerTls, negotiate
from .settings import PoolSettings
from .statements import DEFAULT_SERVER_LIMIT, ServerStatements, drop_tag
from .stats import UNCOUNTED, PoolStats


class Home(Protocol):
    """What a connection knows of the pool it belongs to (pool/pool.py's Pool)."""

    settings: PoolSettings
    role: str
    closed: bool

    def checkin(self, server: ServerConnection, reusable: bool = True) -> None: ...

    def report_failure(self, why: str) -> None: ...

log = logging.getLogger(__name__)
_ids = itertools.count(1)


class ServerConnection:
    """A server socket plus what PostgreSQL told us at startup.

    `status` is the transaction status of the last ReadyForQuery ('I', 'T' or 'E').
    """

    def __init__(self, conn: Conn, host: str, port: int, statements_limit: int = DEFAULT_SERVER_LIMIT,
                 tls: ServerTls | None = None):
        self.id = next(_ids)
        self.conn = conn
        self.tls = tls  # how it was opened (cancel requests go the same way)
        self.host = host
        self.port = port
        self.params: dict[str, str] = {}
        self.pid = 0
        self.secret = 0
        self.status = b"I"
        now = trio.current_time()
        self.created_at = now
        self.last_used = now
        self.broken = False
        self.pool: Home | None = None  # the pool this connection belongs to
        self.stats: PoolStats = UNCOUNTED  # its pool's counters (the relay adds to them)
        self.needs_check = False  # idle so long that it is checked before use
        self.statements = ServerStatements(statements_limit)  # shared names prepared here
        self.synced_key: frozenset | None = None  # the ClientParams.key these settings match
        self.extra: set[str] = set()  # unreported settings the proxy SET here
        self.reported: set[str] = set()  # parameters reported by the last execute()

    def __repr__(self) -> str:
        return f"<server #{self.id} {self.host}:{self.port} pid={self.pid}>"

    @classmethod
    async def connect(cls, host: str, port: int, params: dict[str, str],
                      password: str | None, statements_limit: int = DEFAULT_SERVER_LIMIT,
                      tls: ServerTls | None = None) -> ServerConnection:
        """Connect (over TLS as `tls` says; None: plain), authenticate and read the startup
        burst up to ReadyForQuery.

        Raises OSError (cannot reach), ServerError (PostgreSQL refused), TlsError (TLS refused
        or not trusted) or ProxyError. The caller bounds the time with a cancel scope.
        """
        sock = await connect_tcp(host, port)
        server = cls(Conn(sock, f"{host}:{port}"), host, port, statements_limit, tls)
        try:
            if tls is not None and tls.mode != "disabled":
                server.conn = await negotiate(server.conn, host, port, tls)
                if server.conn.tls:
                    log.debug("%r: %s", server, server.conn.describe())
            await server.conn.send(m.startup_message(params))
            await server_auth.authenticate(server.conn, params["user"], password)
            await server._read_startup_burst()
        except BaseException:
            server.close()
            raise
        return server

    async def _read_startup_burst(self) -> None:
        while True:
            kind, body = await self.conn.read_message()
            if kind == b"S":
                name, value = m.parse_parameter_status(body)
                self.params[name] = value
            elif kind == b"K":
                self.pid, self.secret = m.unpack_i32(body), m.unpack_i32(body, 4)
            elif kind == b"Z":
                self.status = body[:1]
                return
            elif kind == b"E":
                raise ServerError(m.parse_error_fields(body))
            elif kind != b"N":
                raise ProtocolError(f"unexpected message {kind!r} from server during startup")

    async def execute(self, sql: str) -> None:
        """Run simple-protocol SQL to completion; raise ServerError if it failed."""
        await self.query_row(sql)

    async def query_row(self, sql: str) -> list[str | None]:
        """Run simple-protocol SQL to completion and return its first row as text (None for
        NULL; [] if no rows). ParameterStatus reports update `params` and `reported`."""
        await self.conn.send(m.query(sql))
        row: list[str | None] | None = None
        error: dict[str, str] | None = None
        self.reported = set()
        while True:
            kind, body = await self.conn.read_message()
            if kind == b"D" and row is None:
                row = m.parse_data_row(body)
            elif kind == b"S":
                name, value = m.parse_parameter_status(body)
                self.params[name] = value
                self.reported.add(name)
                self.synced_key = None
            elif kind == b"C" and (dropped := drop_tag(body)):
                self.statements.dropped(dropped)  # the proxy's own DISCARD ALL
            elif kind == b"E":
                error = m.parse_error_fields(body)
            elif kind == b"Z":
                self.status = body[:1]
                break
        if error is not None:
            raise ServerError(error)
        return row or []

    def close(self) -> None:
        """Say goodbye without waiting (the socket is non-blocking) and close."""
        if self.conn.closed:
            return
        with contextlib.suppress(OSError, ConnectionClosed):
            self.conn.send_nowait(m.terminate())
        self.conn.close()


async def try_execute(server: ServerConnection, sql: str, timeout: float) -> bool:
    """Run `sql`, returning False (and marking the connection broken) on any failure."""
    with trio.move_on_after(timeout):
        try:
            await server.execute(sql)
            return server.status == b"I"
        except (ServerError, ConnectionClosed, ProtocolError, ProxyError, OSError) as exc:
            log.info("%r: %s failed: %s", server, sql, exc)
    server.broken = True
    return False


async def check_server(server: ServerConnection, timeout: float) -> bool:
    """A health check: an empty query answered within `timeout`."""
    server.needs_check = False
    with trio.move_on_after(timeout):
        try:
            await server.execute(";")
            return server.status == b"I"
        except (ServerError, ConnectionClosed, ProtocolError, OSError):
            return False
    return False


async def send_cancel(server: ServerConnection, timeout: float) -> bool:
    """Ask PostgreSQL to cancel what `server` is running: a CancelRequest on a new connection.
    Returns once PostgreSQL has closed that connection (it has signalled the backend by
    then), or False if it could not be delivered within `timeout` seconds."""
    with trio.move_on_after(timeout):
        try:
            sock = await connect_tcp(server.host, server.port)
        except OSError as exc:
            log.info("%r: cancel request not delivered: %s", server, exc)
            return False
        conn = Conn(sock)
        try:
            if server.conn.tls and server.tls is not None:  # the key goes as the queries went
                conn = await negotiate(conn, server.host, server.port, server.tls)
            await conn.send(m.cancel_request(server.pid, server.secret))
            with contextlib.suppress(ConnectionClosed):
                while True:  # PostgreSQL answers nothing and closes
                    await conn.recv()
            return True
        except (ConnectionClosed, ProtocolError) as exc:
            log.info("%r: cancel request not delivered: %s", server, exc)
            return False
        finally:
            conn.close()
    return False


def describe_connect_error(exc: BaseException) -> str:
    if isinstance(exc, ServerError):
        return exc.fields.get("M", str(exc))
    return str(exc) or exc.__class__.__name__


CONNECT_ERRORS = (OSError, ServerError, ProxyError, ProtocolError, ConnectionClosed)
__all__ = ["CONNECT_ERRORS", "ServerConnection", "codes", "describe_connect_error", "send_cancel",
           "try_execute"]
