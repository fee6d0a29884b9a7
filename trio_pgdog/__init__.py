"""trio_pgdog: a PostgreSQL pooler, load balancer and sharding proxy on Trio."""

__version__ = "0.1.0"

__all__ = ["__version__"]
