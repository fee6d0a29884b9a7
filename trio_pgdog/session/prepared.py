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

    def __len__(self) -> int:
        return len(self._names)

    def items(self) -> list[tuple[bytes, bytes]]:
        """(Parse body after the name, shared name) of every statement (the admin console)."""
        return list(self._names.items())
