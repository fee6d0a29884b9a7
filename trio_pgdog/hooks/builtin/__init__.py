"""The built-in hooks, enabled in pgdog.toml under ``[hooks.<name>]``.

``BUILTINS`` maps each section name to a factory ``factory(config_section, base_dir)``:
``config_section`` is the section's model from ``config.models`` and ``base_dir`` the
directory of pgdog.toml (None when the configuration came from text), against which
relative paths are resolved. ``[[hooks.python]]`` entries are loaded by
``load_python_hook`` instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .intercept import Intercept
from .prewarmer import Prewarmer
from .python_hook import load_python_hook
from .query_logger import QueryLogger
from .table_access import TableAccess

__all__ = [
    "BUILTINS",
    "Intercept",
    "Prewarmer",
    "QueryLogger",
    "TableAccess",
    "load_python_hook",
]


def _table_access(config: Any, base_dir: str | None) -> TableAccess:
    return TableAccess(config)


def _intercept(config: Any, base_dir: str | None) -> Intercept:
    return Intercept(config)


def _query_logger(config: Any, base_dir: str | None) -> QueryLogger:
    return QueryLogger(config, base_dir)


def _prewarmer(config: Any, base_dir: str | None) -> Prewarmer:
    return Prewarmer(config)


BUILTINS: dict[str, Callable[..., object]] = {
    "table_access": _table_access,
    "intercept": _intercept,
    "query_logger": _query_logger,
    "prewarmer": _prewarmer,
}
