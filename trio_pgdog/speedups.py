"""The hook path's C speedups (trio_pgdog._speedups), where they were built.

setup.py builds the extension as optional: without a C compiler the install still works and
each function's pure-Python twin runs instead. TRIO_PGDOG_SPEEDUPS=0 switches them off (read
once, at import), e.g. to rule them out when chasing a problem.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

__all__ = ["c", "optional_extension", "status"]


def optional_extension(name: str, *switches: str) -> tuple[ModuleType | None, str]:
    """(the extension trio_pgdog.`name`, "") if it was built and none of the environment
    variables `switches` is "0"; else (None, why not) for the startup log."""
    try:
        module = importlib.import_module(f"{__package__}.{name}")
    except ImportError:  # not built: no C compiler or Python headers at install time
        return None, "not built"
    for switch in switches:
        if os.environ.get(switch, "") == "0":
            return None, f"off ({switch}=0)"
    return module, ""


c: ModuleType | None
c, _why = optional_extension("_speedups", "TRIO_PGDOG_SPEEDUPS")


def status() -> str:
    """For the startup log: "on", or why not."""
    return "on" if c is not None else _why
