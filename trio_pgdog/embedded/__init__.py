"""Throw-away PostgreSQL clusters for the ``demo`` command and the test suite.

Synchronous and subprocess-based (initdb, pg_ctl, psql, pg_basebackup); Trio callers wrap
the calls in ``trio.to_thread.run_sync``. When run as root, every server program runs as the
``postgres`` OS user through ``runuser``, because initdb and postgres refuse to run as root.
"""

from .binaries import find_pg_binary
from .cluster import Cluster
from .errors import EmbeddedError
from .ports import free_port

__all__ = ["Cluster", "EmbeddedError", "find_pg_binary", "free_port"]
