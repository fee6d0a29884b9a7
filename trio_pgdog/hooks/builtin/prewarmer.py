"""The ``prewarmer`` built-in: statements run on every new server connection.

They run at after_connect, before the connection enters its pool, in the configured order;
if one fails, the connection is discarded and the failure logged (by the session layer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..api import ServerInfo

if TYPE_CHECKING:
    from ...config.models import PrewarmerHook

__all__ = ["Prewarmer"]


class Prewarmer:
    """Returns the configured statements for each new server connection."""

    def __init__(self, config: PrewarmerHook) -> None:
        self._queries = list(config.queries)

    def after_connect(self, info: ServerInfo) -> list[str]:
        return list(self._queries)
