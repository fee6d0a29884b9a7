"""How PostgreSQL spells the values clients give the settings it reports.

A client may start with `client_encoding=utf-8`, `DateStyle=iso` or `IntervalStyle=SQL_Standard`;
PostgreSQL accepts them and reports `UTF8`, `ISO, MDY` and `sql_standard` (in its login
ParameterStatus messages and in SHOW). The proxy answers a login itself, so it must report the
same. It learns each (setting, value) once, from a server: `set_config(name, value, true)`
returns the value as PostgreSQL shows it and changes nothing beyond its own statement. A value
PostgreSQL refuses refuses the login, with PostgreSQL's error, as a direct login would be.
"""

from __future__ import annotations

import trio

from ..pool.server import ServerConnection
from ..protocol import ProxyError, ServerError
from .sqltext import quote_literal

_LIMIT = 10_000  # (setting, value) pairs remembered; past that the memory starts over
_TIMEOUT = 5.0


class Spellings:
    """Process-wide: PostgreSQL's spelling of each (setting, value) clients gave."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, str], str] = {}

    def unknown(self, wanted: dict[str, str], reported: dict[str, str]) -> dict[str, str]:
        """The client's values of reported settings whose spelling is not known yet (a value
        equal to the server's own, which it reported, is known)."""
        return {k: v for k, v in wanted.items()
                if k in reported and v != reported[k] and (k, v) not in self._known}

    async def learn(self, server: ServerConnection, values: dict[str, str]) -> None:
        """Ask `server` how it spells `values`; a refused value refuses the login (fatal
        ProxyError with PostgreSQL's SQLSTATE and message)."""
        sql = "SELECT " + ", ".join(f"set_config({quote_literal(k)}, {quote_literal(v)}, true)"
                                    for k, v in values.items())
        try:
            with trio.fail_after(_TIMEOUT):
                row = await server.query_row(sql)
        except ServerError as exc:
            raise ProxyError(exc.sqlstate, exc.fields.get("M", str(exc)), fatal=True,
                             hint=exc.fields.get("H")) from None
        if len(self._known) >= _LIMIT:
            self._known.clear()
        for (k, v), spelled in zip(values.items(), row, strict=True):
            if spelled is not None:
                self._known[(k, v)] = spelled

    def spelled(self, name: str, value: str) -> str:
        """PostgreSQL's spelling of `value` for setting `name`, if known; else `value`."""
        return self._known.get((name, value), value)
