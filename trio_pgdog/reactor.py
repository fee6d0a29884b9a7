"""The C path for plain transactions (trio_pgdog._reactor), where it was built.

A session parks in the Reactor while its traffic is plain (session/parking.py); one task in
the root nursery, `serve`, waits on the Reactor's epoll descriptor and runs it, and wakes the
sessions it hands back. Optional like the speedups: without the extension, with
TRIO_PGDOG_REACTOR=0 or with TRIO_PGDOG_SPEEDUPS=0 every byte takes the Python path (the
startup log says which).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from types import ModuleType

import outcome
import trio

from .speedups import optional_extension

__all__ = ["c", "serve", "status"]

log = logging.getLogger(__name__)

c: ModuleType | None
c, _why = optional_extension("_reactor", "TRIO_PGDOG_REACTOR", "TRIO_PGDOG_SPEEDUPS")
if c is not None and not sys.platform.startswith("linux"):
    c, _why = None, "off (needs Linux epoll)"


def status() -> str:
    """For the startup log: "on", or why not."""
    return "on" if c is not None else _why


# How long an idle server may stay in C between transactions before its pool sees it again
# (its janitor: idle_timeout, server_lifetime, health checks).
TIDY_INTERVAL = 1.0


def reclaim(reactor: object) -> None:
    """The idle servers the C path keeps, back to their pools; its counts, into theirs."""
    from .session.attach import give_back

    for pool, servers, counts in reactor.reclaim():  # type: ignore[attr-defined]
        pool.stats.add_relayed(*counts)
        for server in servers:
            server.status = b"I"
            give_back(server)


async def tidy(reactor: object) -> None:
    """Every TIDY_INTERVAL, what the C path keeps goes back to the pools (which lend it again
    to the next plain transaction)."""
    while True:
        await trio.sleep(TIDY_INTERVAL)
        reclaim(reactor)


async def serve(reactor: object) -> None:
    """Run the Reactor whenever one of its sockets is ready; wake the sessions it hands back
    with their outcome (session/parking.py). Lives in the root nursery for the proxy's life."""
    fd = reactor.fileno()  # type: ignore[attr-defined]
    run = reactor.run  # type: ignore[attr-defined]
    reschedule = trio.lowlevel.reschedule
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tidy, reactor)
            await _dispatch(fd, run, reschedule)
    finally:
        relayed, handed_back = reactor.counts()  # type: ignore[attr-defined]
        log.info("C path: %d answers relayed whole in C, %d hand-backs to the Python path",
                 relayed, handed_back)
        reactor.close()  # type: ignore[attr-defined]


async def _dispatch(fd: int, run: Callable[[], list], reschedule: Callable[..., None]) -> None:
    while True:
        await trio.lowlevel.wait_readable(fd)
        for session, result in run():
            task, session._parked = session._parked, None
            reschedule(task, outcome.Value(result))
