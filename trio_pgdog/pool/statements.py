"""The prepared statements one server connection holds, under the shared names the proxy
gives them (session/prepared.py explains the sharing).

The record must never claim a statement the server lacks (a Bind would fail with 26000),
nor lack one it has while the proxy believes it exact (the proxy's Parse would fail with
42P05). So it follows what PostgreSQL reports: a name is added when the proxy sends its
Parse and removed if that Parse fails, and the record is emptied when the server completes a
DEALLOCATE or DISCARD ALL (the tag of its CommandComplete, whoever sent it). Where the proxy
cannot know what the server kept — a DEALLOCATE or DISCARD ALL it expected failed or never
ran, a DEALLOCATE dropped one name it cannot see, the Close of an evicted statement was
skipped — the record is `unsure`: it may lack statements the server still has, and each
Parse the proxy sends there is preceded by a Close of the same name (PostgreSQL does not
mind closing a statement that does not exist), so that it cannot fail as a duplicate.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

DEFAULT_SERVER_LIMIT = 500

# What a CommandComplete tag says about the server's prepared statements.
DROPS_NONE, DROPS_ONE, DROPS_ALL = 0, 1, 2


def drop_tag(tag: bytes) -> int:
    """A CommandComplete body (tag and NUL): DROPS_ALL for DEALLOCATE ALL and DISCARD ALL,
    DROPS_ONE for a DEALLOCATE of one name, DROPS_NONE for anything else (DISCARD PLANS
    and DISCARD TEMP keep the statements)."""
    if tag.startswith(b"DEALLOCATE"):
        return DROPS_ALL if tag == b"DEALLOCATE ALL\x00" else DROPS_ONE
    return DROPS_ALL if tag == b"DISCARD ALL\x00" else DROPS_NONE


class ServerStatements:
    """The shared names prepared on one server connection, least recently used first."""

    __slots__ = ("_names", "limit", "unsure")

    def __init__(self, limit: int = DEFAULT_SERVER_LIMIT):
        self._names: OrderedDict[bytes, None] = OrderedDict()
        self.limit = limit
        self.unsure = False  # the server may have statements not recorded: Close before Parse

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

    def expect_drop(self) -> None:
        """A statement that may drop the server's statements (DEALLOCATE, DISCARD ALL) was
        sent: what is sent behind it, before its answer, must not rely on any of them. Until
        the server completes it, or for good if it fails, they may or may not be there."""
        self._names.clear()
        self.unsure = True

    def dropped(self, how: int, kept: Iterable[bytes] = ()) -> None:
        """The server completed a DEALLOCATE or DISCARD ALL (`how`, from drop_tag). It now
        has the `kept` statements (those whose Parse was sent after it) and, after a
        DEALLOCATE of one name, perhaps others the record no longer names."""
        self._names.clear()
        for name in kept:
            self._names[name] = None
        self.unsure = how != DROPS_ALL
