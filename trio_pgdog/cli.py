"""Command line: `python -m trio_pgdog [--config ...] [--users ...]` and `python -m trio_pgdog demo`."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys

import trio

from . import __version__
from .app import Proxy, startup_banner
from .config import ConfigError, load_config

log = logging.getLogger("trio_pgdog")

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trio_pgdog",
        description="PostgreSQL connection pooler, load balancer and sharding proxy on Trio. "
                    "Run `python -m trio_pgdog demo` to try it on a throw-away PostgreSQL.")
    p.add_argument("--version", action="version", version=f"trio_pgdog {__version__}")
    p.add_argument("--config", default="pgdog.toml", help="path to pgdog.toml (default: %(default)s)")
    p.add_argument("--users", default="users.toml", help="path to users.toml (default: %(default)s)")
    p.add_argument("--log-level", default=os.environ.get("PGDOG_LOG_LEVEL", "INFO"),
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="default: %(default)s")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="start a throw-away PostgreSQL and run the proxy on it")
    demo.add_argument("--port", type=int, default=6432, help="proxy port (default: %(default)s)")
    check = sub.add_parser("check-plugin", help="load a native plugin, show its events and answers to "
                                                "sample statements; non-zero exit if anything is wrong")
    check.add_argument("path", help="the plugin: a path to a .so, or NAME for libNAME.so on the library path")
    check.add_argument("--config", dest="plugin_config", metavar="FILE", default=None,
                       help="the value passed to the plugin's pgdog_configure (its `config`)")
    check.add_argument("--shards", type=int, default=2,
                       help="shards of the sample database (default: %(default)s)")
    check.add_argument("--bench", action="store_true",
                       help="also measure the CPU cost of each route_query call")
    return p


def setup_logging(level: str) -> None:
    logging.basicConfig(stream=sys.stderr, level=level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.log_level)
    log.info("%s (pid %d)", startup_banner(), os.getpid())
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(args.port)
    if args.command == "check-plugin":
        from .hooks.check import check_plugin

        return check_plugin(args.path, args.plugin_config, shards=args.shards, bench=args.bench)
    try:
        config = load_config(args.config, args.users)
    except ConfigError as exc:
        print(f"trio_pgdog: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return serve(config)


def serve(config) -> int:
    """Run the proxy until SIGINT/SIGTERM; the exit status for the process."""
    if not config.users:
        log.warning("no users configured (%s missing or empty): every login will be refused",
                    config.users_path or "users.toml")
    # Everything imported so far (pglast's AST classes among it) lives as long as the process:
    # keep it out of the garbage collector's way so collections stay cheap on the data path.
    gc.freeze()
    try:
        trio.run(Proxy(config).run)
    except OSError as exc:
        log.error("cannot serve: %s", exc)
        return 1
    return 0
