"""The hook path's C speedups (trio_pgdog._speedups), where they were built.

setup.py builds the extension as optional: without a C compiler the install still works and
each function's pure-Python twin runs instead. TRIO_PGDOG_SPEEDUPS=0 switches them off (read
once, at import), e.g. to rule them out when chasing a problem.
"""

from __future__ import annotations

import os
from types import ModuleType

__all__ = ["c", "status"]

c: ModuleType | None
try:
    from . import _speedups as c
except ImportError:  # not built: no C compiler or Python headers at install time
    c = None
    _why = "not built"
else:
    _why = ""
if c is not None and os.environ.get("TRIO_PGDOG_SPEEDUPS", "") == "0":
    c, _why = None, "off (TRIO_PGDOG_SPEEDUPS=0)"


def status() -> str:
    """For the startup log: "on", or why not."""
    return "on" if c is not None else _why
