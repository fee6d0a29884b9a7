"""What each hook has cost: calls, decisions by kind, errors and a latency histogram.

Kept as plain ints on the hook's registry entry (hooks/registry.py) by the code that calls
the hook; SHOW HOOKS and the metrics endpoint read them when asked. Only the hook path pays
for it (two clock reads per call); sessions without hooks never get here.
"""

from __future__ import annotations

import bisect
import time

# Upper bounds (seconds) of the latency histogram's buckets; a last one, +Inf, is implied.
BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
           0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_BOUNDS_NS = tuple(int(b * 1e9) for b in BUCKETS)

# Decision kinds as the metrics label them (hooks/api.py's Action names, lower case);
# "allow" is a call that decided nothing.
KINDS = ("allow", "route", "block", "intercept", "rewrite")

clock_ns = time.perf_counter_ns


class HookStats:
    __slots__ = ("buckets", "calls", "decisions", "errors", "time_ns", "timed")

    def __init__(self) -> None:
        self.calls = 0
        self.errors = 0     # calls that raised (treated as no decision)
        self.decisions = [0] * len(KINDS)  # per KINDS, pre_query and pre_connect answers
        self.time_ns = 0    # total time of the timed calls
        self.timed = 0      # calls whose time is in the histogram
        self.buckets = [0] * (len(BUCKETS) + 1)  # not cumulative; the last is +Inf

    def called(self, started_ns: int, action: int = 0) -> None:
        """One call that began at `started_ns` (clock_ns()) and answered `action`."""
        spent = clock_ns() - started_ns
        self.calls += 1
        self.decisions[action] += 1
        self.time_ns += spent
        self.timed += 1
        self.buckets[bisect.bisect_left(_BOUNDS_NS, spent)] += 1

    def failed(self, started_ns: int) -> None:
        self.called(started_ns)
        self.errors += 1

    def untimed(self, action: int = 0) -> None:
        """A call whose own time is not known (several native plugins asked in one C call)."""
        self.calls += 1
        self.decisions[action] += 1
