"""Prepared statements that survive transaction pooling.

A client's named statement may have been prepared on a server connection it no longer holds.
So the proxy gives every distinct statement (query text + parameter types) one shared name,
`__pgdog_N`, remembers which shared names each server connection has prepared (bounded,
least recently used first out), and prepares a statement on a server just before the first
Bind or Describe that needs it there. Client names are private to the client: two clients may
use the same name for different SQL.
"""

from __future__ import annotations

from collections import OrderedDict

# Distinct statements remembered for sharing; past this the oldest mapping is forgotten
# (clients keep their own copy of the Parse, so nothing breaks, only sharing is lost).
_REGISTRY_LIMIT = 100_000
DEFAULT_SERVER_LIMIT = 500


class StatementRegistry:
    """Process-wide: one shared name per distinct (query, parameter types)."""

    def __init__(self, limit: int = _REGISTRY_LIMIT):
        self._names: OrderedDict[bytes, bytes] = OrderedDict()
        self._next = 1
        self._limit = limit
        # Shared names some server accepted: a later Parse of one may be answered without a
        # server (pgbench prepares synchronously while its other clients hold connections).
        self.known_good: set[bytes] = set()

    def name_for(self, parse_rest: bytes) -> bytes:
        name = self._names.get(parse_rest)
        if name is None:
            name = b"__pgdog_%d" % self._next
            self._next += 1
            self._names[parse_rest] = name
            if len(self._names) > self._limit:
                self.known_good.discard(self._names.popitem(last=False)[1])
        return name


class ServerStatements:
    """The shared names prepared on one server connection, least recently used first."""

    __slots__ = ("_names", "limit")

    def __init__(self, limit: int = DEFAULT_SERVER_LIMIT):
        self._names: OrderedDict[bytes, None] = OrderedDict()
        self.limit = limit

    def __contains__(self, name: bytes) -> bool:
        if name in self._names:
            self._names.move_to_end(name)
            return True
        return False

    def __len__(self) -> int:
        return len(self._names)

    def add(self, name: bytes) -> bytes | None:
        """Record `name`; returns the name evicted to stay within the limit, if any."""
        self._names[name] = None
        if len(self._names) > self.limit:
            return self._names.popitem(last=False)[0]
        return None

    def discard(self, name: bytes) -> None:
        self._names.pop(name, None)

    def clear(self) -> None:
        self._names.clear()
