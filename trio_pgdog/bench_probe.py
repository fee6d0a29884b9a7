"""The proxy with its hook path timed from inside: `python -m trio_pgdog.bench_probe ARGS`
runs `python -m trio_pgdog ARGS` and, when it exits, writes to $TRIO_PGDOG_PROBE_OUT (JSON)
how much thread CPU time the statement-aware hook path took, for the benchmark
(`nox -s bench`, "measured inside the proxy").

Why: a hook that costs a few microseconds per statement is below what comparing two proxies'
CPU time can resolve on a shared 2-core machine (runs differ by 10-30 µs). Timing the hook
path itself (HookedStream's entry points: every statement passes through them, and nothing
else of the session changes when hooks are on) measures its cost directly. Each timed call
also pays for the clock read; the clock's own cost, measured at exit, is reported separately.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from .session import hooked

TIMED = ("from_client", "from_server", "server_ready")
_clock = time.thread_time_ns
_totals: dict[str, list[int]] = {name: [0, 0] for name in TIMED}   # name -> [ns, calls]


def _timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    total = _totals[name]

    def timed(*args: Any) -> Any:
        start = _clock()
        try:
            return function(*args)
        finally:
            total[0] += _clock() - start
            total[1] += 1

    return timed


def clock_cost_ns(reads: int = 200_000) -> float:
    """What one timed call pays for its clock reads, measured in a loop."""
    start = _clock()
    for _ in range(reads):
        _clock()
    return (_clock() - start) / reads


def _write(path: str) -> None:
    report = {name: {"ns": ns, "calls": calls} for name, (ns, calls) in _totals.items()}
    report["clock_ns"] = clock_cost_ns()
    with open(path, "w") as f:
        json.dump(report, f)


def main() -> int:
    for name in TIMED:
        setattr(hooked.HookedStream, name, _timed(name, getattr(hooked.HookedStream, name)))
    out = os.environ.get("TRIO_PGDOG_PROBE_OUT")
    if out:
        atexit.register(_write, out)
    from .cli import main as proxy_main

    return proxy_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
