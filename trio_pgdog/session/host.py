"""What a client session needs from the proxy that runs it (app.Proxy), so that the session
room depends on the app only through this description."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import ssl

    from ..config import Config
    from ..hooks.registry import HookRegistry
    from ..pool.manager import PoolManager
    from ..router.cache import ParseCache
    from ..router.sharding.keys import FactsCache
    from .prepared import StatementRegistry
    from .spellings import Spellings
    from .startup import Cancel


class Host(Protocol):
    config: Config
    pools: PoolManager
    hooks: HookRegistry              # replaced whole on reload
    statements: StatementRegistry    # shared prepared-statement names
    spellings: Spellings
    parse_cache: ParseCache
    shutting_down: bool
    reactor: object | None           # the C path's Reactor (session/parking.py); None: off
    client_tls: ssl.SSLContext | None  # TLS towards clients; None: off (replaced on reload)

    def register(self, session: object) -> tuple[int, int]:
        """A logged-in session's BackendKeyData (pid, secret)."""

    def forget(self, session: object) -> None: ...

    def settle(self) -> None:
        """Idle servers the C path keeps, back in their pools."""

    async def cancel(self, request: Cancel) -> None:
        """Forward a client's CancelRequest."""

    def shard_facts(self, database: str) -> FactsCache | None:
        """The sharding facts of a sharded database's statements; None if not sharded."""

    def spawn(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        """Run a short task owned by the proxy, not by the session."""
