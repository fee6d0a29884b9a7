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
from .app import Proxy, with_general
from .config import Config
from .hooks.errors import HookLoadError
from .tls import TlsFileError
from .workers import Supervisor, WorkerSlot, check_port

log = logging.getLogger("trio_pgdog")

EXIT_FAILED = 1  # could not serve (e.g. the port is taken), or a check failed
EXIT_CONFIG = 2  # the configuration (files, hooks, options) cannot be used


def serve(config: Config, *, overrides: dict[str, object] | None = None,
          sock: socket.socket | None = None, on_listening: Callable[[], object] | None = None,
          worker: WorkerSlot | None = None) -> int:
    """Run the proxy until SIGINT/SIGTERM; the exit status for the process.

    `sock` is a socket from listener.bind (the demo binds before it starts its clusters);
    `on_listening` runs once clients can connect. With `workers` > 1 in [general] this
    process supervises that many workers instead (workers.py); `worker` is one of them."""
    if worker is None and sock is None and with_general(config, overrides or {}).general.workers > 1:
        return _supervise(config, overrides or {})
    try:
        proxy = Proxy(config, overrides, worker)
    except TlsFileError as exc:  # changed since the configuration's checks read it
        print(f"trio_pgdog: {config.pgdog_path or 'pgdog.toml'}: [general] {exc}", file=sys.stderr)
        return EXIT_CONFIG
    g = proxy.config.general
    if not config.users:
        log.warning("no users in %s: every login will be refused until users are added and "
                    "the configuration reloaded (SIGHUP)", config.users_path or "users.toml")
    try:
        # Bound before plugins load: a port that is taken is reported before any other work.
        if sock is None:
            sock = listener.bind(g.host, g.port, reuse_port=worker is not None)
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


def _supervise(config: Config, overrides: dict[str, object]) -> int:
    g = with_general(config, overrides).general
    try:
        check_port(g.host, g.port)  # reported once, before any worker starts
    except listener.ListenError as exc:
        print(f"trio_pgdog: {exc}", file=sys.stderr)
        return EXIT_FAILED
    gc.freeze()  # what is imported now is shared with the workers, copy-on-write
    return Supervisor(config, lambda current, slot: serve(current, overrides=overrides,
                                                          worker=slot)).run()
