"""The admin console: a client that logs in to [admin] name as [admin] user talks to the
proxy itself, over the simple query protocol, with PgBouncer's commands (admin/commands.py).

`login` checks the password like any login (28P01 when wrong) and refuses every other user
(28000); `serve` answers the client's Query messages until it leaves.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .. import __version__
from ..auth import client as client_auth
from ..netio import Conn
from ..protocol import ProtocolError, ProxyError
from ..protocol import errors as codes
from ..protocol import messages as m
from ..protocol import results as r
from .actions import ACTIONS
from .commands import AdminError, Command, parse, split_statements
from .show import SHOW, Cell

if TYPE_CHECKING:
    from ..app import Proxy
    from ..session.startup import Startup

log = logging.getLogger(__name__)

# The extended protocol's messages: answered with one error, then skipped up to the Sync.
_EXTENDED = frozenset(b"PBDECHF")
_MAX_QUERY = 1 << 20
_PARAMS = {"server_version": f"{__version__}/trio_pgdog", "server_encoding": "UTF8",
           "client_encoding": "UTF8", "DateStyle": "ISO", "integer_datetimes": "on",
           "standard_conforming_strings": "on", "application_name": ""}


def wants_console(app: Proxy, startup: Startup) -> bool:
    """Does this login ask for the admin console (and is the console on)?"""
    admin = app.config.admin
    return startup.database == admin.name and admin.effective_password() is not None


async def login(app: Proxy, client: Conn, startup: Startup) -> None:
    """Authenticate the admin user (ProxyError 28P01 when the password is wrong); any other
    user is refused with 28000, after its own password check (so the refusal tells nothing
    to someone without one)."""
    config = app.config
    admin = config.admin
    # trust would let anyone in: the console always asks for its password.
    method = "scram" if config.general.auth_type == "trust" else config.general.auth_type
    if startup.user == admin.user:
        await client_auth.authenticate(client, method, startup.user, admin.effective_password())
        return
    entry = config.first_user_named(startup.user)
    await client_auth.authenticate(client, method, startup.user,
                                   entry.password if entry is not None else None)
    raise ProxyError(codes.INVALID_AUTHORIZATION,
                     f'user "{startup.user}" may not use the admin console "{admin.name}"',
                     fatal=True)


async def serve(app: Proxy, client: Conn, addr: str) -> None:
    """The console's session: greet, then answer each Query until Terminate or EOF."""
    out = [m.auth_ok()] + [m.parameter_status(k, v) for k, v in _PARAMS.items()]
    out += [m.backend_key_data(secrets.randbits(31), secrets.randbits(31)), m.ready_for_query()]
    await client.send(b"".join(out))
    log.info("admin console: client %s logged in", addr)
    skipping = False  # after an extended-protocol message, up to its Sync
    while True:
        kind, body = await client.read_message(max_length=_MAX_QUERY)
        if kind == b"X":
            return
        if kind == b"Q":
            await client.send(await answer(app, body.rstrip(b"\x00").decode(errors="replace")))
        elif kind == b"S":
            skipping = False
            await client.send(m.ready_for_query())
        elif kind[0] in _EXTENDED:
            if not skipping:
                skipping = True
                await client.send(m.error_response(
                    codes.FEATURE_NOT_SUPPORTED,
                    "the admin console speaks only the simple query protocol",
                    hint="use psql, or send plain Query messages (psycopg: a query without "
                         "parameters, or a ClientCursor)"))
        else:
            raise ProtocolError(f"invalid frontend message type {kind!r}")


async def answer(app: Proxy, sql: str) -> bytes:
    """The reply to one Query: each statement's result, up to the first error, then
    ReadyForQuery."""
    statements = split_statements(sql)
    if not statements:
        return m.message(b"I") + m.ready_for_query()  # EmptyQueryResponse
    out: list[bytes] = []
    for statement in statements:
        try:
            out.append(await run(app, parse(statement)))
        except AdminError as exc:
            out.append(m.error_response(exc.sqlstate, exc.message))
            break
    out.append(m.ready_for_query())
    return b"".join(out)


async def run(app: Proxy, cmd: Command) -> bytes:
    app.settle()  # servers and counts the C path keeps, back where SHOW and the actions look
    if cmd.verb == "SHOW":
        columns, rows = SHOW[cmd.args[0]](app)
        return result(columns, rows)
    tag = await ACTIONS[cmd.verb](app, cmd)
    return r.command_complete(tag)


def result(columns: Sequence[tuple[str, int]], rows: Sequence[Sequence[Cell]]) -> bytes:
    out = [r.row_description(columns)]
    out += [r.data_row([None if cell is None else str(cell) for cell in row]) for row in rows]
    out.append(r.command_complete("SHOW"))
    return b"".join(out)
