"""The C path for plain transactions (trio_pgdog._reactor), where it was built.

A session parks in the Reactor while its traffic is plain (session/parking.py). One task in
the root nursery, `serve`, owns the Reactor: it has Trio run it whenever Trio's loop is about
to wait for I/O (Serving) and wakes the sessions it hands back. Optional like the speedups:
without the extension, with TRIO_PGDOG_REACTOR=0 or with TRIO_PGDOG_SPEEDUPS=0 every byte
takes the Python path (the startup log says which).
"""

from __future__ import annotations

import contextlib
import logging
import os
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


# TRIO_PGDOG_REACTOR=task: serve the Reactor from a task on Trio's loop, as when Trio's epoll
# is out of reach (see serve) -- slower, for telling the two apart.
SERVED_BY_TASK = os.environ.get("TRIO_PGDOG_REACTOR") == "task"


def status() -> str:
    """For the startup log: "on", or why not."""
    if c is None:
        return _why
    return "on (served by a task, TRIO_PGDOG_REACTOR=task)" if SERVED_BY_TASK else "on"


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


def unqueue(reactor: object) -> None:
    """The requests waiting in line in the C path, back to their sessions' Python path (which
    waits for a connection as the pool decides: PAUSE, a reload's new pools, shutdown)."""
    wake(reactor.unqueue())  # type: ignore[attr-defined]


def offering(reactor: object) -> Callable[..., bool]:
    """Pool.offer for the pools: a connection coming back on the Python path goes to the
    request first in line in the C path, if any (in sync with that client's settings or
    not: then the Python path syncs it); a freed slot (server None) sends that request to
    the Python path, which opens a connection in it."""
    first_waiter = reactor.first_waiter  # type: ignore[attr-defined]
    serve_first = reactor.serve_first  # type: ignore[attr-defined]

    def offer(pool: object, server: object | None, unless_waited: float | None = None) -> bool:
        """`unless_waited`: how long the Python path's first waiter has waited; the line's
        first goes first only if it has waited longer (whoever came first is served first)."""
        first = first_waiter(pool)
        if first is None or (unless_waited is not None and first[1] <= unless_waited):
            return False
        session = first[0]
        ready = server is not None and session._c_ready(server)
        wake(serve_first(pool, server, ready))
        return True

    return offer


async def tidy(reactor: object) -> None:
    """Every TIDY_INTERVAL, what the C path keeps goes back to the pools (which lend it again
    to the next plain transaction)."""
    while True:
        await trio.sleep(TIDY_INTERVAL)
        reclaim(reactor)


def trio_epoll_fd() -> int | None:
    """The descriptor of Trio's own epoll, or None (another I/O manager, or a Trio whose
    internals moved: then the Reactor is served by a task on Trio's loop instead)."""
    try:
        runner = trio.lowlevel.current_root_task()._runner  # type: ignore[union-attr]
        fd = runner.io_manager._epoll.fileno()
    except AttributeError:
        return None
    return fd if isinstance(fd, int) else None


class Serving(trio.abc.Instrument):
    """Runs the Reactor each time Trio's loop is about to wait for I/O. When Trio has nothing
    runnable, the wait happens in the Reactor instead: it relays plain transactions until Trio's
    own descriptor is ready, a session is handed back or Trio's next deadline comes -- no turn
    of Trio's loop per batch of transactions. Trio computed its own wait before this ran: unless
    the Reactor says that wait still stands ("settled"), the loop is woken before it sleeps."""

    def __init__(self, reactor: object) -> None:
        self.run: Callable[[float], tuple[list, bool]] = reactor.run  # type: ignore[attr-defined]
        self.token = trio.lowlevel.current_trio_token()

    def before_io_wait(self, timeout: float) -> None:
        try:
            woken, settled = self.run(timeout)
            wake(woken)
            if timeout and not settled:
                self.token.run_sync_soon(_nothing)
        except Exception:  # an instrument that raises is dropped by Trio: the C path would stall
            log.exception("C path: serving the reactor failed")


def _nothing() -> None:
    pass


def wake(woken: list) -> None:
    """Wake the sessions the Reactor handed back with their outcome (session/parking.py)."""
    for session, result in woken:
        task, session._parked = session._parked, None
        trio.lowlevel.reschedule(task, outcome.Value(result))


async def serve(reactor: object) -> None:
    """Serve the Reactor (in Trio's I/O wait, see Serving, or from this task when Trio's epoll
    is out of reach) and give back what it keeps every TIDY_INTERVAL. Lives in the root nursery
    for the proxy's life."""
    trio_fd = None if SERVED_BY_TASK else trio_epoll_fd()
    if trio_fd is None and not SERVED_BY_TASK:
        log.warning("C path: Trio's epoll is out of reach (trio %s): served by a task instead, "
                    "which costs more CPU per transaction", trio.__version__)
    serving = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tidy, reactor)
            if trio_fd is None:
                await _dispatch(reactor)
            else:
                reactor.join_trio(trio_fd)  # type: ignore[attr-defined]
                serving = Serving(reactor)
                trio.lowlevel.add_instrument(serving)
    finally:
        if serving is not None:
            with contextlib.suppress(KeyError):  # (Trio drops an instrument that raised)
                trio.lowlevel.remove_instrument(serving)
        relayed, handed_back = reactor.counts()  # type: ignore[attr-defined]
        log.info("C path: %d answers relayed whole in C, %d hand-backs to the Python path",
                 relayed, handed_back)
        reactor.close()  # type: ignore[attr-defined]


async def _dispatch(reactor: object) -> None:
    """Without Trio's epoll: a task waits for the Reactor's descriptor and runs it."""
    fd = reactor.fileno()  # type: ignore[attr-defined]
    run = reactor.run  # type: ignore[attr-defined]
    while True:
        await trio.lowlevel.wait_readable(fd)
        wake(run()[0])
