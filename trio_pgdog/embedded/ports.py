"""Picking free TCP ports for throw-away servers."""

from __future__ import annotations

import random
import socket
import threading

from .errors import EmbeddedError

# Ports this process already handed out. A cluster is usually created some time before it
# binds its port, so a bind test alone would let two quick calls return the same port.
_handed_out: set[int] = set()
# Callers run us in worker threads (trio.to_thread), so guard the set.
_lock = threading.Lock()


def _can_bind(port: int) -> bool:
    # No SO_REUSEADDR on purpose: then a port held by a listener *or* a TIME_WAIT connection
    # counts as busy, which is stricter than what PostgreSQL itself needs to bind.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(start: int = 20000, end: int = 32000) -> int:
    """Return a random TCP port in ``start <= port < end`` that is free on 127.0.0.1.

    The default range stays below the kernel's ephemeral range (32768-60999), where a
    client connection's TIME_WAIT can make a listener fail to bind.
    """
    if not 0 < start < end <= 65536:
        raise ValueError(f"bad port range {start}..{end}")
    candidates = list(range(start, end))
    random.shuffle(candidates)
    with _lock:
        for port in candidates:
            if port not in _handed_out and _can_bind(port):
                _handed_out.add(port)
                return port
    raise EmbeddedError(f"no free TCP port on 127.0.0.1 in {start}..{end - 1}")
