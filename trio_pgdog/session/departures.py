"""Noticing clients that hang up while their session waits on a server.

While PostgreSQL runs a client's query the session waits on the server only (one Trio wait
per message: design.md, "Data path"), so it would learn that its client left only when the
query ends — minutes later for a long one, never if the server owes nothing more. One task
for the whole proxy looks instead: every INTERVAL it asks the kernel, in one poll() call,
which of those clients' sockets the peer has closed. Such a session cancels its query and
gives its server connection back once PostgreSQL answers; one whose server still has not
answered GRACE seconds later is ended and its server connection closed. Whatever a client
sent before it left, its pool slot comes back.
"""

from __future__ import annotations

import select
from collections.abc import Iterable
from typing import Protocol

import trio

from ..netio import Conn
from ..pool.server import ServerConnection

INTERVAL = 0.05  # seconds between looks
GRACE = 1.0      # seconds a departed client's server has to answer the cancel
_HUNG_UP = select.POLLRDHUP | select.POLLHUP | select.POLLERR


class Departure:
    """A client that hung up while its query ran: when it was seen, and the cancel's fate."""

    __slots__ = ("aborted", "at", "cancelled")

    def __init__(self, at: float):
        self.at = at
        self.cancelled = trio.Event()  # set once the CancelRequest went out (or could not)
        self.aborted = False  # the server did not answer in time: its connection is closed


class Watched(Protocol):
    """What the watch reads of a client session (session/session.py)."""

    client: Conn
    departure: Departure | None

    def busy_servers(self) -> list[ServerConnection]: ...

    def client_departed(self, now: float) -> None: ...

    def abort(self) -> None: ...


def waiting_on_server(session: Watched) -> bool:
    """Does the session hold servers that owe answers (or a departed client's servers)?"""
    return bool(session.busy_servers())


def hung_up(fds: list[int]) -> set[int]:
    """Which of `fds` (connected sockets) the peer has closed or reset."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLRDHUP)
    return {fd for fd, events in poller.poll(0) if events & _HUNG_UP}


def look(sessions: Iterable[Watched], now: float) -> None:
    """One look over the sessions waiting on a server."""
    waiting = [s for s in sessions if waiting_on_server(s)]
    if not waiting:
        return
    gone = hung_up([s.client.fd for s in waiting if s.departure is None])
    for session in waiting:
        departure = session.departure
        if departure is None:
            if session.client.fd in gone:
                session.client_departed(now)
        elif now - departure.at > GRACE:
            session.abort()


async def watch(sessions: dict[int, Watched]) -> None:
    """Run for the life of the proxy (in its root nursery)."""
    while True:
        await trio.sleep(INTERVAL)
        look(list(sessions.values()), trio.current_time())
