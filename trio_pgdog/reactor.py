"""The C path for plain transactions (trio_pgdog._reactor), where it was built.

A session parks in the Reactor while its traffic is plain (session/parking.py); one task in
the root nursery, `serve`, waits on the Reactor's epoll descriptor and runs it, and wakes the
sessions it hands back. Optional like the speedups: without the extension, with
TRIO_PGDOG_REACTOR=0 or with TRIO_PGDOG_SPEEDUPS=0 every byte takes the Python path (the
startup log says which).
"""

from __future__ import annotations

import logging
import os
import sys
from types import ModuleType

import outcome
import trio

__all__ = ["c", "serve", "status"]

log = logging.getLogger(__name__)

c: ModuleType | None
try:
    from . import _reactor as c
except ImportError:  # not built: no C compiler at install time, or not Linux
    c = None
    _why = "not built"
else:
    _why = ""
if c is not None and os.environ.get("TRIO_PGDOG_REACTOR", "") == "0":
    c, _why = None, "off (TRIO_PGDOG_REACTOR=0)"
elif c is not None and os.environ.get("TRIO_PGDOG_SPEEDUPS", "") == "0":
    c, _why = None, "off (TRIO_PGDOG_SPEEDUPS=0)"
elif c is not None and not sys.platform.startswith("linux"):
    c, _why = None, "off (needs Linux epoll)"


def status() -> str:
    """For the startup log: "on", or why not."""
    return "on" if c is not None else _why


async def serve(reactor: object) -> None:
    """Run the Reactor whenever one of its sockets is ready; wake the sessions it hands back
    with their outcome (session/parking.py). Lives in the root nursery for the proxy's life."""
    fd = reactor.fileno()  # type: ignore[attr-defined]
    run = reactor.run  # type: ignore[attr-defined]
    reschedule = trio.lowlevel.reschedule
    try:
        while True:
            await trio.lowlevel.wait_readable(fd)
            for session, result in run():
                task, session._parked = session._parked, None
                reschedule(task, outcome.Value(result))
    finally:
        relayed, handed_back = reactor.counts()  # type: ignore[attr-defined]
        log.info("C path: %d answers relayed whole in C, %d hand-backs to the Python path",
                 relayed, handed_back)
        reactor.close()  # type: ignore[attr-defined]
