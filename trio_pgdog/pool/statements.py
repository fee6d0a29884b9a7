"""The prepared statements one server connection holds, under the shared names the proxy
gives them (session/prepared.py explains the sharing)."""

from __future__ import annotations

from collections import OrderedDict

DEFAULT_SERVER_LIMIT = 500


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
