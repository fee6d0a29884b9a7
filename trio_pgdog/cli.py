"""Command line: `python -m trio_pgdog [--config ...] [--users ...]`, `demo`, `check-config`,
`check-plugin`."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from . import __version__, logs
from .app import startup_banner
from .config import ConfigError, load_config
from .serving import EXIT_CONFIG, serve

log = logging.getLogger("trio_pgdog")



def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be from 1 to 65535, got {port}")
    return port


def _shards(text: str) -> int:
    from .demo import MAX_SHARDS, MIN_SHARDS

    try:
        shards = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of shards: {text!r}") from None
    if not MIN_SHARDS <= shards <= MAX_SHARDS:
        raise argparse.ArgumentTypeError(f"must be from {MIN_SHARDS} to {MAX_SHARDS}, got {shards}")
    return shards


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trio_pgdog",
        description="PostgreSQL connection pooler, load balancer and sharding proxy on Trio. "
                    "Run `python -m trio_pgdog demo` to try it on a throw-away PostgreSQL.")
    p.add_argument("--version", action="version", version=f"trio_pgdog {__version__}")
    p.add_argument("--config", default="pgdog.toml", help="path to pgdog.toml (default: %(default)s)")
    p.add_argument("--users", default="users.toml", help="path to users.toml (default: %(default)s)")
    p.add_argument("--host", default=None,
                   help="address to listen on, instead of [general] host of pgdog.toml")
    p.add_argument("--port", type=_port, default=None,
                   help="port to listen on, instead of [general] port of pgdog.toml")
    p.add_argument("--log-level", default=None, metavar="LEVEL",
                   help="debug, info, warning, error or critical, in any case "
                        "(default: $PGDOG_LOG_LEVEL, else info)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="start a throw-away PostgreSQL and run the proxy on it")
    # SUPPRESS: `--port` before or after `demo` both work.
    demo.add_argument("--port", type=_port, default=argparse.SUPPRESS,
                      help="proxy port (default: 6432)")
    demo.add_argument("--host", default=argparse.SUPPRESS,
                      help="address the proxy listens on (default: 127.0.0.1)")
    demo.add_argument("--shards", type=_shards, default=None, metavar="N",
                      help="a sharded database instead: N throw-away primaries (2 to 8), one per "
                           "shard, with a table sharded on a key (no replicas)")
    check_config = sub.add_parser(
        "check-config", help="validate pgdog.toml and users.toml, load the hooks and plugins, log "
                             "in to every server as every user; non-zero exit on any problem")
    check_config.add_argument("--config", default=argparse.SUPPRESS,
                              help="path to pgdog.toml (default: pgdog.toml)")
    check_config.add_argument("--users", default=argparse.SUPPRESS,
                              help="path to users.toml (default: users.toml)")
    check = sub.add_parser("check-plugin", help="load a native plugin, show its events and answers to "
                                                "sample statements; non-zero exit if anything is wrong")
    check.add_argument("path", help='the plugin: a path (any name with "/" or "." in it), or NAME '
                                    "for libNAME.so on the library path")
    check.add_argument("--config", dest="plugin_config", metavar="FILE", default=None,
                       help="the value passed to the plugin's pgdog_configure (its `config`)")
    check.add_argument("--shards", type=int, default=2,
                       help="shards of the sample database (default: %(default)s)")
    check.add_argument("--bench", action="store_true",
                       help="also measure the CPU cost of each route_query call")
    return p


def _log_level(args: argparse.Namespace) -> str | None:
    """The level asked for by --log-level or PGDOG_LOG_LEVEL; None (said why) if unknown."""
    given, source = args.log_level, "--log-level"
    if given is None:
        given, source = os.environ.get("PGDOG_LOG_LEVEL") or "info", "PGDOG_LOG_LEVEL"
    level = logs.parse_level(given)
    if level is None:
        choices = ", ".join(name.lower() for name in logs.LEVELS)
        print(f"trio_pgdog: {source}: unknown log level {given!r} (use one of {choices})",
              file=sys.stderr)
    return level


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = _log_level(args)
    if level is None:
        return EXIT_CONFIG
    logs.setup(level)
    if args.command == "demo":
        from .demo import run_demo

        log.info("%s (pid %d)", startup_banner(), os.getpid())
        return run_demo(getattr(args, "port", None) or 6432, getattr(args, "host", None) or "127.0.0.1",
                        shards=args.shards)
    if args.command == "check-plugin":
        from .hooks.check import check_plugin

        log.info("%s (pid %d)", startup_banner(), os.getpid())
        return check_plugin(args.path, args.plugin_config, shards=args.shards, bench=args.bench)
    if args.command == "check-config":
        from .check_config import check_config

        return check_config(args.config, args.users)
    try:
        config = load_config(args.config, args.users)
    except ConfigError as exc:
        print(f"trio_pgdog: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    # Logged once the configuration is known, so that every line is in its log_format.
    logs.use_format(config.general.log_format)
    log.info("%s (pid %d)", startup_banner(), os.getpid())
    overrides = {key: value for key, value in (("host", args.host), ("port", args.port))
                 if value is not None}
    return serve(config, overrides=overrides)


