"""Session parameters in transaction pooling: each client's settings follow it across servers.

A client's startup parameters (application_name, TimeZone, DateStyle, search_path, ...) and
the reported parameters it changes with SET are remembered per client. When its next
transaction lands on a server connection whose settings differ, the proxy first runs the
SET/RESET statements that make them equal. PostgreSQL reports every change of a reported
parameter (ParameterStatus), including SET LOCAL and rollbacks undoing a SET, so following
those reports keeps the client's view exact without parsing SQL.

Who a session runs as (`SET SESSION AUTHORIZATION`, reported; `SET ROLE`, not reported)
follows its client the same way: the client that set it keeps it, every other client gets
the server connection back with the login identity. It is applied in a statement of its own,
before the other settings, so that a failure there cannot be mistaken for theirs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..protocol import messages as m
from ..router.keywords import leading_keywords

if TYPE_CHECKING:
    from ..pool.server import ServerConnection

# Parameters PostgreSQL reports and a client may change: every client expects the server
# default for those it did not set.
TRACKED = frozenset({
    "application_name", "client_encoding", "DateStyle", "IntervalStyle", "TimeZone",
    "standard_conforming_strings", "search_path", "default_transaction_read_only",
    "session_authorization",
})
# Who the session runs as, in the order they are set: a new session authorization resets
# the role.
IDENTITY = ("session_authorization", "role")
# No settings to look at again (a shared empty set: sessions keep it between transactions).
NO_NAMES: frozenset[str] = frozenset()
# Startup packet keys that are not settings.
_NOT_SETTINGS = frozenset({"user", "database", "options", "replication"})


def parse_options(options: str) -> dict[str, str]:
    """Settings in a startup `options` string: `-c name=value` and `--name=value`, with
    backslash escaping spaces as libpq does."""
    words, word, escaped = [], "", False
    for ch in options:
        if escaped:
            word, escaped = word + ch, False
        elif ch == "\\":
            escaped = True
        elif ch.isspace():
            if word:
                words.append(word)
            word = ""
        else:
            word += ch
    if word:
        words.append(word)
    settings: dict[str, str] = {}
    it = iter(words)
    for w in it:
        if w == "-c":
            pair = next(it, "")
        else:
            pair = w[2:] if w.startswith(("--", "-c")) else ""
        name, sep, value = pair.partition("=")
        if sep and name:
            settings[name.replace("-", "_")] = value
    return settings


_SET_ALIASES = {"TIME": "timezone", "SCHEMA": "search_path", "NAMES": "client_encoding",
                "ROLE": "role"}
_NOT_REMEMBERED = frozenset({"LOCAL", "TRANSACTION", "CONSTRAINTS"})


def set_targets(sql: bytes, reported: frozenset[str]) -> set[str] | None:
    """Settings a SET/RESET (or DISCARD ALL) statement may change (lower case) that are not in
    `reported` (ParameterStatus tells about those); None for all of them (RESET ALL)."""
    words = leading_keywords(sql, 3)
    if words[:2] == ["DISCARD", "ALL"]:
        return None
    if len(words) < 2 or words[0] not in ("SET", "RESET"):
        return set()
    target = words[1]
    if target == "ALL" and words[0] == "RESET":
        return None
    if target in _NOT_REMEMBERED:
        return set()
    if target == "SESSION":
        target = words[2] if len(words) > 2 else ""
        if target == "AUTHORIZATION":  # reported itself, and it resets the role
            target = "ROLE"
        if target in ("CHARACTERISTICS", ""):
            return set()
    name = _SET_ALIASES.get(target, target.lower())
    return set() if name in reported else {name}


def changes_settings(sql: bytes) -> bool:
    """Is `sql` a SET, RESET or DISCARD statement (which set_targets looks at more closely)?"""
    words = leading_keywords(sql, 1)
    return bool(words) and words[0] in ("SET", "RESET", "DISCARD")


def _statements(resets: list[str], changes: list[str]) -> str | None:
    """RESET statements, then one SELECT of set_config() calls; None if there is nothing to do.
    set_config takes the value as the raw string a startup packet carries: a list such as
    search_path 'a, b' stays a list (SET ... TO 'a, b' would make one name)."""
    statements = [f"RESET {_ident(k)}" for k in resets]
    if changes:
        statements.append("SELECT " + ", ".join(changes))
    return "; ".join(statements) or None


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@functools.lru_cache(maxsize=64)
def _lower_names(names: tuple[str, ...]) -> frozenset[str]:
    return frozenset(k.lower() for k in names)


# Settings shared by clients that want the same: most clients of one application log in
# with the same parameters, and a dict plus its frozenset of items cost ~2.5 KB per client.
# Bounded: past _SHARED_MAX distinct sets of settings it starts over (what clients already
# share stays shared).
_SHARED_MAX = 1024
_shared: dict[frozenset[tuple[str, str]], tuple[dict[str, str], frozenset[tuple[str, str]]]] = {}


def _share(wanted: dict[str, str]) -> tuple[dict[str, str], frozenset[tuple[str, str]]]:
    """(settings, key) equal to `wanted` and its key, the same objects for every client
    that wants the same; the dict is never changed (ClientParams copies it first)."""
    key = frozenset(wanted.items())
    known = _shared.get(key)
    if known is not None:
        return known
    if len(_shared) >= _SHARED_MAX:
        _shared.clear()
    _shared[key] = wanted, key
    return wanted, key


class ClientParams:
    """What one client believes its session settings are (`wanted`), and `key`, a cheap
    fingerprint a server connection remembers once it matches.

    `wanted` and `key` are shared with every client that wants the same settings (_share),
    so `wanted` is never changed in place: a change is made to a copy, which is then shared.
    """

    __slots__ = ("key", "reported_names", "wanted")

    def __init__(self, server_defaults: dict[str, str], startup: dict[str, str]):
        # What this server version reports (search_path only from PostgreSQL 18 on, say).
        self.reported_names = _lower_names(tuple(server_defaults))
        wanted = {k: v for k, v in server_defaults.items() if k in TRACKED}
        wanted.update((k, v) for k, v in startup.items()
                      if k not in _NOT_SETTINGS and not k.startswith("_pq_."))
        wanted.update(parse_options(startup.get("options", "")))
        self.wanted, self.key = _share(wanted)

    def respelled(self, spell: Callable[[str, str], str]) -> None:
        """Each value as `spell(name, value)` gives it (session/spellings.py)."""
        wanted = {k: spell(k, v) for k, v in self.wanted.items()}
        if wanted != self.wanted:
            self.wanted, self.key = _share(wanted)

    def reported(self, bodies: list[bytes], server: ServerConnection) -> None:
        """ParameterStatus messages from the server this client is using."""
        wanted = self.wanted
        for body in bodies:
            name, value = m.parse_parameter_status(body)
            server.params[name] = value
            if (name in TRACKED or name in wanted) and wanted.get(name) != value:
                if wanted is self.wanted:
                    wanted = dict(wanted)
                wanted[name] = value
        if wanted is not self.wanted:
            self.wanted, self.key = _share(wanted)
        server.synced_key = self.key

    def sync_sql(self, server: ServerConnection) -> tuple[str | None, str | None] | None:
        """Statements that give `server` this client's settings, or None if it has them:
        (who the session runs as, the other settings), either None if nothing to do."""
        key = self.key
        if server.synced_key is key or server.synced_key == key:
            return None
        stale = server.extra - self.wanted.keys()
        differ = {k for k, v in self.wanted.items() if server.params.get(k) != v}
        if "session_authorization" in differ and "role" in self.wanted:
            differ.add("role")  # the new session authorization resets it
        identity = _statements([k for k in IDENTITY if k in stale],
                               self._changes([k for k in IDENTITY if k in differ]))
        other = _statements(sorted(k for k in stale if k not in IDENTITY),
                            self._changes([k for k in self.wanted
                                           if k in differ and k not in IDENTITY]))
        if identity is None and other is None:
            server.synced_key = key
            return None
        return identity, other

    def _changes(self, names: list[str]) -> list[str]:
        return [f"set_config({_literal(k)}, {_literal(self.wanted[k])}, false)" for k in names]

    def synced(self, server: ServerConnection, reported: set[str],
               names: tuple[str, ...] | None = None) -> None:
        """After sync_sql ran (only its statements for `names`, if given): adopt the server's
        spelling of reported values (DateStyle 'ISO' becomes 'ISO, MDY'), and remember the
        settings the server does not report."""
        wanted = dict(self.wanted)
        stale = server.extra - wanted.keys()
        keys = list(wanted)
        if names is not None:
            stale &= set(names)
            keys = [k for k in keys if k in names]
        for k in stale:
            server.params.pop(k, None)
        server.extra -= stale
        for k in keys:
            if k in reported:
                wanted[k] = server.params[k]
            elif server.params.get(k) != wanted[k]:
                server.params[k] = wanted[k]
                server.extra.add(k)
        self.wanted, self.key = _share(wanted)
        if names is None:
            server.synced_key = self.key

    def unreported(self) -> set[str]:
        """The client's settings PostgreSQL does not report back."""
        return {k for k in self.wanted if k.lower() not in self.reported_names}

    def refreshed(self, server: ServerConnection, values: dict[str, str | None]) -> None:
        """Values read back from the server after a transaction that ran SET/RESET."""
        wanted = dict(self.wanted)
        for name, value in values.items():
            if value is None:  # not a setting after all (PostgreSQL refused the SET)
                wanted.pop(name, None)
                server.params.pop(name, None)
                server.extra.discard(name)
            else:
                wanted[name] = server.params[name] = value
                server.extra.add(name)
        self.wanted, self.key = _share(wanted)
        server.synced_key = self.key

    def give_up(self, server: ServerConnection) -> None:
        """The server refused the settings: take its values instead of retrying forever."""
        wanted = {k: server.params[k] for k in self.wanted if k in server.params}
        self.wanted, self.key = _share(wanted)
        server.synced_key = self.key
