"""A pool's settings: one server, one user, and the limits and timeouts its connections follow
(built from the configuration by pool/manager.py)."""

from __future__ import annotations

import attrs

from ..tls import ServerTls


@attrs.frozen
class PoolSettings:
    host: str
    port: int
    database: str          # the database name on the server
    user: str              # the server-side user
    password: str | None
    pool_size: int
    min_pool_size: int
    pooler_mode: str
    connect_timeout: float  # seconds, like every duration below
    checkout_timeout: float
    idle_timeout: float
    server_lifetime: float
    statements_limit: int = 500
    healthcheck_interval: float = 30.0
    healthcheck_timeout: float = 5.0
    tls: ServerTls = attrs.field(factory=ServerTls)  # tls_verify towards this server

    def startup_params(self) -> dict[str, str]:
        return {"user": self.user, "database": self.database, "application_name": "trio_pgdog"}
