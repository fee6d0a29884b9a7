"""Running the proxy in the foreground until SIGINT/SIGTERM: what `python -m trio_pgdog` and
the demo both do once they have a configuration, and the exit statuses they share."""

from __future__ import annotations

import functools
import gc
import logging
import socket
import sys
from collections.abc import Callable

import trio

from . import listener
from .app import Proxy
from .config import Config
from .hooks.errors import HookLoadError

log = logging.getLogger("trio_pgdog")

EXIT_FAILED = 1  # could not serve (e.g. the port is taken), or a check failed
EXIT_CONFIG = 2  # the configuration (files, hooks, options) cannot be used


def serve(config: Config, *, overrides: dict[str, object] | None = None,
          sock: socket.socket | None = None, on_listening: Callable[[], object] | None = None
          ) -> int:
    """Run the proxy until SIGINT/SIGTERM; the exit status for the process.

    `sock` is a socket from listener.bind (the demo binds before it starts its clusters);
    `on_listening` runs once clients can connect."""
    proxy = Proxy(config, overrides)
    g = proxy.config.general
    if not config.users:
        log.warning("no users in %s: every login will be refused until users are added and "
                    "the configuration reloaded (SIGHUP)", config.users_path or "users.toml")
    try:
        # Bound before plugins load: a port that is taken is reported before any other work.
        if sock is None:
            sock = listener.bind(g.host, g.port)
        # Everything imported so far (pglast's AST classes among it) lives as long as the
        # process: keep it out of the garbage collector's way so collections stay cheap.
        gc.freeze()
        trio.run(functools.partial(proxy.run, sock, on_listening))
    except listener.ListenError as exc:
        print(f"trio_pgdog: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except HookLoadError as exc:
        where = f" in {config.pgdog_path}" if config.pgdog_path else ""
        print(f"trio_pgdog: {exc}; not starting without it (fix the entry{where} or remove it)",
              file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        log.error("cannot serve: %s", exc)
        return EXIT_FAILED
    finally:
        if sock is not None:
            sock.close()
    return 0
